package gateway

import (
	"net/url"
	"strings"
	"testing"

	"github.com/herdcluster/herd/api"
)

// FuzzSplitPath checks that splitting a request path never loses or invents
// bytes: the service is a DNS label, "/" + service + rest is the decoded
// path, and the escaped rest decodes to the decoded rest.
func FuzzSplitPath(f *testing.F) {
	for _, seed := range []string{
		"/", "/hello", "/hello/", "/echo/a/b?x=1", "/echo/a%2Fb", "/%65cho/x",
		"/a%2Fb/c", "/Bad_Name/x", "/up/../x", "/svc/%2e%2e/x", "//x", "/x//y", "/echo/a%20b",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return
		}
		service, decRest, escRest, ok := splitPath(u)
		if !ok {
			return
		}
		if !api.ValidName(service) {
			t.Fatalf("%q: service %q is not a DNS label", raw, service)
		}
		if got := "/" + service + decRest; got != u.Path {
			t.Fatalf("%q: %q + %q does not rebuild the path %q", raw, service, decRest, u.Path)
		}
		if escRest != "" {
			dec, err := url.PathUnescape(escRest)
			if err != nil || dec != decRest {
				t.Fatalf("%q: escaped rest %q decodes to %q (%v), want %q", raw, escRest, dec, err, decRest)
			}
		}
		path, rawPath := upstreamPath("/p", decRest, escRest)
		if !strings.HasPrefix(path, "/p") || (rawPath != "" && !strings.HasPrefix(rawPath, "/p")) {
			t.Fatalf("%q: upstream path %q (raw %q) lost the prefix", raw, path, rawPath)
		}
	})
}
