package caddylb_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
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
	be := newRawBackend(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
	dial := strings.TrimPrefix(be, "http://")

	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		b.Fatal(err)
	}

	for _, bc := range []struct {
		name, id, config string
	}{
		{"load_balancer", "http.handlers.load_balancer",
			fmt.Sprintf(`{"apps":[{"instances":[{"url":%q}]}]}`, be)},
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

// newRawBackend starts a loopback backend that answers every request on
// a keep-alive connection with resp, without allocating per request (it
// takes a request to end at its blank line: bodyless requests only), so
// that a benchmark counts the proxy's allocations, not the backend's. It
// returns the backend's URL.
func newRawBackend(tb testing.TB, resp string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close() // idle keep-alive connections end with the backend
		}
		mu.Unlock()
		wg.Wait()
	})
	out := []byte(resp)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				n := 0
				for {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					for {
						end := bytes.Index(buf[:n], []byte("\r\n\r\n"))
						if end < 0 {
							break
						}
						if _, err := c.Write(out); err != nil {
							return
						}
						n = copy(buf, buf[end+4:n])
					}
					if n == len(buf) {
						return // a head too large for a benchmark
					}
				}
			})
		}
	})
	return "http://" + ln.Addr().String()
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

// BenchmarkServeHTTPGRPC is BenchmarkServeHTTP for a unary gRPC call: a
// POST of one length-prefixed message over HTTP/2 semantics (as Caddy's
// server hands it to a handler), to a grpc-go backend over h2c, through
// load_balancer with an h2c:// instance and reverse_proxy with its h2c
// transport:
//
//	go test -run='^$' -bench=ServeHTTPGRPC -benchmem .
func BenchmarkServeHTTPGRPC(b *testing.B) {
	be := newGRPCBackend(b, "grpc", nil)
	dial := be.ln.Addr().String()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		b.Fatal(err)
	}
	// An empty SimpleRequest: a message of length 0.
	frame := []byte{0, 0, 0, 0, 0}
	for _, bc := range []struct {
		name, id, config string
	}{
		{"load_balancer", "http.handlers.load_balancer",
			fmt.Sprintf(`{"apps":[{"instances":[{"url":%q}]}]}`, be.url("h2c"))},
		{"reverse_proxy", "http.handlers.reverse_proxy",
			fmt.Sprintf(`{"upstreams":[{"dial":%q}],"transport":{"protocol":"http","versions":["h2c"]}}`, dial)},
	} {
		mod, err := ctx.LoadModuleByID(bc.id, json.RawMessage(bc.config))
		if err != nil {
			b.Fatal(err)
		}
		defer mod.(caddy.CleanerUpper).Cleanup()
		h := mod.(caddyhttp.MiddlewareHandler)
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			w := &discardWriter{header: http.Header{}}
			body := bytes.NewReader(frame)
			req := httptest.NewRequest(http.MethodPost, "http://example.com/grpc.testing.TestService/UnaryCall", body)
			req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/2.0", 2, 0
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			req.ContentLength = -1
			req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), nil, &caddyhttp.Server{})
			for b.Loop() {
				clear(w.header)
				w.status = 0
				body.Reset(frame)
				req.Body = io.NopCloser(body)
				if err := h.ServeHTTP(w, req, next); err != nil || w.status != 200 {
					b.Fatalf("status %d, error %v", w.status, err)
				}
			}
		})
	}
}
