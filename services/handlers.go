package services

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/herdcluster/herd/api"
)

// maxEchoBody is the largest body echo reads; larger bodies get 413.
const maxEchoBody = 1 << 20

// HelloResponse is the body of hello's GET /.
type HelloResponse struct {
	Message string `json:"message"`
	Node    string `json:"node"`
}

// EchoResponse is what echo answers to any request.
type EchoResponse struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   map[string][]string `json:"query"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	Node    string              `json:"node"`
}

// helloHandler answers GET / under its prefix.
func helloHandler(node, prefix string) http.Handler {
	body, _ := json.Marshal(HelloResponse{Message: "Hello, World!", Node: node})
	body = append(body, '\n')
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, prefix)
		if rest != "" && rest != "/" {
			writeError(w, http.StatusNotFound, "hello serves only /")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "hello answers GET only")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// echoHandler answers any method and path with what it received.
func echoHandler(node string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEchoBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeError(w, http.StatusRequestEntityTooLarge, "echo reads bodies up to 1 MiB")
				return
			}
			writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(EchoResponse{
			Method:  r.Method,
			Path:    r.URL.EscapedPath(),
			Query:   r.URL.Query(),
			Headers: r.Header,
			Body:    string(b),
			Node:    node,
		})
	})
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Error: msg})
}
