package wire

import (
	"bufio"
	"net/http"
	"net/textproto"
	"strings"
)

// The writing rules: how a request line and a field go on the wire, and
// which requests may be sent twice.

// WriteRequestLine writes the request line and the Host field of a
// request to an upstream (path escaped as it goes on the wire).
func WriteRequestLine(bw *bufio.Writer, method, path string, forceQuery bool, rawQuery, host string) {
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(path)
	if forceQuery || rawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(rawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
}

// WriteField writes the field k: v, the value trimmed and any line break
// in it replaced by a space (as Request.Write does).
func WriteField(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(textproto.TrimString(v))
	bw.WriteString("\r\n")
}

// Idempotent reports whether req may be sent twice (RFC 9110 9.2.2): an
// idempotent method, or a request that carries an Idempotency-Key.
func Idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != ""
}
