package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/herdcluster/herd/api"
)

// Reasons the gateway puts in api.Error.Reason. Clients, the chaos suite and
// the benchmarks branch on these, never on the message.
const (
	// ReasonNoService: the path names no service ("/"), or a name that is
	// not a DNS label (404).
	ReasonNoService = "no_service"
	// ReasonUnknownService: the service has no registered instance (404).
	ReasonUnknownService = "unknown_service"
	// ReasonNoLiveInstance: every instance is on a dead or departed node
	// (503).
	ReasonNoLiveInstance = "no_live_instance"
	// ReasonInvalidPath: the path after the service contains a ".."
	// segment, which could climb out of the instance's path prefix (400).
	ReasonInvalidPath = "invalid_path"
	// ReasonUpstreamError: the chosen instance could not be reached or
	// broke the exchange before sending response headers (502).
	ReasonUpstreamError = "upstream_error"
	// ReasonUpstreamTimeout: connecting to the chosen instance, or waiting
	// for its response headers, timed out (504).
	ReasonUpstreamTimeout = "upstream_timeout"
	// ReasonBadRequest: the request body could not be read (400).
	ReasonBadRequest = "bad_request"
	// ReasonBodyTooLarge: the request body is over the gateway's limit
	// (413).
	ReasonBodyTooLarge = "body_too_large"
	// ReasonRateLimited: the client sent more than the rate limit (429).
	ReasonRateLimited = "rate_limited"
	// ReasonOverloaded: every usable instance already has its maximum of
	// requests in flight through this gateway (503).
	ReasonOverloaded = "overloaded"
	// ReasonMethodNotAllowed: TRACE, to a service that did not opt in
	// (405).
	ReasonMethodNotAllowed = "method_not_allowed"
	// ReasonClientTimeout: the request body stopped arriving for longer
	// than ClientBodyTimeout (408).
	ReasonClientTimeout = "client_timeout"
	// ReasonTooManyConns: the connection is over MaxConns or MaxConnsPerIP
	// (503, then the connection is closed).
	ReasonTooManyConns = "too_many_connections"
)

// rejectReasons are the reasons of the answers the gateway gives itself,
// without asking any instance; Rejected counts them by reason.
var rejectReasons = [...]string{ReasonNoService, ReasonUnknownService, ReasonNoLiveInstance,
	ReasonInvalidPath, ReasonBadRequest, ReasonBodyTooLarge, ReasonRateLimited, ReasonOverloaded, ReasonMethodNotAllowed, ReasonTooManyConns, ReasonClientTimeout}

func rejectIndex(reason string) int {
	for i, r := range rejectReasons {
		if r == reason {
			return i
		}
	}
	return -1
}

// statusClientClosedRequest is the status recorded when the client went away
// before the upstream answered (nginx's 499). Nobody receives it.
const statusClientClosedRequest = 499

// writeError answers the request with an api.Error JSON body.
func writeError(w http.ResponseWriter, status int, reason, msg string) {
	body, err := json.Marshal(api.Error{Error: msg, Reason: reason, RequestID: w.Header().Get("X-Request-Id")})
	if err != nil {
		// api.Error holds two strings; Marshal cannot fail on it.
		body = []byte(`{"error":"internal error"}`)
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may be gone; nothing to do about it
}
