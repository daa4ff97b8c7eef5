package caddylb_test

// Regression tests of the proxy path's edge cases, each found by sending
// raw requests to a running Caddy: upgrades, 1xx responses, broken
// request bodies, responses cut short, secrets in instance URLs, and the
// Via and Server headers. Each writes the bytes that show the case.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// rawConn dials the site and returns the connection and a reader of it;
// both are closed when the test ends.
func rawConn(t *testing.T, s *site) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Every read and write of these tests is short: a deadline turns a
	// hang into a failure rather than the go test timeout.
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// rawRoundTrip writes raw to a new connection to the site and reads one
// response (the first: a 1xx is returned as it is).
func rawRoundTrip(t *testing.T, s *site, raw string) (*http.Response, string) {
	t.Helper()
	c, br := rawConn(t, s)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", raw, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// rawBackend listens on 127.0.0.1 and serves each connection with serve,
// which gets the request's headers already read; it returns the base URL.
func rawBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader, r *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				serve(c, br, r)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestUpgradeIsASuccess: a backend that switches protocols (101) serves
// the session; it must be recorded as a 101 and a success, not a 502 that
// passive checks hold against it.
func TestUpgradeIsASuccess(t *testing.T) {
	b := newBackend(t, "echo")
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			instances %s
			unhealthy_status 5xx
			max_fails 2
		}
	}
}`, b.URL))

	for i := range 2 {
		c, br := rawConn(t, s)
		fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("session %d: status %d, want 101", i, resp.StatusCode)
		}
		fmt.Fprintf(c, "ping %d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("echo: ping %d\n", i) {
			t.Fatalf("session %d: read %q, %v", i, line, err)
		}
		c.Close()
	}
	waitFor(t, "the sessions to end", func() bool {
		return fetchReport(t).Apps[0].Instances[0].ActiveConnections == 0
	})
	in := fetchReport(t).Apps[0].Instances[0]
	if in.State != "healthy" || in.Failures != 0 || in.ConsecutiveFailures != 0 || in.TotalRequests != 2 {
		t.Fatalf("after two upgrade sessions the report says %+v; want healthy, 2 requests, no failures", in)
	}
	samples := scrape(t)
	if got := value(t, samples, "caddy_load_balancer_requests_total", "instance", b.URL, "code_class", "1xx"); got != 2 {
		t.Errorf("requests_total{code_class=1xx} = %v, want 2", got)
	}
	if got := value(t, samples, "caddy_load_balancer_requests_total", "instance", b.URL, "code_class", "5xx"); got != 0 {
		t.Errorf("requests_total{code_class=5xx} = %v, want 0", got)
	}
}

// TestStickyCookieOnlyOnTheFinalResponse: an instance sends 103 Early
// Hints and then fails; the request is retried on the next instance. The
// sticky cookie must not ride on the 1xx, and the final response must
// carry the cookie of the instance that answered it.
func TestStickyCookieOnlyOnTheFinalResponse(t *testing.T) {
	hinting := rawBackend(t, func(c net.Conn, _ *bufio.Reader, _ *http.Request) {
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
	})
	good := newBackend(t, "good")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			strategy first
			sticky_cookie lb
			instances %s %s
		}
	}
}`, hinting, good.URL))

	c, br := rawConn(t, s)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
	hint, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if hint.StatusCode != http.StatusEarlyHints {
		t.Fatalf("first response %d, want the backend's 103", hint.StatusCode)
	}
	if sc := hint.Header.Values("Set-Cookie"); len(sc) != 0 {
		t.Errorf("the 103 carries Set-Cookie %q; the sticky cookie belongs in the final response", sc)
	}
	final, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no final response after the 103 (the connection was dropped?): %v", err)
	}
	body, _ := io.ReadAll(final.Body)
	if final.StatusCode != http.StatusOK || string(body) != "good" {
		t.Fatalf("final response %d %q, want 200 from the instance the request was retried on", final.StatusCode, body)
	}
	cookies := final.Cookies()
	if len(cookies) != 1 || cookies[0].Name != "lb" {
		t.Fatalf("final response sets cookies %v, want exactly one lb cookie", final.Header.Values("Set-Cookie"))
	}
	// The cookie pins to the instance that answered: with it, strategy
	// first no longer goes to the first instance.
	for range 3 {
		req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
		req.Host = "x.test"
		req.AddCookie(&http.Cookie{Name: "lb", Value: cookies[0].Value})
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "good" {
			t.Fatalf("with the cookie: %d %q, want 200 from the pinned instance", resp.StatusCode, b)
		}
	}
}

