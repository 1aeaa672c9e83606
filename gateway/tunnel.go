package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// tunnel joins the client to the instance that switched protocols for it
// (a WebSocket upgrade, the only kind serve lets through): it checks that
// the instance switched to the protocol asked for, answers the client 101
// with the instance's fields and the gateway's own, and copies bytes both
// ways until either side ends or the request's context does (Shutdown
// included). res.Body is the instance's connection.
func (g *Gateway) tunnel(w http.ResponseWriter, out *http.Request, res *http.Response) {
	back, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		g.proxyError(w, out, errors.New("gateway: a 101 answer without its connection"))
		return
	}
	asked, got := upgradeType(out.Header), upgradeType(res.Header)
	if !wire.EqualFold(asked, got) {
		back.Close()
		g.proxyError(w, out, fmt.Errorf("the instance switched to protocol %q when %q was asked for", got, asked))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		back.Close()
		g.proxyError(w, out, fmt.Errorf("switching protocols: %w", err))
		return
	}
	defer conn.Close()
	defer back.Close()
	stop := context.AfterFunc(out.Context(), func() { back.Close(); conn.Close() })
	defer stop()
	res.Body = nil // Write writes the head only
	if err := res.Write(brw); err != nil || brw.Flush() != nil {
		return
	}
	errc := make(chan error, 2)
	go func() {
		// What the client sent past its request head goes first.
		if n := brw.Reader.Buffered(); n > 0 {
			b, _ := brw.Reader.Peek(n)
			if _, err := back.Write(b); err != nil {
				errc <- err
				return
			}
		}
		errc <- copyThenCloseWrite(back, conn)
	}()
	go func() { errc <- copyThenCloseWrite(conn, back) }()
	// Both directions, as long as each ended cleanly: a failed one ends
	// the other too (the deferred closes).
	if err := <-errc; err == nil {
		<-errc
	}
}

// copyThenCloseWrite copies src to dst until src ends, then half-closes
// dst (the other direction may still carry data). An error, or a dst that
// cannot be half-closed, ends the tunnel.
func copyThenCloseWrite(dst io.Writer, src io.Reader) error {
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	cw, ok := dst.(interface{ CloseWrite() error })
	if !ok {
		return errors.New("cannot half-close")
	}
	return cw.CloseWrite()
}

// upgradeType is the protocol an Upgrade field names ("" for none).
func upgradeType(h http.Header) string {
	if !wire.AnyHasToken(h["Connection"], "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
