package health_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/health"
)

// newServer starts a test server on 127.0.0.1 and closes it when the test
// ends.
func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// closeAtEnd closes ch when the test ends, before the servers started
// earlier are closed (httptest.Server.Close waits for their handlers). Call
// it after starting the servers whose handlers wait on ch.
func closeAtEnd(t *testing.T, ch chan struct{}) {
	t.Cleanup(func() { close(ch) })
}

// withUserinfo adds credentials to a test server's URL, to check they never
// reach an error.
func withUserinfo(rawURL string) string {
	return strings.Replace(rawURL, "http://", "http://probe:s3cr3t@", 1)
}

func statusHandler(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func bodyHandler(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }
}

// statuses returns a set of the given codes, and of every code from lo to
// hi for each pair in ranges.
func statuses(codes []int, ranges ...[2]int) backend.StatusSet {
	var s backend.StatusSet
	for _, c := range codes {
		s.Add(c)
	}
	for _, r := range ranges {
		for c := r[0]; c <= r[1]; c++ {
			s.Add(c)
		}
	}
	return s
}

// spec returns a Spec with a timeout never reached, after applying edit.
func spec(edit func(*health.Spec)) *health.Spec {
	s := &health.Spec{Timeout: time.Minute}
	if edit != nil {
		edit(s)
	}
	return s
}

// checkErr checks err against wantErr: "" for nil, else a part of the
// error. No error may reveal the target's password.
func checkErr(t *testing.T, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Errorf("Probe = %v, want nil", err)
	case wantErr != "" && err == nil:
		t.Errorf("Probe = nil, want an error with %q", wantErr)
	case wantErr != "" && !strings.Contains(err.Error(), wantErr):
		t.Errorf("Probe = %q, want an error with %q", err, wantErr)
	}
	if err != nil && strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Probe error %q reveals the URL's password", err)
	}
}

func TestProbe(t *testing.T) {
	const shortTimeout = 50 * time.Millisecond
	threeXX := statuses(nil, [2]int{300, 399})

	tests := []struct {
		name string
		// target returns the URL to probe, and a check to run after the
		// probe (nil if none).
		target  func(t *testing.T) (string, func(t *testing.T))
		spec    *health.Spec
		wantErr string // "" means success; else a part of the error
		errIs   error  // if not nil, the error must match it
	}{
		{name: "200", target: serve(statusHandler(http.StatusOK))},
		{name: "204", target: serve(statusHandler(http.StatusNoContent))},
		{name: "299", target: serve(statusHandler(299))},
		{name: "200 with a large body", target: serve(bodyHandler(make([]byte, 1<<20)))},
		{name: "500", target: serve(statusHandler(http.StatusInternalServerError)), wantErr: "status 500"},
		{name: "503", target: serve(statusHandler(http.StatusServiceUnavailable)), wantErr: "status 503"},
		{name: "404", target: serve(statusHandler(http.StatusNotFound)), wantErr: "status 404"},
		{name: "300", target: serve(statusHandler(http.StatusMultipleChoices)), wantErr: "status 300"},

		// Statuses of the Spec: codes, and classes (every code of them).
		{
			name:   "503 listed",
			target: serve(statusHandler(http.StatusServiceUnavailable)),
			spec:   spec(func(s *health.Spec) { s.Status = statuses([]int{200, 503}) }),
		},
		{
			name:    "200 not listed",
			target:  serve(statusHandler(http.StatusOK)),
			spec:    spec(func(s *health.Spec) { s.Status = statuses([]int{204}) }),
			wantErr: "status 200",
		},
		{
			name:   "4xx class listed",
			target: serve(statusHandler(http.StatusTeapot)),
			spec:   spec(func(s *health.Spec) { s.Status = statuses(nil, [2]int{400, 499}) }),
		},
		{
			name:    "2xx and 3xx classes listed, 500",
			target:  serve(statusHandler(http.StatusInternalServerError)),
			spec:    spec(func(s *health.Spec) { s.Status = statuses(nil, [2]int{200, 399}) }),
			wantErr: "status 500",
		},

		// Redirects are never followed.
		{name: "301 not followed", target: redirect(http.StatusMovedPermanently), wantErr: "status 301"},
		{name: "302 not followed", target: redirect(http.StatusFound), wantErr: "status 302"},
		{name: "307 not followed", target: redirect(http.StatusTemporaryRedirect), wantErr: "status 307"},
		{name: "308 not followed", target: redirect(http.StatusPermanentRedirect), wantErr: "status 308"},
		{
			name:   "302 listed: passes, not followed",
			target: redirect(http.StatusFound),
			spec:   spec(func(s *health.Spec) { s.Status = statuses([]int{302}) }),
		},
		{
			name:   "3xx class listed: 301 passes, not followed",
			target: redirect(http.StatusMovedPermanently),
			spec:   spec(func(s *health.Spec) { s.Status = threeXX }),
		},

		// Timeouts, and transport errors.
		{
			name:    "no answer within the timeout",
			target:  blockUntilTestEnd(false),
			spec:    spec(func(s *health.Spec) { s.Timeout = shortTimeout }),
			wantErr: "no answer within " + shortTimeout.String(),
		},
		{
			name:    "headers, then no body within the timeout",
			target:  blockUntilTestEnd(true),
			spec:    spec(func(s *health.Spec) { s.Timeout = shortTimeout }),
			wantErr: "reading the body: no answer within " + shortTimeout.String(),
		},
		{
			name:   "headers, then no body within the timeout, body matched",
			target: blockUntilTestEnd(true),
			spec: spec(func(s *health.Spec) {
				s.Timeout = shortTimeout
				s.Body = regexp.MustCompile("ok")
			}),
			wantErr: "reading the body: no answer within " + shortTimeout.String(),
		},
		{name: "connection refused", target: refused, wantErr: "refused", errIs: syscall.ECONNREFUSED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, after := tt.target(t)
			s := tt.spec
			if s == nil {
				s = spec(nil)
			}
			err := health.Probe(context.Background(), target, nil, s)
			checkErr(t, err, tt.wantErr)
			if tt.errIs != nil && !errors.Is(err, tt.errIs) {
				t.Errorf("Probe = %v, want an error matching %v", err, tt.errIs)
			}
			if after != nil {
				after(t)
			}
		})
	}
}