// TestClientBodyErrorsAreTheClients: a request whose body the client
// breaks gets a 4xx (or 499 when the client left), is not retried, and
// charges no instance with a failure, however often it is sent.
func TestClientBodyErrorsAreTheClients(t *testing.T) {
	tests := []struct {
		name     string
		site     string // handlers before load_balancer
		raw      string // the request
		hangUp   bool   // the client closes the connection after sending raw
		wantCode int    // 0: no response (the client left); see wantLog
		wantLog  int    // the status in the access log
	}{
		{
			name:     "malformed chunk",
			raw:      "PUT /up HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndata\r\nzz\r\n",
			wantCode: http.StatusBadRequest,
			wantLog:  http.StatusBadRequest,
		},
		{
			name:     "malformed chunk, POST",
			raw:      "POST /up HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			wantCode: http.StatusBadRequest,
			wantLog:  http.StatusBadRequest,
		},
		{
			name: "body over request_body's max_size",
			site: "request_body {\n\t\tmax_size 10\n\t}",
			// Chunked: with a Content-Length over the limit, request_body
			// refuses the request before load_balancer sees it.
			raw: "PUT /up HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" +
				strings.Repeat("x", 64) + "\r\n0\r\n\r\n",
			wantCode: http.StatusRequestEntityTooLarge,
			wantLog:  http.StatusRequestEntityTooLarge,
		},
		{
			name:     "switch to an invalid protocol",
			raw:      "GET /ws HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\nUpgrade: w\xe9\r\n\r\n",
			wantCode: http.StatusBadRequest,
			wantLog:  http.StatusBadRequest,
		},
		{
			name:    "client leaves mid-body",
			raw:     "PUT /up HTTP/1.1\r\nHost: x.test\r\nContent-Length: 100\r\n\r\n0123456789",
			hangUp:  true,
			wantLog: 499, // nginx's "client closed request"
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Two instances, so that a retry would show.
			b, b2 := newBackend(t, "b"), newBackend(t, "b2")
			for _, b := range []*backend{b, b2} {
				b.handle(func(w http.ResponseWriter, r *http.Request) {
					// Read the whole body first, as a backend taking an
					// upload does: the answer cannot overtake the broken
					// body.
					n, err := io.Copy(io.Discard, r.Body)
					if err != nil {
						return
					}
					fmt.Fprintf(w, "got %d bytes", n)
				})
			}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	log {
		output file %s
		format json
	}
	%s
	load_balancer {
		app x.test {
			strategy first
			instances %s %s
		}
	}
}`, s.logFile, tt.site, b.URL, b2.URL))

			const sent = 6 // more than max_fails (5)
			for i := range sent {
				c, br := rawConn(t, s)
				io.WriteString(c, tt.raw)
				if tt.hangUp {
					// Wait until the request reached the backend, so that
					// the client leaves in the middle of the body.
					waitFor(t, "the request at the backend", func() bool { return b.requests.Load() == int64(i+1) })
					c.Close()
					continue
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				resp.Body.Close()
				if resp.StatusCode != tt.wantCode {
					t.Fatalf("request %d: status %d, want %d", i, resp.StatusCode, tt.wantCode)
				}
			}
			waitFor(t, "the requests to end", func() bool {
				return fetchReport(t).Apps[0].Instances[0].ActiveConnections == 0
			})
			for _, in := range fetchReport(t).Apps[0].Instances {
				if in.Failures != 0 || in.ConsecutiveFailures != 0 || in.State != "healthy" {
					t.Fatalf("an instance was charged for the client's broken bodies: %+v", in)
				}
			}
			if got := b2.requests.Load(); got != 0 {
				t.Fatalf("the second instance got %d requests: a broken body was retried", got)
			}
			if status, body := s.get("x.test", "/"); status != http.StatusOK || body != "got 0 bytes" {
				t.Fatalf("a good request then got %d %q, want 200", status, body)
			}
			waitFor(t, fmt.Sprintf("%d access log lines with status %d", sent, tt.wantLog), func() bool {
				return len(logLines(t, s, func(l map[string]any) bool {
					return l["logger"] == "http.log.access.log0" && l["status"] == float64(tt.wantLog)
				})) == sent
			})
		})
	}
}

// TestResponseCutShortIsAFailure: a backend that resets the connection in
// the middle of a response body failed the request, though its status
// was fine; a client that leaves in the middle of a response did not.
func TestResponseCutShortIsAFailure(t *testing.T) {
	// The cutting backend sends more than Caddy buffers, so that the
	// client gets the headers, and resets the connection once it has.
	const sentBytes = 64 << 10
	gotHeaders := newGate()
	t.Cleanup(gotHeaders.open)
	cut := rawBackend(t, func(c net.Conn, _ *bufio.Reader, r *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 2*sentBytes)
		_, _ = c.Write(make([]byte, sentBytes))
		_ = gotHeaders.wait(r.Context())
		_ = c.(*net.TCPConn).SetLinger(0) // a reset, not a clean close
	})
	release := newGate()
	t.Cleanup(release.open)
	slow := newBackend(t, "slow")
	slow.handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(2*sentBytes))
		_, _ = w.Write(make([]byte, sentBytes))
		w.(http.Flusher).Flush()
		_ = release.wait(r.Context())
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app cut.test {
			instances %s
		}
		app slow.test {
			instances %s
		}
	}
}`, cut, slow.URL))

	c, br := rawConn(t, s)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: cut.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %v, %v; want the backend's 200", resp, err)
	}
	gotHeaders.open()
	if n, err := io.Copy(io.Discard, resp.Body); err == nil || n >= 2*sentBytes {
		t.Fatalf("read %d bytes and %v; want the body cut short", n, err)
	}
	waitFor(t, "the request to end", func() bool {
		return instanceOf(t, fetchReport(t), "cut.test", cut).ActiveConnections == 0
	})
	in := instanceOf(t, fetchReport(t), "cut.test", cut)
	if in.Failures != 1 || in.ConsecutiveFailures != 1 {
		t.Fatalf("a response the backend cut short was not counted as its failure: %+v", in)
	}
	if got := value(t, scrape(t), "caddy_load_balancer_requests_total", "instance", cut, "code_class", "5xx"); got != 1 {
		t.Errorf("requests_total{code_class=5xx} = %v, want 1", got)
	}

	// The client leaves after the headers: not the instance's failure.
	c, br = rawConn(t, s)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: slow.test\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("slow: %v %v", resp, err)
	}
	c.Close()
	waitFor(t, "the request to end", func() bool {
		return instanceOf(t, fetchReport(t), "slow.test", slow.URL).ActiveConnections == 0
	})
	if in := instanceOf(t, fetchReport(t), "slow.test", slow.URL); in.Failures != 0 || in.ConsecutiveFailures != 0 {
		t.Fatalf("a client that left mid-response charged the instance: %+v", in)
	}
}

