package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/herdcluster/herd/gateway/internal/wire"
)

// frontWriter is the http.ResponseWriter (and Flusher) of a request served
// by the front. It frames the answer as net/http would for an HTTP/1.1
// client: the handler's Content-Length when it set one; otherwise, when the
// handler finishes within bufferBeforeChunking bytes without flushing, the
// length of what it wrote; otherwise chunked, with the trailers the handler
// announced (Trailer) or set late (http.TrailerPrefix). Unlike net/http it
// never sniffs a Content-Type: a proxy passes on what the upstream said.
// One frontWriter serves every request of its connection in turn.
type frontWriter struct {
	fc  *frontConn
	hdr http.Header

	head        bool // a HEAD request: the body is not sent
	status      int
	wroteHeader bool // the status is fixed
	committed   bool // the head is in the write buffer
	bodyless    bool // HEAD, 204 or 304
	chunked     bool
	cl          int64 // Content-Length of the answer, -1 while unknown
	written     int64 // body bytes the handler wrote
	held        []byte
	closeAfter  bool // Connection: close, and close once answered
	failed      bool // writing to the client failed, or the answer is cut short
	// raw: the express path wrote the whole answer to the connection's
	// buffer itself.
	raw bool
}

var (
	_ http.ResponseWriter = (*frontWriter)(nil)
	_ http.Flusher        = (*frontWriter)(nil)
)

// errClientWrite is returned by Write once a write to the client failed.
var errClientWrite = errors.New("gateway: writing to the client failed")

func (w *frontWriter) reset(req *http.Request) {
	clear(w.hdr)
	w.head = req.Method == http.MethodHead
	w.status = 0
	w.wroteHeader, w.committed, w.bodyless, w.chunked, w.failed, w.raw = false, false, false, false, false, false
	w.cl, w.written = -1, 0
	w.held = w.held[:0]
	w.closeAfter = req.Close || w.fc.f.closing.Load()
}

func (w *frontWriter) Header() http.Header { return w.hdr }

func (w *frontWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 {
		// Interim answers are not passed on (the upstream client
		// drops them too, unless a ClientTrace asks for them).
		return
	}
	w.wroteHeader = true
	w.status = code
	w.bodyless = w.head || code == http.StatusNoContent || code == http.StatusNotModified
	if v, ok := w.hdr["Content-Length"]; ok {
		n, err := strconv.ParseInt(firstOf(v), 10, 64)
		if len(v) == 1 && err == nil && n >= 0 {
			w.cl = n
		} else {
			delete(w.hdr, "Content-Length")
		}
	}
}

func firstOf(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (w *frontWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return 0, errClientWrite
	}
	if w.bodyless {
		if w.head {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.committed {
		if w.cl < 0 && len(w.held)+len(p) <= bufferBeforeChunking {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		if err := w.commit(false); err != nil {
			return 0, err
		}
	}
	if err := w.body(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends what was written so far; an answer of unknown length is
// chunked from then on.
func (w *frontWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.failed {
		return
	}
	if !w.committed && w.commit(false) != nil {
		return
	}
	if err := w.fc.bw.Flush(); err != nil {
		w.failed = true
	}
}

// commit writes the status line and header. final: the handler is done,
// so the body held back is all of it.
func (w *frontWriter) commit(final bool) error {
	w.committed = true
	h := w.hdr
	_, trailers := h["Trailer"]
	switch {
	case w.bodyless:
	case trailers:
		w.chunked = true
		delete(h, "Content-Length")
		w.cl = -1
	case w.cl >= 0:
	case final:
		w.cl = int64(len(w.held))
	default:
		w.chunked = true
	}
	bw := w.fc.bw
	bw.WriteString(statusLine(w.status))
	for k, vv := range h {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive":
			continue
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !wire.ValidFieldName(k) {
			continue
		}
		for _, v := range vv {
			wire.WriteField(bw, k, v)
		}
	}
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(httpDate())
		bw.WriteString("\r\n")
	}
	switch {
	case w.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case w.cl >= 0 && !(w.bodyless && !w.head):
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.cl, 10))
		bw.WriteString("\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if len(w.held) > 0 {
		held := w.held
		w.held = w.held[:0]
		return w.body(held)
	}
	return nil
}

// body writes p in the answer's framing.
func (w *frontWriter) body(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	bw := w.fc.bw
	if w.chunked {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	bw.Write(p)
	if w.chunked {
		bw.WriteString("\r\n")
	}
	if _, err := bw.WriteString(""); err != nil {
		w.failed = true
		return errClientWrite
	}
	return nil
}

// finish completes the answer once the handler has returned and reports
// whether the connection may carry another request.
func (w *frontWriter) finish() bool {
	if w.raw {
		return !w.failed && w.fc.bw.Flush() == nil
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.failed && !w.committed {
		_ = w.commit(true)
	}
	if w.failed {
		return false
	}
	bw := w.fc.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	if w.cl >= 0 && !w.bodyless && w.written < w.cl {
		// Shorter than announced: only a closed connection tells the
		// client the answer is incomplete.
		w.closeAfter = true
	}
	return bw.Flush() == nil
}

// writeTrailers writes the announced trailers the handler set, and those it
// set with http.TrailerPrefix.
func (w *frontWriter) writeTrailers() {
	h := w.hdr
	for _, list := range h["Trailer"] {
		for k := range strings.SplitSeq(list, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if !wire.ValidFieldName(k) {
				continue
			}
			for _, v := range h[k] {
				wire.WriteField(w.fc.bw, k, v)
			}
		}
	}
	for k, vv := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && wire.ValidFieldName(name) {
			for _, v := range vv {
				wire.WriteField(w.fc.bw, name, v)
			}
		}
	}
}

// statusLines holds "HTTP/1.1 <code> <text>\r\n" for every code.
var statusLines = func() (t [1000]string) {
	for c := 100; c < 1000; c++ {
		t[c] = fmt.Sprintf("HTTP/1.1 %03d %s\r\n", c, http.StatusText(c))
	}
	return t
}()

func statusLine(code int) string { return statusLines[code] }

// dateCache holds the Date header value of the current second.
var dateCache atomic.Pointer[cachedDate]

type cachedDate struct {
	sec int64
	b   []byte
}

func httpDate() []byte {
	now := time.Now()
	if d := dateCache.Load(); d != nil && d.sec == now.Unix() {
		return d.b
	}
	d := &cachedDate{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
	dateCache.Store(d)
	return d.b
}