// TestProbeBody matches bodies against the Spec's regexp: only their first
// 64 KiB.
func TestProbeBody(t *testing.T) {
	const limit = 64 << 10
	filler := func(n int) []byte { return bytes.Repeat([]byte{'x'}, n) }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		status  int
		body    []byte
		re      string
		wantErr string
	}{
		{name: "match", body: []byte("OK\n"), re: "^OK"},
		{name: "mismatch", body: []byte("DOWN\n"), re: "^OK", wantErr: `body does not match "^OK"`},
		{name: "empty body", body: nil, re: `^$`},
		{name: "empty body, mismatch", body: nil, re: "OK", wantErr: `body does not match "OK"`},
		{name: "match anywhere in the first 64 KiB", body: join(filler(1000), []byte(`"status":"up"`), filler(1000)), re: `"status":\s*"up"`},
		{name: "match early in a large body", body: join([]byte("READY"), filler(1<<20)), re: "READY"},
		{name: "match ending at 64 KiB", body: join(filler(limit-5), []byte("READY"), filler(100)), re: "READY"},
		{name: "match across 64 KiB: not seen", body: join(filler(limit-3), []byte("READY")), re: "READY", wantErr: "body does not match"},
		{name: "match after 64 KiB: not seen", body: join(filler(limit), []byte("READY")), re: "READY", wantErr: "body does not match"},
		{name: "the end of the read is not the end of the body", body: join(filler(limit), []byte("y")), re: `x$`},
		{name: "a failing status is reported first", status: http.StatusServiceUnavailable, body: []byte("OK"), re: "OK", wantErr: "status 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
				if tt.status != 0 {
					w.WriteHeader(tt.status)
				}
				_, _ = w.Write(tt.body)
			})
			s := spec(func(s *health.Spec) { s.Body = regexp.MustCompile(tt.re) })
			err := health.Probe(context.Background(), withUserinfo(srv.URL)+"/health", nil, s)
			checkErr(t, err, tt.wantErr)
		})
	}
}

