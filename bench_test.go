package caddylb_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkServeHTTP measures the whole request path in one process:
// load_balancer and Caddy's reverse_proxy, each provisioned from JSON as
// Caddy would, proxying GET requests to the same loopback backend that
// answers a tiny body:
//
//	go test -run='^$' -bench=ServeHTTP -benchmem .
//
// The request is prepared once per sub-benchmark, so what is measured is
// the handler: selection, the upstream round trip and copying the answer.
func BenchmarkServeHTTP(b *testing.B) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	defer be.Close()
	dial := strings.TrimPrefix(be.URL, "http://")

	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		b.Fatal(err)
	}

	for _, bc := range []struct {
		name, id, config string
	}{
		{"load_balancer", "http.handlers.load_balancer",
			fmt.Sprintf(`{"apps":[{"instances":[{"url":%q}]}]}`, be.URL)},
		{"reverse_proxy", "http.handlers.reverse_proxy",
			fmt.Sprintf(`{"upstreams":[{"dial":%q}],"load_balancing":{"selection_policy":{"policy":"round_robin"}}}`, dial)},
	} {
		mod, err := ctx.LoadModuleByID(bc.id, json.RawMessage(bc.config))
		if err != nil {
			b.Fatal(err)
		}
		defer mod.(caddy.CleanerUpper).Cleanup()
		h := mod.(caddyhttp.MiddlewareHandler)
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
		req := caddyhttp.PrepareRequest(httptest.NewRequest(http.MethodGet, "http://example.com/path?q=1", nil),
			caddy.NewReplacer(), nil, &caddyhttp.Server{})
		w := &discardWriter{header: http.Header{}}

		b.Run(bc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				clear(w.header)
				w.status = 0
				if err := h.ServeHTTP(w, req, next); err != nil || w.status != 200 {
					b.Fatalf("status %d, error %v", w.status, err)
				}
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{header: http.Header{}}
				// A request of its own, with its own replacer and access
				// log fields, as Caddy gives each request.
				req := caddyhttp.PrepareRequest(httptest.NewRequest(http.MethodGet, "http://example.com/path?q=1", nil),
					caddy.NewReplacer(), nil, &caddyhttp.Server{})
				for pb.Next() {
					clear(w.header)
					w.status = 0
					if err := h.ServeHTTP(w, req, next); err != nil || w.status != 200 {
						b.Errorf("status %d, error %v", w.status, err)
						return
					}
				}
			})
		})
	}
}

// discardWriter is a ResponseWriter that keeps the status and drops the
// body, reusing its header map.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }
func (w *discardWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(b), nil
}
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
