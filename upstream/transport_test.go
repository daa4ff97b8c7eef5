package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKeepAlive: a connection is reused only after a response read to its
// end on which neither side asked to close.
func TestKeepAlive(t *testing.T) {
	tests := []struct {
		name    string
		reply   string // to the first request
		setup   func(*http.Request)
		tr      func(*Transport)
		consume func(*http.Response) // default: read to EOF and close
		method  string
		reuse   bool
	}{
		{name: "content-length", reply: okReply, reuse: true},
		{name: "chunked", reply: lines("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n"), reuse: true},
		{name: "empty body", reply: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", reuse: true},
		{name: "204", reply: "HTTP/1.1 204 No Content\r\n\r\n", reuse: true},
		{name: "304 with a length", reply: "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", reuse: true},
		{name: "HEAD with a length", method: "HEAD", reply: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", reuse: true},
		{name: "HTTP/1.0 keep-alive", reply: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", reuse: true},
		{name: "response Connection: close", reply: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{name: "HTTP/1.0", reply: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{name: "body until close", reply: "HTTP/1.1 200 OK\r\n\r\nok"},
		{name: "request Close", reply: okReply, setup: func(r *http.Request) { r.Close = true }},
		{name: "request Connection: close", reply: okReply, setup: func(r *http.Request) { r.Header.Set("Connection", "close") }},
		{name: "keep-alive off", reply: okReply, tr: func(tr *Transport) { tr.MaxIdlePerHost = -1 }},
		{
			name:    "body closed before its end",
			reply:   "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
			consume: func(r *http.Response) { r.Body.Read(make([]byte, 3)); r.Body.Close() },
		},
		{
			name:    "body closed unread",
			reply:   okReply,
			consume: func(r *http.Response) { r.Body.Close() },
		},
		{
			name:  "bytes after the response",
			reply: okReply + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
		},
		{
			name:  "bytes after a response that fills the read buffer",
			reply: exactly4K + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale",
		},
		{
			name:  "bad chunked trailer",
			reply: lines("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\nbad trailer\n\n"),
		},
		{
			name:  "short body",
			reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
		},
		{name: "1xx as final status", reply: "HTTP/1.1 101 Switching Protocols\r\n\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var replied atomic.Int32
			srv := newRawServer(t, func(_ int, c net.Conn) {
				serveHTTP(c, func(_ int, req *http.Request, _ []byte) (string, bool) {
					if replied.Add(1) == 1 {
						// The short body case: close so the client sees
						// the end.
						return tc.reply, tc.name == "short body" || tc.name == "body until close" || tc.name == "HTTP/1.0"
					}
					return okReply, false
				})
			})
			tr := newTransport(t)
			if tc.tr != nil {
				tc.tr(tr)
			}
			method := tc.method
			if method == "" {
				method = "GET"
			}
			req := mustReq(t, method, srv.url+"/first", nil)
			if tc.setup != nil {
				tc.setup(req)
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			if tc.consume != nil {
				tc.consume(resp)
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			resp2, body := do(t, tr, mustReq(t, "GET", srv.url+"/second", nil))
			if resp2.StatusCode != 200 || body != "ok" {
				t.Fatalf("second response: %d %q", resp2.StatusCode, body)
			}
			want := int32(2)
			if tc.reuse {
				want = 1
			}
			if got := srv.accepts.Load(); got != want {
				t.Errorf("connections: got %d, want %d", got, want)
			}
		})
	}
}

// TestReplay: a request that fails on a reused connection before any byte
// of the response came back is sent again on a fresh connection when
// http.Transport's rules allow it, and never after response bytes.
func TestReplay(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		body    string // sent with GetBody unless noGetBody
		noGet   bool
		idemKey bool
		partial bool // the stale connection sends part of a status line
		replay  bool
	}{
		{name: "GET", method: "GET", replay: true},
		{name: "HEAD", method: "HEAD", replay: true},
		{name: "OPTIONS", method: "OPTIONS", replay: true},
		{name: "POST", method: "POST"},
		{name: "DELETE", method: "DELETE"},
		{name: "POST with Idempotency-Key", method: "POST", idemKey: true, replay: true},
		{name: "PUT with body and GetBody", method: "PUT", body: "payload", idemKey: true, replay: true},
		{name: "PUT with body read, no GetBody", method: "PUT", body: "payload", idemKey: true, noGet: true},
		{name: "POST with body and GetBody", method: "POST", body: "payload"},
		{name: "GET after response bytes", method: "GET", partial: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var seen sync.Map // "conn/request" -> body
			srv := newRawServer(t, func(n int, c net.Conn) {
				serveHTTP(c, func(i int, req *http.Request, body []byte) (string, bool) {
					seen.Store(fmt.Sprintf("%d/%d", n, i), string(body))
					if n == 1 && i == 2 {
						// Stale: the request is read, the connection
						// closed without an answer.
						if tc.partial {
							return "HTTP/1.1 2", true
						}
						return "", true
					}
					return "HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len(body)+2) + "\r\n\r\nok" + string(body), false
				})
			})
			tr := newTransport(t)
			do(t, tr, mustReq(t, "GET", srv.url+"/warm", nil))

			var req *http.Request
			if tc.body != "" {
				req = mustReq(t, tc.method, srv.url+"/x", strings.NewReader(tc.body))
				if tc.noGet {
					req.GetBody = nil
				}
			} else {
				req = mustReq(t, tc.method, srv.url+"/x", nil)
			}
			if tc.idemKey {
				req.Header.Set("Idempotency-Key", "k1")
			}
			resp, err := tr.RoundTrip(req)
			if tc.replay {
				if err != nil {
					t.Fatalf("not replayed: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if tc.method != "HEAD" && string(b) != "ok"+tc.body {
					t.Errorf("body %q", b)
				}
				if got, _ := seen.Load("2/1"); got != tc.body {
					t.Errorf("replayed request body %q, want %q", got, tc.body)
				}
				if n := srv.accepts.Load(); n != 2 {
					t.Errorf("%d connections, want 2", n)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("replayed (status %d), want an error", resp.StatusCode)
			}
			if _, ok := seen.Load("2/1"); ok {
				t.Error("the backend got the request twice")
			}
		})
	}
}

// TestStaleDetectedBeforeUse: an idle connection the backend closed is not
// used at all, so that even a POST goes through.
func TestStaleDetectedBeforeUse(t *testing.T) {
	srv := newRawServer(t, func(n int, c net.Conn) {
		serveHTTP(c, func(int, *http.Request, []byte) (string, bool) {
			return okReply, true // closes without saying so
		})
	})
	tr := newTransport(t)
	rel := watchReleases(tr)
	do(t, tr, mustReq(t, "GET", srv.url, nil))
	if !rel.next(t) {
		t.Fatal("first connection not pooled")
	}
	srv.waitEnded(t, 1) // the backend closed it
	resp, body := do(t, tr, mustReq(t, "POST", srv.url, strings.NewReader("x")))
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if n := srv.accepts.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestReplayNothingWritten: a request whose first write fails on a reused
// connection is replayed whatever its method.
func TestReplayNothingWritten(t *testing.T) {
	srv := newRawServer(t, func(_ int, c net.Conn) {
		serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
	})
	var failNext atomic.Bool
	tr := newTransport(t)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &failingConn{Conn: c, fail: &failNext}, nil
	}
	do(t, tr, mustReq(t, "GET", srv.url, nil))
	failNext.Store(true)
	for _, body := range []string{"", "payload"} {
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		resp, b := do(t, tr, mustReq(t, "POST", srv.url, r))
		if resp.StatusCode != 200 || b != "ok" {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
		failNext.Store(true)
	}
}

// failingConn fails its next write, once, when told to, writing nothing.
type failingConn struct {
	net.Conn
	fail *atomic.Bool
}

func (c *failingConn) Write(p []byte) (int, error) {
	if c.fail.CompareAndSwap(true, false) {
		return 0, errors.New("write: broken pipe (test)")
	}
	return c.Conn.Write(p)
}

// TestIdleTimeout: a connection idle for the idle timeout is not used, and
// the pool's timer closes it without help.
func TestIdleTimeout(t *testing.T) {
	tests := []struct {
		name  string
		idle  time.Duration // fake time spent idle
		reuse bool
	}{
		{"fresh", time.Minute - time.Nanosecond, true},
		{"expired", time.Minute, false},
		{"long expired", time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRawServer(t, func(_ int, c net.Conn) {
				serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
			})
			var now atomic.Int64
			now.Store(time.Now().UnixNano())
			tr := newTransport(t)
			tr.IdleTimeout = time.Minute
			tr.now = func() time.Time { return time.Unix(0, now.Load()) }
			do(t, tr, mustReq(t, "GET", srv.url, nil))
			now.Add(int64(tc.idle))
			do(t, tr, mustReq(t, "GET", srv.url, nil))
			want := int32(2)
			if tc.reuse {
				want = 1
			}
			if got := srv.accepts.Load(); got != want {
				t.Errorf("%d connections, want %d", got, want)
			}
		})
	}

	t.Run("timer", func(t *testing.T) {
		srv, cc := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		tr := newTransport(t)
		tr.IdleTimeout = time.Nanosecond
		do(t, tr, mustReq(t, "GET", srv.URL, nil))
		cc.waitClosed(t, 1) // by the pool's timer
		hp := tr.pool(poolKey{host: strings.TrimPrefix(srv.URL, "http://")})
		if n := hp.idleCount(); n != 0 {
			t.Errorf("%d idle connections left", n)
		}
	})
}

// TestMaxIdlePerHost: connections beyond the cap are closed when they come
// back; CloseIdleConnections closes the rest.
func TestMaxIdlePerHost(t *testing.T) {
	for _, max := range []int{1, 2, 3} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			const n = 3
			var arrived sync.WaitGroup
			arrived.Add(n)
			srv, cc := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived.Done()
				arrived.Wait() // all three in flight at once: three connections
				io.WriteString(w, "ok")
			}))
			tr := newTransport(t)
			tr.MaxIdlePerHost = max
			rel := watchReleases(tr)
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					resp, err := tr.RoundTrip(mustReq(t, "GET", srv.URL, nil))
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				})
			}
			wg.Wait()
			pooled := 0
			for range n {
				if rel.next(t) {
					pooled++
				}
			}
			if pooled != max {
				t.Errorf("%d pooled, want %d", pooled, max)
			}
			cc.waitClosed(t, n-max)
			tr.CloseIdleConnections()
			cc.waitClosed(t, max)
			if o := cc.opened.Load(); o != n {
				t.Errorf("%d connections opened, want %d", o, n)
			}
		})
	}
}

