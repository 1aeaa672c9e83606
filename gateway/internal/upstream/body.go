package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// bodyWriter writes a request's body to its upstream connection in a
// goroutine of its own, while the caller reads the answer: an upstream may
// answer (413, 401, a redirect) before it has read the whole body, and that
// answer is the client's, not a broken pipe. The header timeout runs from
// the body's end, as http.Transport's does: an upload may take as long as
// the client takes to send it (the gateway bounds each read of it), and
// each write of it to the upstream has the header timeout to go through.
//
// A connection is reused only when its body was written whole by the time
// its answer ended (Conn.Release). When reading the client's body fails (it
// broke off, stalled or is over the limit), the exchange is aborted and
// that failure, not the connection's, is what the request fails with: it
// is no fault of the instance.
type bodyWriter struct {
	pc      *Conn
	body    io.Reader // the request's
	ctx     context.Context
	timeout time.Duration // the header timeout, armed once the body is out
	done    chan struct{} // closed when the write ended; err is set then
	err     error
	readErr bool        // err came from reading the client's body
	aborted atomic.Bool // abortBody: a read error now is the Client's doing
}

// startBody starts writing req's body (its head is in pc's buffer).
func startBody(pc *Conn, req *http.Request, timeout time.Duration) *bodyWriter {
	w := &bodyWriter{pc: pc, body: req.Body, ctx: req.Context(), timeout: timeout, done: make(chan struct{})}
	pc.mu.Lock()
	pc.headOK = false
	pc.mu.Unlock()
	go w.run(req)
	return w
}

func (w *bodyWriter) run(req *http.Request) {
	src := &bodyReader{r: req.Body}
	err := w.write(req, src)
	_ = req.Body.Close()
	w.err, w.readErr = err, src.err != nil
	if err == nil {
		// Before done is closed: from then on the connection may be back
		// in its pool, carrying the next request, whose deadlines are not
		// this one's.
		w.armHeaderTimeout()
		close(w.done)
		return
	}
	// The write failed: the connection carries no other request (Release).
	// done first, so that whoever the abort below wakes finds the failure.
	close(w.done)
	switch {
	case w.readErr && !w.aborted.Load():
		_ = w.pc.SetDeadline(Past) // abort the wait for an answer
	case isTimeout(err):
		w.upstreamStuck()
	}
}