// TestProbeRequest checks what a probe sends: the Spec's method and
// headers, Host among them, to the target's path and query.
func TestProbeRequest(t *testing.T) {
	type seen struct {
		method, host, path, query string
		header                    http.Header
	}
	tests := []struct {
		name       string
		method     string
		headers    http.Header
		wantMethod string
		wantHost   string // "" for the target's
		wantHeader http.Header
	}{
		{name: "GET by default", wantMethod: http.MethodGet},
		{name: "HEAD", method: http.MethodHead, wantMethod: http.MethodHead},
		{name: "POST", method: http.MethodPost, wantMethod: http.MethodPost},
		{
			name:       "headers",
			headers:    http.Header{"X-Probe": {"lb"}, "Accept": {"application/json"}, "X-Multi": {"1", "2"}},
			wantMethod: http.MethodGet,
			wantHeader: http.Header{"X-Probe": {"lb"}, "Accept": {"application/json"}, "X-Multi": {"1", "2"}},
		},
		{
			name:       "header names not canonical",
			headers:    http.Header{"x-probe": {"lb"}},
			wantMethod: http.MethodGet,
			wantHeader: http.Header{"X-Probe": {"lb"}},
		},
		{
			name:       "Host",
			headers:    http.Header{"Host": {"health.example"}, "X-Probe": {"lb"}},
			wantMethod: http.MethodGet,
			wantHost:   "health.example",
			wantHeader: http.Header{"X-Probe": {"lb"}},
		},
		{
			name:       "host, not canonical",
			method:     http.MethodHead,
			headers:    http.Header{"host": {"health.example:8443"}},
			wantMethod: http.MethodHead,
			wantHost:   "health.example:8443",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan seen, 1)
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				got <- seen{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Clone()}
			})
			s := spec(func(s *health.Spec) {
				s.Method = tt.method
				s.Headers = tt.headers
			})
			if err := health.Probe(context.Background(), srv.URL+"/healthz?deep=1", nil, s); err != nil {
				t.Fatalf("Probe = %v", err)
			}
			r := <-got
			wantHost := tt.wantHost
			if wantHost == "" {
				wantHost = strings.TrimPrefix(srv.URL, "http://")
			}
			if r.method != tt.wantMethod || r.host != wantHost || r.path != "/healthz" || r.query != "deep=1" {
				t.Errorf("server saw %s %s%s?%s, want %s %s/healthz?deep=1", r.method, r.host, r.path, r.query, tt.wantMethod, wantHost)
			}
			for name, want := range tt.wantHeader {
				if g := r.header.Values(name); !slices.Equal(g, want) {
					t.Errorf("header %s = %q, want %q", name, g, want)
				}
			}
			if h := r.header.Values("Host"); len(h) != 0 {
				t.Errorf("a Host header field reached the server as %q", h)
			}
		})
	}
}

// serve probes a server answering with h.
func serve(h http.HandlerFunc) func(t *testing.T) (string, func(t *testing.T)) {
	return func(t *testing.T) (string, func(t *testing.T)) {
		return withUserinfo(newServer(t, h).URL) + "/health", nil
	}
}

// redirect probes a server redirecting with code to another server, and
// checks that the other server received nothing.
func redirect(code int) func(t *testing.T) (string, func(t *testing.T)) {
	return func(t *testing.T) (string, func(t *testing.T)) {
		var followed atomic.Int64
		other := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
			followed.Add(1)
			w.WriteHeader(http.StatusOK)
		})
		srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/elsewhere", code)
		})
		return withUserinfo(srv.URL) + "/health", func(t *testing.T) {
			if n := followed.Load(); n != 0 {
				t.Errorf("the redirect target received %d requests, want 0", n)
			}
		}
	}
}

// blockUntilTestEnd probes a server that does not answer while the test
// runs, or (headers) sends the headers of a 200 and then none of its body.
func blockUntilTestEnd(headers bool) func(t *testing.T) (string, func(t *testing.T)) {
	return func(t *testing.T) (string, func(t *testing.T)) {
		end := make(chan struct{})
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
			if headers {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
			}
			<-end
		})
		closeAtEnd(t, end)
		return withUserinfo(srv.URL) + "/health", nil
	}
}

// refused probes an address of 127.0.0.1 nothing listens on: one the test
// opened and closed.
func refused(t *testing.T) (string, func(t *testing.T)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://probe:s3cr3t@" + addr + "/health", nil
}

func TestProbeContextCancelled(t *testing.T) {
	var hits atomic.Int64
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := health.Probe(ctx, srv.URL, nil, spec(nil))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Probe with a cancelled context = %v, want context.Canceled", err)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the server received %d requests, want 0", n)
	}
}
