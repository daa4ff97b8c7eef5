package caddylb_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// echo is what the echoing backend saw of a request.
type echo struct {
	Method string
	Host   string
	URI    string
	Header http.Header
	Body   string
}

func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(echo{r.Method, r.Host, r.RequestURI, r.Header, string(body)})
}

func TestProxiedRequest(t *testing.T) {
	tests := []struct {
		name      string
		trusted   bool   // the server trusts 127.0.0.1 as a proxy
		base      string // path of the instance URL
		userinfo  string // of the instance URL, "user:password"
		uri       string
		header    map[string]string
		wantURI   string
		wantHdr   map[string]string // "" means absent
		wantNoHdr []string
	}{
		{
			name:    "host kept, forwarded headers set",
			uri:     "/a/b?x=1&y=2",
			wantURI: "/a/b?x=1&y=2",
			wantHdr: map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  "shop.test",
			},
		},
		{
			name:   "untrusted client cannot spoof forwarded headers",
			uri:    "/",
			header: map[string]string{"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test"},
			wantHdr: map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  "shop.test",
			},
			wantURI: "/",
		},
		{
			name:    "trusted proxy's forwarded headers kept and extended",
			trusted: true,
			uri:     "/",
			header:  map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.test"},
			wantHdr: map[string]string{
				"X-Forwarded-For":   "203.0.113.7, 127.0.0.1",
				"X-Forwarded-Proto": "https",
				"X-Forwarded-Host":  "front.test",
			},
			wantURI: "/",
		},
		{
			name:    "instance base path joined, query kept as sent",
			base:    "/base/",
			uri:     "/dir/file?q=a%20b&q=c&raw=%zz",
			wantURI: "/base/dir/file?q=a%20b&q=c&raw=%zz",
		},
		{
			name:     "instance userinfo sent as basic auth",
			userinfo: "alice:s3cret",
			uri:      "/",
			wantURI:  "/",
			wantHdr:  map[string]string{"Authorization": "Basic YWxpY2U6czNjcmV0"},
		},
		{
			name:     "the client's own Authorization kept",
			userinfo: "alice:s3cret",
			uri:      "/",
			header:   map[string]string{"Authorization": "Bearer t0ken"},
			wantURI:  "/",
			wantHdr:  map[string]string{"Authorization": "Bearer t0ken"},
		},
		{
			name:      "hop-by-hop headers and those named in Connection stripped",
			uri:       "/",
			header:    map[string]string{"Connection": "X-Private, keep-alive", "X-Private": "secret", "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x", "X-Public": "yes"},
			wantHdr:   map[string]string{"X-Public": "yes"},
			wantNoHdr: []string{"X-Private", "Keep-Alive", "Proxy-Authorization"},
			wantURI:   "/",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, "echo")
			b.handle(echoHandler)
			s := newSite(t)
			if tt.trusted {
				s.global = `
	servers {
		trusted_proxies static 127.0.0.1/8
	}`
			}
			instance := b.URL
			if tt.userinfo != "" {
				instance = strings.Replace(b.URL, "http://", "http://"+tt.userinfo+"@", 1)
			}
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s%s
}`, instance, tt.base))

			req, _ := http.NewRequest(http.MethodGet, s.url(tt.uri), nil)
			req.Host = "shop.test"
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got echo
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got.Host != "shop.test" {
				t.Errorf("backend saw Host %q, want shop.test", got.Host)
			}
			if got.URI != tt.wantURI {
				t.Errorf("backend saw URI %q, want %q", got.URI, tt.wantURI)
			}
			for k, want := range tt.wantHdr {
				if v := strings.Join(got.Header.Values(k), ", "); v != want {
					t.Errorf("backend saw %s %q, want %q", k, v, want)
				}
			}
			for _, k := range tt.wantNoHdr {
				if v, ok := got.Header[http.CanonicalHeaderKey(k)]; ok {
					t.Errorf("backend saw %s %q, want it stripped", k, v)
				}
			}
		})
	}
}

func TestProxiedResponse(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s
}`, b.URL))

	t.Run("hop-by-hop response headers stripped", func(t *testing.T) {
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "1")
			w.Header().Set("X-End", "2")
			_, _ = io.WriteString(w, "ok")
		})
		resp := do(t, s, http.MethodGet, "/", nil)
		if resp.Header.Get("X-Hop") != "" || resp.Header.Get("X-End") != "2" {
			t.Fatalf("got headers %v", resp.Header)
		}
	})

	t.Run("trailers kept", func(t *testing.T) {
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Checksum")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
		})
		resp := do(t, s, http.MethodGet, "/", nil)
		if body, _ := io.ReadAll(resp.Body); string(body) != "body" {
			t.Fatalf("body %q", body)
		}
		if got := resp.Trailer.Get("X-Checksum"); got != "abc" {
			t.Fatalf("trailer X-Checksum = %q, want abc", got)
		}
	})

	t.Run("request trailers reach the backend", func(t *testing.T) {
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s", body, r.Trailer.Get("X-Sum"))
		})
		req, _ := http.NewRequest(http.MethodPost, s.url("/"), io.MultiReader(strings.NewReader("data")))
		req.Host = "x.test"
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Sum": {"42"}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if body, _ := io.ReadAll(resp.Body); string(body) != "data 42" {
			t.Fatalf("backend saw %q, want body and trailer %q", body, "data 42")
		}
	})

	t.Run("bodies streamed both ways", func(t *testing.T) {
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
		})
		const size = 8 << 20
		src := io.LimitReader(zeros{}, size)
		resp := do(t, s, http.MethodPost, "/", src)
		body, _ := io.ReadAll(resp.Body)
		want := sha256.Sum256(make([]byte, size))
		if string(body) != fmt.Sprintf("%d %s", size, hex.EncodeToString(want[:])) {
			t.Fatalf("backend saw %q", body)
		}
	})

	t.Run("event streams flushed at once", func(t *testing.T) {
		release := newGate()
		defer release.open()
		b.handle(inTwoParts(release, "Content-Type", "text/event-stream", "data: first\n\n", "data: second\n\n"))
		readFlushed(t, s, release, "data: first\n", "\ndata: second\n\n")
	})

	t.Run("unknown-length responses flushed at once", func(t *testing.T) {
		release := newGate()
		defer release.open()
		b.handle(inTwoParts(release, "", "", "chunk1\n", "chunk2\n"))
		readFlushed(t, s, release, "chunk1\n", "chunk2\n")
	})
}