// TestCloseIdleConnections closes the idle connections of every host and
// those of Fallback.
func TestCloseIdleConnections(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	srv1, cc1 := newCountingServer(t, h)
	srv2, cc2 := newCountingServer(t, h)
	fb := &closeIdleRT{}
	tr := newTransport(t)
	tr.Fallback = fb
	do(t, tr, mustReq(t, "GET", srv1.URL, nil))
	do(t, tr, mustReq(t, "GET", srv2.URL, nil))
	tr.CloseIdleConnections()
	cc1.waitClosed(t, 1)
	cc2.waitClosed(t, 1)
	if !fb.called.Load() {
		t.Error("Fallback's CloseIdleConnections not called")
	}
	do(t, tr, mustReq(t, "GET", srv1.URL, nil))
	if o := cc1.opened.Load(); o != 2 {
		t.Errorf("%d connections, want 2", o)
	}
}

type closeIdleRT struct {
	recordingRT
	called atomic.Bool
}

func (c *closeIdleRT) CloseIdleConnections() { c.called.Store(true) }

// TestResponseHeaderTimeout: no headers in time is a net.Error timeout
// (504 for the proxy), and the connection is closed.
func TestResponseHeaderTimeout(t *testing.T) {
	for _, withBody := range []bool{false, true} {
		t.Run(fmt.Sprint("body=", withBody), func(t *testing.T) {
			gone := make(chan struct{})
			srv, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.ReadAll(r.Body)
				<-r.Context().Done() // the client closed the connection
				close(gone)
			}))
			tr := newTransport(t)
			tr.ResponseHeaderTimeout = time.Millisecond
			var body io.Reader
			if withBody {
				body = strings.NewReader("some body")
			}
			_, err := tr.RoundTrip(mustReq(t, "POST", srv.URL, body))
			if !isTimeoutErr(err) {
				t.Fatalf("got %v, want a net.Error timeout", err)
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("%v is a context error", err)
			}
			select {
			case <-gone:
			case <-testDone(t):
				t.Fatal("backend connection not closed")
			}
		})
	}
}

