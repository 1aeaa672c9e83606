package wire

import (
	"bufio"
	"bytes"
)

// The body rules: how a body framed by a length or by chunked coding is
// copied as it is, chunk extensions and trailers included, with its
// framing checked on the way (the express path's answers). A copy flushes
// the writer whenever it would otherwise wait for the reader, so that
// streams and server-sent events arrive as sent: block is called first
// (the caller's hook, e.g. to start watching its client). upOK is false
// when the body did not come whole or well framed, clientOK when writing
// it failed.

// CopyN copies n bytes from br to bw, flushing bw before it waits for
// more (see CopyChunked).
func CopyN(bw *bufio.Writer, br *bufio.Reader, n int64, block func()) (upOK, clientOK bool) {
	for left := n; left > 0; {
		if br.Buffered() == 0 {
			block()
			if bw.Flush() != nil {
				return true, false
			}
			if _, err := br.Peek(1); err != nil {
				return false, true
			}
		}
		b, _ := br.Peek(int(min(left, int64(br.Buffered()))))
		if _, err := bw.Write(b); err != nil {
			return true, false
		}
		_, _ = br.Discard(len(b))
		left -= int64(len(b))
	}
	return true, true
}

// CopyChunked copies a chunked body as it is, chunk extensions and
// trailers included, checking its framing.
func CopyChunked(bw *bufio.Writer, br *bufio.Reader, block func()) (upOK, clientOK bool) {
	trailers := false
	for {
		line, ok, cok := readLine(bw, br, block)
		if !ok || !cok {
			return ok, cok
		}
		var size int64
		if !trailers {
			if size, ok = chunkSize(line); !ok {
				return false, true
			}
		} else if len(line) > 0 {
			if _, _, ok := SplitField(line); !ok {
				// Not a trailer field as net/http reads one (a bad name,
				// a control character, a bare CR): never passed on.
				return false, true
			}
		}
		// Checked, the line goes on as it came, with its CRLF.
		if _, err := bw.Write(line[:len(line)+2]); err != nil {
			return true, false
		}
		_, _ = br.Discard(len(line) + 2)
		if trailers {
			if len(line) == 0 {
				return true, true
			}
			continue
		}
		if size == 0 {
			trailers = true
			continue
		}
		if ok, cok := CopyN(bw, br, size, block); !ok || !cok {
			return ok, cok
		}
		if br.Buffered() < 2 {
			block()
			if bw.Flush() != nil {
				return true, false
			}
		}
		if crlf, err := br.Peek(2); err != nil || crlf[0] != '\r' || crlf[1] != '\n' {
			return false, true
		}
		_, _ = br.Discard(2)
		if _, err := bw.WriteString("\r\n"); err != nil {
			return true, false
		}
	}
}

// readLine waits for a whole CRLF-terminated line (at most the reader's
// buffer) at the head of br and returns it without its CRLF, unread: the
// caller discards it with its CRLF. The slice is valid until br is read.
func readLine(bw *bufio.Writer, br *bufio.Reader, block func()) (line []byte, upOK, clientOK bool) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if i < 1 || buf[i-1] != '\r' {
				return nil, false, true
			}
			return buf[:i-1], true, true
		}
		if br.Buffered() >= br.Size() {
			return nil, false, true
		}
		block()
		if bw.Flush() != nil {
			return nil, true, false
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return nil, false, true
		}
	}
}

// chunkSize parses a chunk-size line (extensions allowed): hex digits
// only, as net/http reads them (strconv would take a sign, "+5").
func chunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(c)
	}
	return n, true
}
