// Command stockproxy is the baseline of bench/proxy.sh: Go's stock
// httputil.ReverseProxy in front of one target, with http.DefaultTransport
// (MaxIdleConnsPerHost 2), no BufferPool and no tuning at all. It exists to
// show what herd's gateway gains over the obvious few lines of Go.
//
//	stockproxy -listen 127.0.0.63:8082 -target http://127.0.0.61:9000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.63:8082", "address to listen on")
	target := flag.String("target", "", "upstream base URL, e.g. http://127.0.0.61:9000")
	flag.Parse()

	u, err := url.Parse(*target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		fmt.Fprintf(os.Stderr, "stockproxy: -target must be an absolute URL like http://127.0.0.61:9000, got %q\n", *target)
		os.Exit(2)
	}

	// Transport left nil: http.DefaultTransport, as a stock proxy has it.
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.SetXForwarded()
		},
	}
	srv := &http.Server{
		Addr:              *listen,
		Handler:           proxy,
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()

	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("stockproxy: %v", err)
	}
}
