package health_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golb/caddy-lb/health"
)

// newClient returns a probe client on a transport of the test's own.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return health.NewClient(tr)
}

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

func TestProbe(t *testing.T) {
	const shortTimeout = 50 * time.Millisecond

	tests := []struct {
		name string
		// target returns the URL to probe, and a check to run after the
		// probe (nil if none).
		target  func(t *testing.T) (string, func(t *testing.T))
		timeout time.Duration
		wantErr string // "" means success; else a part of the error
		errIs   error  // if not nil, the error must match it
	}{
		{name: "200", target: serve(statusHandler(http.StatusOK))},
		{name: "204", target: serve(statusHandler(http.StatusNoContent))},
		{name: "200 with a large body", target: serve(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write(make([]byte, 1<<20))
		})},
		{name: "500", target: serve(statusHandler(http.StatusInternalServerError)), wantErr: "status 500"},
		{name: "503", target: serve(statusHandler(http.StatusServiceUnavailable)), wantErr: "status 503"},
		{name: "404", target: serve(statusHandler(http.StatusNotFound)), wantErr: "status 404"},
		{name: "300", target: serve(statusHandler(http.StatusMultipleChoices)), wantErr: "status 300"},
		{name: "301 not followed", target: redirect(http.StatusMovedPermanently), wantErr: "status 301"},
		{name: "302 not followed", target: redirect(http.StatusFound), wantErr: "status 302"},
		{name: "307 not followed", target: redirect(http.StatusTemporaryRedirect), wantErr: "status 307"},
		{
			name:    "no answer within the timeout",
			target:  blockUntilTestEnd,
			timeout: shortTimeout,
			wantErr: "no answer within " + shortTimeout.String(),
		},
		{name: "connection refused", target: refused, wantErr: "refused", errIs: syscall.ECONNREFUSED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, after := tt.target(t)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = time.Minute // a bound, never reached
			}
			err := health.Probe(context.Background(), newClient(t), target, timeout)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Probe = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("Probe = nil, want an error with %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("Probe = %q, want an error with %q", err, tt.wantErr)
			}
			if tt.errIs != nil && !errors.Is(err, tt.errIs) {
				t.Errorf("Probe = %v, want an error matching %v", err, tt.errIs)
			}
			if err != nil && strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("Probe error %q reveals the URL's password", err)
			}
			if after != nil {
				after(t)
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

// blockUntilTestEnd probes a server that never answers while the test runs.
func blockUntilTestEnd(t *testing.T) (string, func(t *testing.T)) {
	end := make(chan struct{})
	srv := newServer(t, func(http.ResponseWriter, *http.Request) { <-end })
	closeAtEnd(t, end)
	return withUserinfo(srv.URL) + "/health", nil
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
	err := health.Probe(ctx, newClient(t), srv.URL, time.Minute)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Probe with a cancelled context = %v, want context.Canceled", err)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the server received %d requests, want 0", n)
	}
}

func TestProbeSendsGET(t *testing.T) {
	type seen struct{ method, path, query string }
	got := make(chan seen, 1)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Method, r.URL.Path, r.URL.RawQuery}
	})
	if err := health.Probe(context.Background(), newClient(t), srv.URL+"/healthz?deep=1", time.Minute); err != nil {
		t.Fatalf("Probe = %v", err)
	}
	want := seen{http.MethodGet, "/healthz", "deep=1"}
	if s := <-got; s != want {
		t.Errorf("server saw %+v, want %+v", s, want)
	}
}
