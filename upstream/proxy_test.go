package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// TestTLS: https backends on the fast path, with SNI from the URL's host,
// HTTP/1.1 even when the backend offers HTTP/2, and keep-alive.
func TestTLS(t *testing.T) {
	var mu sync.Mutex
	var snis []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.TLS.NegotiatedProtocol)
	}))
	srv.EnableHTTP2 = true
	opened := 0
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			opened++
			mu.Unlock()
		}
	}
	srv.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		snis = append(snis, hello.ServerName)
		mu.Unlock()
		return nil, nil
	}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the bad certificate case
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(addr)

	tr := newTransport(t)
	tr.TLSClientConfig = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	// example.com is in httptest's certificate; dial the test server for it.
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	for range 3 {
		resp, body := do(t, tr, mustReq(t, "GET", "https://example.com:"+port+"/", nil))
		if !strings.HasPrefix(body, "HTTP/1.1 ") || strings.Contains(body, "h2") {
			t.Errorf("backend saw %q", body)
		}
		if resp.TLS == nil || resp.TLS.ServerName != "example.com" {
			t.Errorf("resp.TLS %+v", resp.TLS)
		}
	}
	mu.Lock()
	if opened != 1 || len(snis) != 1 || snis[0] != "example.com" {
		t.Errorf("%d connections, SNI %q; want 1 connection, SNI example.com", opened, snis)
	}
	mu.Unlock()

	t.Run("bad certificate", func(t *testing.T) {
		tr := newTransport(t)
		tr.TLSClientConfig = &tls.Config{}
		_, err := tr.RoundTrip(mustReq(t, "GET", srv.URL, nil))
		if err == nil {
			t.Fatal("no error")
		}
	})
}

// TestFallback: what the fast path does not handle goes to Fallback, per
// request; without Fallback it fails and the body is closed.
func TestFallback(t *testing.T) {
	tests := []struct {
		name     string
		req      func() *http.Request
		tlsConf  bool
		fallback bool
	}{
		{name: "http", req: func() *http.Request { return mustReq(t, "GET", "http://127.0.0.1:1/", nil) }},
		{name: "https without TLSClientConfig", fallback: true,
			req: func() *http.Request { return mustReq(t, "GET", "https://127.0.0.1:1/", nil) }},
		{name: "https with TLSClientConfig", tlsConf: true,
			req: func() *http.Request { return mustReq(t, "GET", "https://127.0.0.1:1/", nil) }},
		{name: "other scheme", fallback: true,
			req: func() *http.Request { return mustReq(t, "GET", "h2c://127.0.0.1:1/", nil) }},
		{name: "CONNECT", fallback: true,
			req: func() *http.Request { return mustReq(t, "CONNECT", "http://127.0.0.1:1/", nil) }},
		{name: "upgrade with a body", fallback: true, req: func() *http.Request {
			r := mustReq(t, "POST", "http://127.0.0.1:1/", strings.NewReader("x"))
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "h2c")
			return r
		}},
		{name: "upgrade without a body", req: func() *http.Request {
			r := mustReq(t, "GET", "http://127.0.0.1:1/", nil)
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
			return r
		}},
		{name: "UseFallback", fallback: true, req: func() *http.Request {
			r := mustReq(t, "GET", "http://127.0.0.1:1/", nil)
			r.Header.Set("X-Use-Fallback", "yes")
			return r
		}},
		{name: "internationalised host", fallback: true,
			req: func() *http.Request { return mustReq(t, "GET", "http://bücher.example:1/", nil) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fb := &recordingRT{}
			tr := newTransport(t)
			tr.Fallback = fb
			// The fast path dials nothing here: its requests fail.
			tr.DialContext = func(context.Context, string, string) (net.Conn, error) {
				return nil, errors.New("fast path (test)")
			}
			if tc.tlsConf {
				tr.TLSClientConfig = &tls.Config{}
			}
			useFallback := func(r *http.Request) bool { return r.Header.Get("X-Use-Fallback") != "" }
			tr.UseFallback = useFallback
			resp, err := tr.RoundTrip(tc.req())
			if tc.fallback {
				if err != nil || resp.StatusCode != 299 || fb.count() != 1 {
					t.Fatalf("not sent to Fallback: %v", err)
				}
				// Without Fallback: an error, and the body is closed.
				tr2 := newTransport(t)
				tr2.UseFallback = useFallback
				if tc.tlsConf {
					tr2.TLSClientConfig = &tls.Config{}
				}
				req := tc.req()
				ct := newCloseTracker(strings.NewReader("body"))
				req.Body = ct
				if _, err := tr2.RoundTrip(req); !errors.Is(err, errNoFallback) {
					t.Errorf("without Fallback: %v", err)
				}
				ct.wait(t)
				return
			}
			if err == nil || fb.count() != 0 {
				t.Fatalf("sent to Fallback")
			}
		})
	}
}