// TestResponseHeaderTimeoutAfterBody: the header timeout starts once the
// request body has been written, not before: a backend that answers while
// the body is still coming is not timed out, however short the timeout.
func TestResponseHeaderTimeoutAfterBody(t *testing.T) {
	gotPart := make(chan struct{})
	srv := newRawServer(t, func(_ int, c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(req.Body, buf); err != nil {
			return
		}
		close(gotPart)
		io.WriteString(c, okReply)
		io.Copy(io.Discard, req.Body)
	})
	tr := newTransport(t)
	tr.ResponseHeaderTimeout = time.Nanosecond
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("part1"))
		<-gotPart
	}()
	req := mustReq(t, "POST", srv.url, pr)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "ok" {
		t.Fatalf("%q %v", b, err)
	}
	pw.Close()
}

// TestDialError: failing to connect is a *net.OpError with Op "dial" (502
// for the proxy).
func TestDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now

	tests := []struct {
		name string
		tr   func(*Transport)
	}{
		{"default dialer", nil},
		{"custom dialer returning a plain error", func(tr *Transport) {
			tr.DialContext = func(context.Context, string, string) (net.Conn, error) {
				return nil, errors.New("no route (test)")
			}
		}},
		{"custom dialer returning an OpError", func(tr *Transport) {
			tr.DialContext = (&net.Dialer{}).DialContext
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t)
			if tc.tr != nil {
				tc.tr(tr)
			}
			_, err := tr.RoundTrip(mustReq(t, "GET", "http://"+addr+"/", nil))
			op, ok := errors.AsType[*net.OpError](err)
			if !ok || op.Op != "dial" {
				t.Fatalf("got %T %v, want a *net.OpError with Op dial", err, err)
			}
		})
	}
}

