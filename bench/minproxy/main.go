// Command minproxy is the proxy benchmark's floor for Go: the least a
// goroutine-per-connection HTTP/1.1 proxy built on Go's net package can do.
// It forwards each request head as it came, over a pool of keep-alive
// upstream connections to one backend, and copies the answer back; no
// routing, balancing, header rewriting, retries, limits or metrics. It
// serves only what bench/proxy.sh sends (GET without a body, answers with a
// Content-Length) and drops the connection on anything else. herd's
// gateway cannot be cheaper than this per request: the gap between the two
// is what herd's features cost, the gap between this and nginx is what
// Go's runtime and net package cost on the machine.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.64:8083", "address to listen on")
	target := flag.String("target", "", "backend host:port")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "minproxy: -target host:port is required")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("minproxy: %v", err)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ln.Close()
	}()
	p := &proxy{target: *target, idle: make(chan *upstream, 1024)}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Fatalf("minproxy: accept: %v", err)
		}
		go p.serve(c)
	}
}

type proxy struct {
	target string
	idle   chan *upstream
}

type upstream struct {
	c  net.Conn
	br *bufio.Reader
}

func (p *proxy) get() (*upstream, error) {
	select {
	case u := <-p.idle:
		return u, nil
	default:
	}
	c, err := net.Dial("tcp", p.target)
	if err != nil {
		return nil, err
	}
	return &upstream{c: c, br: bufio.NewReaderSize(c, 8<<10)}, nil
}

func (p *proxy) put(u *upstream) {
	select {
	case p.idle <- u:
	default:
		u.c.Close()
	}
}

// head reads a message head into buf and returns it with its
// Content-Length (-1 when it has none).
func head(br *bufio.Reader, buf []byte) ([]byte, int, error) {
	buf = buf[:0]
	cl := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, 0, err
		}
		buf = append(buf, line...)
		if len(line) <= 2 {
			return buf, cl, nil
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			cl = 0
			for _, c := range bytes.TrimSpace(v) {
				if c < '0' || c > '9' {
					return nil, 0, errors.New("bad Content-Length")
				}
				cl = cl*10 + int(c-'0')
			}
		}
	}
}

func (p *proxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 8<<10)
	bw := bufio.NewWriterSize(c, 8<<10)
	req := make([]byte, 0, 4<<10)
	res := make([]byte, 0, 4<<10)
	for {
		var err error
		var cl int
		if req, cl, err = head(br, req); err != nil || cl > 0 {
			return // closed, or a body: not what the benchmark sends
		}
		u, err := p.get()
		if err != nil {
			return
		}
		if _, err := u.c.Write(req); err != nil {
			u.c.Close()
			return
		}
		if res, cl, err = head(u.br, res); err != nil || cl < 0 {
			u.c.Close()
			return
		}
		bw.Write(res)
		if _, err := io.CopyN(bw, u.br, int64(cl)); err != nil {
			u.c.Close()
			return
		}
		p.put(u)
		if bw.Flush() != nil {
			return
		}
	}
}
