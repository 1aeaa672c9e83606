package gateway

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/herdcluster/herd/gateway/internal/upstream"
	"github.com/herdcluster/herd/gateway/internal/wire"
)

// The express path proxies a request the front read (GET or HEAD, no
// body, a plain path) without building an outbound http.Request or
// reading the answer into an http.Response: the request head is written
// from the inbound header, and the answer's head and body are copied to
// the client as they come, with the hop-by-hop headers dropped and the
// gateway's own added. It is the first attempt of the usual exchange,
// with the same bookkeeping (in-flight counts, latency, outlier reports,
// answer counters).
//
// Whatever is not plain goes on through the general path, which then owns
// the attempt (see firstAttempt): an attempt that failed (to be retried),
// an answer 502/503/504 (to be retried), an answer not in within the
// hedge delay (to be hedged), and answers the express path does not frame
// itself (1xx, HTTP/1.0, no length, unusual headers or framing), which
// http.ReadResponse reads as for any other request.

// expressable reports whether the front's request r, routed by rt, may
// take the express path.
func (g *Gateway) expressable(r *http.Request, rt *route) bool {
	return !rt.cors && rt.rawPath == "" && r.Body == http.NoBody &&
		(r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		simplePath(rt.path) // the instance's path prefix too
}

// simplePath reports whether p is a path the express path may write as it
// is: no escaping needed, no query.
func simplePath(p string) bool {
	return simpleTarget(p) && strings.IndexByte(p, '?') < 0
}

// express proxies r as described above.
func (g *Gateway) express(fw *frontWriter, r *http.Request, rt *route) {
	t := g.rtrip
	t.inflight.Add(1)
	defer t.inflight.Add(-1)
	mark := rt.st.begin(rt.hostport, rt.start)
	w := g.expressWait(fw.fc, r, rt)
	pc, n, err := g.expressSend(&w, r, rt)
	var a expressAnswer
	if err == nil && n > 0 {
		head, _ := pc.R.Peek(n)
		a = parseAnswerHead(head, r.Method == http.MethodHead)
	}
	if err != nil || !a.ok {
		g.expressHandOver(fw, r, rt, pc, mark, w.hard, err)
		return
	}
	// The answer is plain: the express path serves it. (A client found
	// gone meanwhile still aborts pc, through fc.waitOn.)
	mark.end(true)
	g.report(rt, rt.hostport, false)
	rt.st.countAnswer(r.Method, a.status)
	g.expressAnswer(fw, pc, n, &a, rt, &w)
}

// expressWait is the wait for the answer to r's first attempt: the client
// watch after watchClientAfter, the hedge when it is due, and the header
// timeout (the service's own, or the gateway's).
func (g *Gateway) expressWait(fc *frontConn, r *http.Request, rt *route) expressWait {
	headerTimeout := g.cfg.ResponseHeaderTimeout
	if rt.headerTimeout > 0 {
		headerTimeout = rt.headerTimeout
	}
	hedge := g.rtrip.hedgeAfter(r, rt, nil)
	start := rt.start
	hard := start.Add(headerTimeout)
	soft := hard
	if hedge > 0 && hedge < headerTimeout {
		soft = start.Add(hedge)
	}
	return expressWait{fc: fc, watchAt: start.Add(watchClientAfter), soft: soft, hard: hard}
}

// expressSend writes r's head to a connection to the route's instance and
// waits for the answer's head in its buffer (n its length, 0 when the
// express path cannot read it), or for the hedge to be due (pc with n 0).
// A request that failed on a reused connection the upstream had closed is
// sent once more on a new one. err: the attempt failed, pc is nil.
func (g *Gateway) expressSend(w *expressWait, r *http.Request, rt *route) (pc *upstream.Conn, n int, err error) {
	fc := w.fc
	for try := 0; ; try++ {
		var reused bool
		pc, reused, err = g.client.Get(rt, rt.hostport, rt.inst.TLS)
		if err != nil {
			return nil, 0, err
		}
		fc.waitOn(pc)
		// The write has its own deadline, the header timeout's: the read's
		// (the client watch's or the hedge's, 50 ms in) may already be
		// past when the dial was slow, and must not fail the write.
		if err = pc.SetWriteDeadline(w.hard); err == nil {
			err = pc.SetReadDeadline(w.next())
		}
		if err == nil {
			writeExpressRequest(pc.W, r, rt)
			if err = pc.W.Flush(); err == nil {
				n, err = w.head(pc)
			}
		}
		if err == nil || w.hedgeDue(err, pc) {
			return pc, n, nil // answered, or the hedge is due
		}
		fc.waitOn(nil)
		_ = pc.Close()
		if fc.ctx.Err() != nil {
			return nil, 0, fc.ctx.Err()
		}
		if !reused || try > 0 || !upstream.ClosedByPeer(err) {
			return nil, 0, err
		}
		// The upstream had closed its idle end: once more, on a new one.
	}
}

// hedgeDue reports whether err, waiting on pc, is the hedge delay passing
// with nothing of the answer in (the header timeout not yet).
func (w *expressWait) hedgeDue(err error, pc *upstream.Conn) bool {
	return w.soft.Before(w.hard) && isTimeout(err) && pc.R.Buffered() == 0 && w.fc.ctx.Err() == nil &&
		time.Now().Before(w.hard)
}

// expressAnswer serves a plain answer, whose head (n bytes) is in pc's
// buffer: the rewritten head, then the body in its own framing; then pc
// goes back to its pool, or is closed.
func (g *Gateway) expressAnswer(fw *frontWriter, pc *upstream.Conn, n int, a *expressAnswer, rt *route, w *expressWait) {
	fc := fw.fc
	head, _ := pc.R.Peek(n)
	fw.raw = true
	writeAnswerHead(fc.bw, head, a, rt, fw.closeAfter)
	_, _ = pc.R.Discard(n)
	if a.cl > 0 && int64(pc.R.Buffered()) < a.cl || a.chunked {
		// The body streams: no deadline on it. (Unless the watch found
		// the client gone: its abort may have come just before.)
		if err := pc.SetDeadline(time.Time{}); err != nil || fc.ctx.Err() != nil {
			fc.watch.stop(fc)
			fc.waitOn(nil)
			_ = pc.Close()
			fw.failed = true
			return
		}
	}
	upOK, clientOK := copyAnswerBody(fc.bw, pc.R, a, w.watch)
	// No abort may reach pc once it is back in the pool.
	fc.watch.stop(fc)
	fc.waitOn(nil)
	if !clientOK || !upOK {
		// Cut short: the client must not take it for the whole answer.
		fw.failed = true
	}
	if !upOK || !a.keep || pc.R.Buffered() > 0 || fc.ctx.Err() != nil {
		_ = pc.Close()
		return
	}
	pc.Release(upstream.Stopped, true)
}

// expressHandOver gives the first attempt, in whatever state, to the
// general path and answers with what that comes to. err is the attempt's
// error (pc is then nil), or nil with the answer's head (or the hedge
// delay passed) on pc. mark counts the attempt in flight since the
// request came in.
func (g *Gateway) expressHandOver(fw *frontWriter, r *http.Request, rt *route, pc *upstream.Conn, mark attemptMark, hard time.Time, err error) {
	fw.fc.waitOn(nil)
	fw.fc.watch.arm(fw.fc, max(0, time.Until(rt.start.Add(watchClientAfter))))
	out := rt.outboundRequest(r)
	wait := func(ctx context.Context) (resp *http.Response, rerr error) {
		defer func() { mark.end(rerr == nil) }()
		if pc == nil {
			return nil, err
		}
		stop := upstream.Stopped
		if ctx.Done() != nil {
			stop = context.AfterFunc(ctx, func() { _ = pc.SetDeadline(aLongTimeAgo) })
		}
		if derr := pc.SetDeadline(hard); derr != nil {
			stop()
			_ = pc.Close()
			return nil, derr
		}
		resp, _, rerr = pc.AwaitResponse(ctx, out, true, stop)
		if rerr != nil {
			_ = pc.Close()
		}
		return resp, rerr
	}
	res, rerr := g.rtrip.roundTrip(out, rt, &firstAttempt{sent: rt.start, wait: wait})
	g.writeResponse(fw, out, res, rerr)
}

// writeExpressRequest writes the head of r as sent upstream: what
// outboundHeader and writeRequest make of it on the general path.
func writeExpressRequest(bw *bufio.Writer, r *http.Request, rt *route) {
	wire.WriteRequestLine(bw, r.Method, rt.path, r.URL.ForceQuery, r.URL.RawQuery, rt.hostport)
	in := r.Header
	conn := in["Connection"]
	for k, vv := range in {
		switch {
		case k == "Host" || k == "Content-Length" || !sentUpstream(k, conn):
			continue
		case k == "User-Agent":
			if len(vv) > 0 && vv[0] != "" {
				wire.WriteField(bw, k, vv[0])
			}
			continue
		}
		for _, v := range vv {
			wire.WriteField(bw, k, v)
		}
	}
	if wire.AnyHasToken(in["Te"], "trailers") {
		bw.WriteString("Te: trailers\r\n")
	}
	if prior, ip, ok := rt.forwardedFor(r); ok {
		bw.WriteString("X-Forwarded-For: ")
		for _, p := range prior {
			bw.WriteString(p)
			bw.WriteString(", ")
		}
		bw.WriteString(ip)
		bw.WriteString("\r\n")
	}
	wire.WriteField(bw, "X-Forwarded-Host", r.Host)
	bw.WriteString("X-Forwarded-Proto: ")
	bw.WriteString(rt.forwardedProto()[0])
	bw.WriteString("\r\n\r\n")
}

// expressWait is the express path's wait for an answer's head, with its
// deadlines: watchAt, when the client watch starts (see clientWatch); soft,
// when the hedge is due; hard, the response-header timeout.
type expressWait struct {
	fc             *frontConn
	watchAt        time.Time
	soft, hard     time.Time
	watching       bool
	hedgeCancelled bool // the answer has begun: no hedge
}

// next is the deadline to arm now.
func (w *expressWait) next() time.Time {
	d := w.hard
	if !w.hedgeCancelled && w.soft.Before(d) {
		d = w.soft
	}
	if !w.watching && w.watchAt.Before(d) {
		d = w.watchAt
	}
	return d
}

// watch starts the client watch, once.
func (w *expressWait) watch() {
	if !w.watching {
		w.watching = true
		w.fc.watch.arm(w.fc, 0)
	}
}

// head waits for the whole head of the answer in pc's buffer and returns
// its length, or 0 when it does not fit or has bare LF line ends
// (http.ReadResponse's to read). A timeout error with nothing read means
// the hedge is due (or the header timeout passed).
func (w *expressWait) head(pc *upstream.Conn) (int, error) {
	for {
		buf, _ := pc.R.Peek(pc.R.Buffered())
		n, more := wire.HeadLen(buf, pc.R.Buffered() >= pc.R.Size())
		if n > 0 || !more {
			return n, nil
		}
		_, err := pc.R.Peek(pc.R.Buffered() + 1)
		if err == nil {
			continue
		}
		if !isTimeout(err) || w.fc.ctx.Err() != nil {
			return 0, err
		}
		now := time.Now()
		if !w.watching && !now.Before(w.watchAt) {
			w.watch()
		}
		if pc.R.Buffered() > 0 {
			w.hedgeCancelled = true // answering
		}
		if !w.hedgeCancelled && !now.Before(w.soft) || !now.Before(w.hard) {
			return 0, err
		}
		if err := pc.SetReadDeadline(w.next()); err != nil {
			return 0, err
		}
		if err := w.fc.ctx.Err(); err != nil {
			// The watch found the client gone, and its abort of pc may
			// have come before the deadline just armed.
			return 0, err
		}
	}
}

// expressAnswer is what the express path needs to know of an answer.
type expressAnswer struct {
	ok      bool // plain: the express path serves it
	status  int
	cl      int64 // Content-Length; -1 none; 0 also when the answer has no body
	chunked bool
	keep    bool // the connection may carry another request
	hasDate bool
	// conn holds the values of the Connection header fields, whose
	// tokens name more fields to drop.
	conn [4]string
	nc   int
}

// parseAnswerHead reads an answer's head (ending in CRLF CRLF). It is
// plain when: HTTP/1.1, a final status other than 502, 503 and 504, well-
// formed fields, and a body framed by one Content-Length or by chunked
// alone, or no body (HEAD, 204, 304).
func parseAnswerHead(head []byte, isHead bool) (a expressAnswer) {
	a.cl = -1
	a.keep = true
	line, rest, ok := wire.CutLine(head)
	if !ok {
		return a
	}
	code := plainStatus(line)
	if code == 0 {
		return a
	}
	a.status = code
	te := false
	for {
		line, rest, ok = wire.CutLine(rest)
		if !ok {
			return a
		}
		if len(line) == 0 {
			break
		}
		if !a.field(line, &te) {
			return a
		}
	}
	a.ok = a.framed(te, isHead || code == http.StatusNoContent || code == http.StatusNotModified, isHead)
	return a
}

// plainStatus is the code of an HTTP/1.1 status line with a final code
// other than 502, 503 and 504, or 0.
func plainStatus(line []byte) int {
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return 0
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || retryableStatus(code) {
		return 0
	}
	return code
}

// field takes one field line of the answer's head into a, and te (a
// Transfer-Encoding: chunked seen); false: the answer is not plain.
func (a *expressAnswer) field(line []byte, te *bool) bool {
	kb, v, ok := wire.SplitField(line)
	if !ok {
		return false
	}
	k := string(kb) // on the stack: it does not escape
	switch {
	case len(k) < 4 || len(k) > 17:
		// None of the fields below: skip the comparisons.
	case wire.EqualFold(k, "Content-Length"):
		n, ok := contentLength(v)
		if a.cl >= 0 || !ok {
			return false
		}
		a.cl = n
	case wire.EqualFold(k, "Transfer-Encoding"):
		if *te || !wire.EqualFold(string(v), "chunked") {
			return false
		}
		*te = true
	case wire.EqualFold(k, "Connection"):
		if a.nc == len(a.conn) {
			return false
		}
		a.conn[a.nc] = string(v)
		a.nc++
		if wire.HasToken(a.conn[a.nc-1], "close") {
			a.keep = false
		}
	case wire.EqualFold(k, "Date"):
		a.hasDate = true
	case wire.EqualFold(k, "Location"), wire.EqualFold(k, "Content-Location"), wire.EqualFold(k, "Refresh"):
		return false // rewritten into the route: the general path's (modifyResponse)
	}
	return true
}

// contentLength parses a Content-Length value: decimal digits only, as
// net/http reads them (strconv would take a sign).
func contentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	n := int64(0)
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// framed settles how the answer's body is framed, from its fields: one
// Content-Length, or chunked alone, or no body at all (bodyless: HEAD,
// 204, 304); false for anything else (both, or neither: the end of the
// connection).
func (a *expressAnswer) framed(te, bodyless, isHead bool) bool {
	switch {
	case te && a.cl >= 0:
		return false // both: a smuggling attempt, or a broken upstream
	case bodyless:
		a.cl = 0
		a.chunked = false
		return !te || isHead // a 204 or 304 with a body: not plain
	case te:
		a.chunked = true
	case a.cl < 0:
		return false // delimited by the end of the connection
	}
	return true
}

// writeAnswerHead writes the answer's head as the client gets it: the
// status line, the upstream's fields but the hop-by-hop ones (those its
// Connection header names too) and the gateway's own, then the gateway's
// X-Request-Id and X-Herd-Upstream, and Date when the upstream sent none.
// Content-Length, Transfer-Encoding and Trailer stay: the body is copied
// in its own framing.
func writeAnswerHead(bw *bufio.Writer, head []byte, a *expressAnswer, rt *route, closeAfter bool) {
	bw.WriteString(statusLine(a.status))
	_, rest, _ := wire.CutLine(head)
	for {
		line, r, _ := wire.CutLine(rest)
		rest = r
		if len(line) == 0 {
			break
		}
		name := line[:bytes.IndexByte(line, ':')]
		if dropAnswerField(name, a) {
			continue
		}
		bw.Write(line)
		bw.WriteString("\r\n")
	}
	if !a.hasDate {
		bw.WriteString("Date: ")
		bw.Write(httpDate())
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Request-Id: ")
	bw.WriteString(rt.requestID[0])
	if rt.upstream[0] != "" {
		bw.WriteString("\r\nX-Herd-Upstream: ")
		bw.WriteString(rt.upstream[0])
	}
	if closeAfter {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
}

// dropAnswerField reports whether the answer field name stays behind.
func dropAnswerField(name []byte, a *expressAnswer) bool {
	k := string(name) // no allocation: the compiler sees the comparisons
	switch {
	case wire.IsHopByHopFold(k) && !wire.IsFraming(k), wire.EqualFold(k, "X-Request-Id"), wire.EqualFold(k, "X-Herd-Upstream"):
		return true
	}
	for _, v := range a.conn[:a.nc] {
		if wire.HasToken(v, k) {
			return true
		}
	}
	return false
}

// copyAnswerBody copies the body framed as a says from br to bw, flushing
// bw whenever it would otherwise wait for the upstream (so streams and
// server-sent events arrive as sent), and finally. upOK: the body came
// whole; clientOK: writing it did not fail.
func copyAnswerBody(bw *bufio.Writer, br *bufio.Reader, a *expressAnswer, block func()) (upOK, clientOK bool) {
	if a.chunked {
		return wire.CopyChunked(bw, br, block)
	}
	return wire.CopyN(bw, br, a.cl, block)
}