// TestFlushInterval: with flush_interval, a response of known length that
// trickles in reaches the client as it comes: periodically (a positive
// interval) or after every read (-1), where the server would otherwise
// hold it in its buffer until the end.
func TestFlushInterval(t *testing.T) {
	for _, interval := range []string{"20ms", "-1"} {
		t.Run(interval, func(t *testing.T) {
			b := newBackend(t, "b")
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s {
		flush_interval %s
	}
}`, b.URL, interval))
			release := newGate()
			defer release.open()
			b.handle(inTwoParts(release, "Content-Length", "14", "part1\n", "part2-2\n"))
			resp := readFlushed(t, s, release, "part1\n", "part2-2\n")
			if resp.ContentLength != 14 {
				t.Errorf("Content-Length %d, want the backend's 14", resp.ContentLength)
			}
		})
	}
}

// inTwoParts is a backend handler that sends first (with the header
// name: value, if name is set), flushes, and sends rest once release
// opens.
func inTwoParts(release *gate, name, value, first, rest string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if name != "" {
			w.Header().Set(name, value)
		}
		_, _ = io.WriteString(w, first)
		w.(http.Flusher).Flush()
		_ = release.wait(r.Context())
		_, _ = io.WriteString(w, rest)
	}
}

// readFlushed GETs / from s (Host x.test), whose backend sends first,
// flushes, and sends the rest once release opens: it checks that first
// reaches the client while the rest is held back (so it was flushed, not
// buffered), then opens release and checks the rest.
func readFlushed(t *testing.T, s *site, release *gate, first, rest string) *http.Response {
	t.Helper()
	resp := do(t, s, http.MethodGet, "/", nil)
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != first {
		t.Fatalf("first line: %q %v, want %q", line, err, first)
	}
	release.open()
	if got, err := io.ReadAll(br); err != nil || string(got) != rest {
		t.Fatalf("the rest: %q %v, want %q", got, err, rest)
	}
	return resp
}

// do sends a request for path with Host x.test and returns the response;
// its body is closed when the test ends.
func do(t *testing.T, s *site, method, path string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, s.url(path), body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "x.test"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestErrorStatuses(t *testing.T) {
	tests := []struct {
		name     string
		app      func(t *testing.T) string // app options
		wantCode int
		wantMsg  string
	}{
		{
			name: "no healthy instance",
			app: func(t *testing.T) string {
				b := newBackend(t, "sick")
				b.health.Store(500)
				return "health_uri /health\ninstances " + b.URL
			},
			wantCode: 503,
			wantMsg:  `app "x.test": no healthy instances`,
		},
		{
			name:     "backend unreachable",
			app:      func(t *testing.T) string { return "instances " + closedURL() },
			wantCode: 502,
			wantMsg:  "connection refused",
		},
		{
			name: "no response headers within timeout",
			app: func(t *testing.T) string {
				b := newBackend(t, "slow")
				release := newGate()
				t.Cleanup(release.open)
				b.handle(func(w http.ResponseWriter, r *http.Request) { _ = release.wait(r.Context()) })
				return "timeout 100ms\ninstances " + b.URL
			},
			wantCode: 504,
			wantMsg:  "timeout awaiting response headers",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			%s
		}
	}
	handle_errors {
		respond "{err.status_code} {err.message}"
	}
}`, tt.app(t)))
			if tt.wantCode == 503 {
				waitFor(t, "instance unhealthy", func() bool {
					return !fetchReport(t).Apps[0].Instances[0].Healthy
				})
			}
			status, body := s.get("x.test", "/")
			if status != tt.wantCode || !strings.Contains(body, tt.wantMsg) {
				t.Fatalf("got %d %q, want %d with %q", status, body, tt.wantCode, tt.wantMsg)
			}
			if tt.wantCode != 503 {
				if f := fetchReport(t).Apps[0].Instances[0].Failures; f != 1 {
					t.Fatalf("instance failures = %d, want 1", f)
				}
			}
		})
	}
}

// TestClientGoneIsNotTheBackendsFault cancels a request while the backend
// works on it: the instance must not be charged with a failure, and the
// failure must be logged as 499.
func TestClientGoneIsNotTheBackendsFault(t *testing.T) {
	b := newBackend(t, "b")
	arrived := make(chan struct{})
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			instances %s
		}
	}
}`, b.URL))

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/"), nil)
	req.Host = "x.test"
	errc := make(chan error, 1)
	go func() {
		_, err := client.Do(req)
		errc <- err
	}()
	recv(t, arrived, "the request at the backend")
	cancel()
	if err := recv(t, errc, "the cancelled request to end"); err == nil {
		t.Fatal("request succeeded, want it cancelled")
	}
	waitFor(t, "request to end", func() bool {
		return fetchReport(t).Apps[0].Instances[0].ActiveConnections == 0
	})
	if f := fetchReport(t).Apps[0].Instances[0].Failures; f != 0 {
		t.Fatalf("instance charged with %d failures for a client that left", f)
	}
	waitFor(t, "a 499 in the log", func() bool {
		return len(logLines(t, s, func(l map[string]any) bool {
			return l["status"] == float64(499)
		})) > 0
	})
}