// TestCancel: when the request's context ends, the backend connection is
// closed at once and RoundTrip (or the body) returns the context's error.
func TestCancel(t *testing.T) {
	tests := []struct {
		name  string
		stage string // when to cancel: "before", "headers", "body", "upload", "dial"
	}{
		{"before sending", "before"},
		{"waiting for headers", "headers"},
		{"reading the body", "body"},
		{"sending the body", "upload"},
		{"dialing", "dial"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			gone := make(chan struct{}, 1)
			srv, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				if tc.stage == "upload" {
					// The server notices a closed connection only once
					// the body is read.
					io.ReadAll(r.Body)
				}
				if tc.stage == "body" {
					io.WriteString(w, "partial")
					w.(http.Flusher).Flush()
				}
				<-r.Context().Done()
				gone <- struct{}{}
			}))
			tr := newTransport(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.stage == "dial" {
				tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
					cancel()
					<-ctx.Done()
					return nil, ctx.Err()
				}
			}
			var body io.Reader
			if tc.stage == "upload" {
				pr, pw := io.Pipe()
				defer pw.Close()
				go func() {
					pw.Write([]byte("first part"))
					<-arrived
					cancel()
				}()
				body = pr
			}
			req := mustReq(t, "POST", srv.URL, body).WithContext(ctx)
			switch tc.stage {
			case "before":
				cancel()
			case "headers":
				go func() { <-arrived; cancel() }()
			}
			resp, err := tr.RoundTrip(req)
			if tc.stage == "body" {
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 7)
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatal(err)
				}
				cancel()
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want context.Canceled", err)
			}
			if tc.stage != "before" && tc.stage != "dial" {
				select {
				case <-gone:
				case <-testDone(t):
					t.Fatal("backend connection not closed")
				}
			}
		})
	}
}

// TestNoGoroutinePerIdleConn: idle connections cost no goroutine.
func TestNoGoroutinePerIdleConn(t *testing.T) {
	srv, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	tr := newTransport(t)
	do(t, tr, mustReq(t, "GET", srv.URL, nil))
	before := goroutinesNamed("upstream.")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { do(t, tr, mustReq(t, "GET", srv.URL, nil)) })
	}
	wg.Wait()
	if after := goroutinesNamed("upstream."); after > before {
		t.Errorf("%d goroutines in package upstream with idle connections, had %d", after, before)
	}
}

// goroutinesNamed counts the other goroutines running a method of this
// package.
func goroutinesNamed(prefix string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	stacks := strings.Split(string(buf), "\n\n")
	n := 0
	for _, s := range stacks[1:] { // the first is this goroutine
		if strings.Contains(s, prefix+"(*") {
			n++
		}
	}
	return n
}

// TestHeaderDeadlineOfAPastExchange: a response whose body was buffered
// with its headers leaves the header timeout's read deadline set on the
// connection; a request with a body that takes longer to send than that
// deadline had left still gets its answer on the same connection.
func TestHeaderDeadlineOfAPastExchange(t *testing.T) {
	srv := newRawServer(t, func(_ int, c net.Conn) {
		serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
	})
	tr := newTransport(t)
	tr.ResponseHeaderTimeout = 100 * time.Millisecond
	do(t, tr, mustReq(t, "GET", srv.url, nil))
	pr, pw := io.Pipe()
	go func() {
		// A slow client body: it ends after the first exchange's
		// deadline has passed.
		time.Sleep(3 * tr.ResponseHeaderTimeout)
		io.WriteString(pw, "data")
		pw.Close()
	}()
	if _, body := do(t, tr, mustReq(t, "POST", srv.url, pr)); body != "ok" {
		t.Fatalf("got %q", body)
	}
	if n := srv.accepts.Load(); n != 1 {
		t.Fatalf("%d connections, want the first one reused", n)
	}
}