// TestInstanceQueryRedacted: the values of an instance URL's query (a
// token, say) never show in the report, the metrics or the log; the keys
// do, and the backend still gets them.
func TestInstanceQueryRedacted(t *testing.T) {
	b := newBackend(t, "b")
	b.handle(echoHandler)
	b.health.Store(http.StatusServiceUnavailable)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			instances %s/?token=s3cret&region=eu
			health_uri /health
		}
	}
}`, b.URL))
	want := b.URL + "/?token=xxxxx&region=xxxxx"
	waitFor(t, "the instance unhealthy", func() bool { return !fetchReport(t).Apps[0].Instances[0].Healthy })
	if got := fetchReport(t).Apps[0].Instances[0].URL; got != want {
		t.Errorf("report names the instance %q, want %q", got, want)
	}
	if len(find(scrape(t), "caddy_load_balancer_instance_healthy", "instance", want)) != 1 {
		t.Errorf("metrics have no series for instance %q", want)
	}
	waitFor(t, "the state change logged", func() bool {
		return len(logLines(t, s, func(l map[string]any) bool { return l["msg"] == "instance unhealthy" })) > 0
	})
	data, _ := os.ReadFile(s.logFile)
	logged := string(data)
	if strings.Contains(logged, "s3cret") {
		t.Errorf("the log shows the token")
	}
	if !strings.Contains(logged, want) {
		t.Errorf("the log never names the instance as %q", want)
	}
	rep, _ := adminGet("/api/v1/loadBalancers/report")
	raw, _ := io.ReadAll(rep.Body)
	rep.Body.Close()
	samples, _ := adminGet("/metrics")
	rawMetrics, _ := io.ReadAll(samples.Body)
	samples.Body.Close()
	for what, text := range map[string]string{"report": string(raw), "metrics": string(rawMetrics)} {
		if strings.Contains(text, "s3cret") {
			t.Errorf("the %s shows the token", what)
		}
	}
}

// TestViaAndServerHeaders: the load balancer adds Via both ways, as a
// proxy should (RFC 9110, 7.6.3), and the client sees one Server header:
// the backend's, if it sent one.
func TestViaAndServerHeaders(t *testing.T) {
	b := newBackend(t, "b")
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/named" {
			w.Header().Set("Server", "backend/1.0")
		}
		w.Header().Set("X-Via-Seen", strings.Join(r.Header.Values("Via"), ", "))
		io.WriteString(w, "ok")
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s
}`, b.URL))

	tests := []struct {
		raw        string
		wantServer []string
		wantVia    string // at the client
		wantSeen   string // at the backend
	}{
		{"GET /named HTTP/1.1\r\nHost: x.test\r\n\r\n", []string{"backend/1.0"}, "1.1 Caddy", "1.1 Caddy"},
		{"GET /anon HTTP/1.1\r\nHost: x.test\r\n\r\n", nil, "1.1 Caddy", "1.1 Caddy"},
		{"GET /named HTTP/1.0\r\nHost: x.test\r\nVia: 1.1 edge\r\n\r\n", []string{"backend/1.0"}, "1.1 Caddy", "1.1 edge, 1.0 Caddy"},
	}
	for _, tt := range tests {
		resp, _ := rawRoundTrip(t, s, tt.raw)
		if got := resp.Header.Values("Server"); strings.Join(got, "|") != strings.Join(tt.wantServer, "|") {
			t.Errorf("%q: client got Server %q, want %q", tt.raw, got, tt.wantServer)
		}
		if got := strings.Join(resp.Header.Values("Via"), ", "); got != tt.wantVia {
			t.Errorf("%q: client got Via %q, want %q", tt.raw, got, tt.wantVia)
		}
		if got := resp.Header.Get("X-Via-Seen"); got != tt.wantSeen {
			t.Errorf("%q: backend got Via %q, want %q", tt.raw, got, tt.wantSeen)
		}
	}
}