// upgradeBackend answers an upgrade with 101 and then echoes in upper case.
func upgradeBackend(t *testing.T) *rawServer {
	return newRawServer(t, func(_ int, c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Header.Get("Upgrade") != "echo" {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		// Bytes after the 101 in the same write: the client must not
		// lose them.
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n")
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, strings.ToUpper(line)); err != nil {
				return
			}
		}
	})
}

// TestUpgrade: a 101 response's Body is the connection, readable and
// writable, as ReverseProxy needs.
func TestUpgrade(t *testing.T) {
	srv := upgradeBackend(t)
	tr := newTransport(t)
	req := mustReq(t, "GET", srv.url, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("body %T is not an io.ReadWriteCloser", resp.Body)
	}
	br := bufio.NewReader(rwc)
	if line, _ := br.ReadString('\n'); line != "hello\n" {
		t.Fatalf("first bytes %q", line)
	}
	io.WriteString(rwc, "ping\n")
	if line, _ := br.ReadString('\n'); line != "PING\n" {
		t.Fatalf("echo %q", line)
	}
	rwc.Close()
	srv.waitEnded(t, 1)
}

// TestReverseProxy runs the Transport under httputil.ReverseProxy: bodies
// both ways, trailers, 1xx forwarding and upgrades.
func TestReverseProxy(t *testing.T) {
	backend, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "after hints")
		case "/echo":
			w.Header().Set("Trailer", "X-Req-Trailer, X-Resp-Trailer")
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
			w.Header().Set("X-Req-Trailer", r.Trailer.Get("X-Checksum"))
			w.Header().Set("X-Resp-Trailer", "done")
		case "/ua":
			io.WriteString(w, r.Header.Get("User-Agent")+"|"+fmt.Sprint(len(r.Header.Values("User-Agent"))))
		}
	}))
	echo := upgradeBackend(t)
	target, _ := url.Parse(backend.URL)
	echoTarget, _ := url.Parse(echo.url)
	tr := newTransport(t)
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			if pr.In.URL.Path == "/upgrade" {
				pr.SetURL(echoTarget)
			} else {
				pr.SetURL(target)
			}
			pr.Out.Trailer = pr.In.Trailer
		},
		Transport: tr,
	})
	t.Cleanup(proxy.Close)
	client := &http.Transport{DisableCompression: true}
	t.Cleanup(client.CloseIdleConnections)

	t.Run("103 forwarded", func(t *testing.T) {
		var hints []string
		req := mustReq(t, "GET", proxy.URL+"/hints", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
				return nil
			},
		}))
		_, body := do(t, client, req)
		if body != "after hints" || fmt.Sprint(hints) != "[103 </a.css>; rel=preload]" {
			t.Errorf("body %q, 1xx %q", body, hints)
		}
	})
	t.Run("body and trailers both ways", func(t *testing.T) {
		req := mustReq(t, "POST", proxy.URL+"/echo", nil)
		req.Trailer = http.Header{"X-Checksum": nil}
		req.Body = &trailerBody{r: strings.NewReader("payload"), trailer: req.Trailer}
		req.ContentLength = -1
		resp, body := do(t, client, req)
		if body != "payload" || resp.Trailer.Get("X-Req-Trailer") != "abc123" || resp.Trailer.Get("X-Resp-Trailer") != "done" {
			t.Errorf("body %q, trailers %v", body, resp.Trailer)
		}
	})
	t.Run("no User-Agent from the client: none upstream", func(t *testing.T) {
		req := mustReq(t, "GET", proxy.URL+"/ua", nil)
		req.Header.Set("User-Agent", "")
		_, body := do(t, client, req)
		if body != "|0" {
			t.Errorf("backend saw User-Agent %q", body)
		}
	})
	t.Run("upgrade", func(t *testing.T) {
		c, err := net.Dial("tcp", proxy.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("%v %v", resp, err)
		}
		if line, _ := br.ReadString('\n'); line != "hello\n" {
			t.Fatalf("first bytes %q", line)
		}
		io.WriteString(c, "through the proxy\n")
		if line, _ := br.ReadString('\n'); line != "THROUGH THE PROXY\n" {
			t.Fatalf("echo %q", line)
		}
	})
}