// upstreamStuck ends the wait for an answer that has not begun when the
// upstream stopped reading the body for a whole header timeout. (Any
// other write error is the upstream closing or resetting the connection,
// which its reader sees itself, after an early answer if one came.)
func (w *bodyWriter) upstreamStuck() {
	pc := w.pc
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.headOK {
		_ = pc.SetReadDeadline(Past)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// armHeaderTimeout bounds the wait for the answer's head, unless it is in
// already.
func (w *bodyWriter) armHeaderTimeout() {
	if w.timeout <= 0 {
		return
	}
	pc := w.pc
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.headOK {
		return
	}
	_ = pc.SetReadDeadline(time.Now().Add(w.timeout))
	if w.ctx.Err() != nil {
		// The client went away meanwhile: its abort must stand.
		_ = pc.SetDeadline(Past)
	}
}

// headIn records that the answer's head is in, and clears the deadline
// when the answer's body streams (clear).
func (pc *Conn) headIn(clear bool) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.headOK = true
	if !clear && pc.writer == nil {
		return nil
	}
	return pc.SetDeadline(time.Time{})
}

// wait waits for the write to end, failing a read of the client's body in
// progress first: the exchange has failed with the request's context done,
// and whether the body failed before is the difference between the
// client's fault (400, 408, 413) and the client leaving.
func (w *bodyWriter) wait() {
	w.abortBody()
	<-w.done
}

// abortBody fails a read of the client's body in progress (the exchange
// is over, whatever the writer is waiting for).
func (w *bodyWriter) abortBody() {
	w.aborted.Store(true)
	if a, ok := w.body.(interface{ AbortRead() }); ok {
		a.AbortRead()
	}
}

// readFailure is the client body's failure that ended the write, if the
// write has ended so.
func (w *bodyWriter) readFailure() error {
	select {
	case <-w.done:
		if w.readErr && !w.aborted.Load() {
			return w.err
		}
	default:
	}
	return nil
}

// finished reports whether the whole body was written.
func (w *bodyWriter) finished() bool {
	select {
	case <-w.done:
		return w.err == nil
	default:
		return false
	}
}

// finishedWithin reports whether the whole body was written, waiting up to
// d for the writer to say so: an answer read to its end usually means the
// upstream read the body first, and the writer is only a moment from done
// (one that is still waiting on its client is not waited for long).
func (w *bodyWriter) finishedWithin(d time.Duration) bool {
	if w.finished() {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.done:
		return w.err == nil
	case <-t.C:
		return false
	}
}

// writerGrace is how long a connection whose answer ended waits for its
// request's body writer to finish before it is closed instead of reused.
const writerGrace = 20 * time.Millisecond

// bodyReader records the client body's read failure (not its end).
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// write writes req's body from src in the framing writeFraming announced,
// then flushes. Every write to the upstream has the header timeout to go
// through (progress): an upstream that stops reading the body is as stuck
// as one that does not answer.
func (w *bodyWriter) write(req *http.Request, src *bodyReader) error {
	bw := w.pc.W
	out := progressWriter{w: bw, bw: w}
	if req.GetBody == nil {
		// A body still to come from the client: the head goes first, so
		// that the upstream may answer it (401, 413) before any of it.
		// (One in memory goes in the same writes as its head.)
		if err := w.flush(); err != nil {
			return err
		}
	}
	buf := Buffers.Get()
	defer Buffers.Put(buf)
	if req.ContentLength > 0 {
		n, err := io.CopyBuffer(out, io.LimitReader(src, req.ContentLength), buf)
		if err == nil && n < req.ContentLength {
			// The client sent less than it said.
			src.err = io.ErrUnexpectedEOF
			err = src.err
		}
		if err != nil {
			return err
		}
		return w.flush()
	}
	cw := httputil.NewChunkedWriter(out)
	if _, err := io.CopyBuffer(writerOnly{cw}, src, buf); err != nil {
		return err
	}
	if err := cw.Close(); err != nil { // the last chunk, "0\r\n"
		return err
	}
	for _, k := range trailerKeys(req.Trailer) {
		for _, v := range req.Trailer[k] {
			wire.WriteField(bw, k, v)
		}
	}
	bw.WriteString("\r\n")
	return w.flush()
}

// progress gives the next write to the upstream the header timeout;
// false when the request's context is done (its abort must stand).
func (w *bodyWriter) progress() bool {
	if w.timeout > 0 {
		_ = w.pc.SetWriteDeadline(time.Now().Add(w.timeout))
	}
	return w.ctx.Err() == nil
}

func (w *bodyWriter) flush() error {
	if !w.progress() {
		return w.ctx.Err()
	}
	return w.pc.W.Flush()
}

// progressWriter is the body's way to the upstream: each write with its
// deadline (see bodyWriter.write). It hides bufio's ReadFrom, so that
// copies use the pooled buffer.
type progressWriter struct {
	w  io.Writer
	bw *bodyWriter
}

func (p progressWriter) Write(b []byte) (int, error) {
	if !p.bw.progress() {
		return 0, p.bw.ctx.Err()
	}
	return p.w.Write(b)
}

// writerOnly hides a writer's ReadFrom, so that copies use the pooled
// buffer.
type writerOnly struct{ io.Writer }

// Buffers are the gateway's copy buffers, for bodies both ways.
var Buffers = NewBufferPool()

// copyBufferSize is the size of the copy buffers.
const copyBufferSize = 32 << 10

// BufferPool recycles copy buffers (io.Copy allocates 32 KiB per copy).
type BufferPool struct{ p sync.Pool }

// The pool holds array pointers, not slices: converting a slice back to an
// array pointer in Put costs nothing, where boxing a slice would allocate.
func NewBufferPool() *BufferPool {
	return &BufferPool{p: sync.Pool{New: func() any { return new([copyBufferSize]byte) }}}
}

// Get returns a 32 KiB buffer.
func (bp *BufferPool) Get() []byte { return bp.p.Get().(*[copyBufferSize]byte)[:] }

// Put recycles b. Buffers of another size are dropped.
func (bp *BufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	bp.p.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
}

// writeFraming writes the fields that frame req's body: its length, or
// chunked (with the trailers it announces) when the length is unknown, or
// Content-Length: 0 for a method that usually has a body, as
// Request.Write does.
func writeFraming(bw *bufio.Writer, req *http.Request) {
	switch {
	case !HasBody(req):
		switch req.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			bw.WriteString("Content-Length: 0\r\n")
		}
	case req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(req.ContentLength, 10))
		bw.WriteString("\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if keys := trailerKeys(req.Trailer); len(keys) > 0 {
			wire.WriteField(bw, "Trailer", strings.Join(keys, ", "))
		}
	}
}

// trailerKeys are the names of the trailers t announces, sorted.
func trailerKeys(t http.Header) []string {
	if len(t) == 0 {
		return nil
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
