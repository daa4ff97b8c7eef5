package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer is a loopback TCP backend driven by hand, to send exactly the
// bytes a test wants.
type rawServer struct {
	t       *testing.T
	ln      net.Listener
	url     string
	accepts atomic.Int32
	ended   chan int // a connection's handler returned, and it was closed

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// newRawServer starts a backend that runs handle for each connection; n
// counts connections from 1. The connection is closed when handle returns.
func newRawServer(t *testing.T, handle func(n int, c net.Conn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{t: t, ln: ln, url: "http://" + ln.Addr().String(), ended: make(chan int, 1024)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(s.accepts.Add(1))
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handle(n, c)
				c.Close()
				s.ended <- n
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// waitEnded waits until n connection handlers have returned.
func (s *rawServer) waitEnded(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-s.ended:
		case <-testDone(t):
			t.Fatal("waiting for backend connections to end: test deadline")
		}
	}
}

// serveHTTP reads requests from c one after the other and answers each
// with reply's bytes; it stops after a reply with closeAfter, or at the
// end of the connection. i counts requests on c from 1.
func serveHTTP(c net.Conn, reply func(i int, req *http.Request, body []byte) (raw string, closeAfter bool)) {
	serveBuffered(bufio.NewReader(c), c, reply)
}

// serveBuffered is serveHTTP on a connection already read from through br.
func serveBuffered(br *bufio.Reader, c io.Writer, reply func(i int, req *http.Request, body []byte) (raw string, closeAfter bool)) {
	for i := 1; ; i++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		raw, closeAfter := reply(i, req, body)
		if _, err := io.WriteString(c, raw); err != nil || closeAfter {
			return
		}
	}
}

// okReply is a small keep-alive response.
const okReply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// connCounter counts the connections an httptest.Server opens and closes.
type connCounter struct {
	opened, closed atomic.Int32
	closedCh       chan struct{} // one value per closed connection
}

func newCountingServer(t *testing.T, h http.Handler) (*httptest.Server, *connCounter) {
	t.Helper()
	cc := &connCounter{closedCh: make(chan struct{}, 1024)}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			cc.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			cc.closed.Add(1)
			cc.closedCh <- struct{}{}
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, cc
}

// waitClosed waits until n connections have been closed.
func (cc *connCounter) waitClosed(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-cc.closedCh:
		case <-testDone(t):
			t.Fatalf("waiting for %d closed connections: test deadline", n)
		}
	}
}

// testDone is a channel closed shortly before the test's deadline, if it
// has one: waits in tests are on events, this only turns a hang into a
// failure.
func testDone(t *testing.T) <-chan struct{} {
	dl, ok := t.Deadline()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl.Add(-5*time.Second))
	t.Cleanup(cancel)
	return ctx.Done()
}

func newTransport(t *testing.T) *Transport {
	tr := &Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// roundTripOK sends req through tr and checks that it fails (wantErr) or
// gets 200 "ok".
func roundTripOK(t *testing.T, tr http.RoundTripper, req *http.Request, wantErr bool) {
	t.Helper()
	resp, err := tr.RoundTrip(req)
	if wantErr {
		if err == nil {
			resp.Body.Close()
			t.Fatal("no error")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
}

func mustReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// do sends req and reads the whole response body.
func do(t *testing.T, rt http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

// releases records the testHookRelease events of a Transport.
type releases struct{ ch chan bool }

func watchReleases(tr *Transport) *releases {
	r := &releases{ch: make(chan bool, 1024)}
	tr.testHookRelease = func(pooled bool) { r.ch <- pooled }
	return r
}

func (r *releases) next(t *testing.T) bool {
	t.Helper()
	select {
	case p := <-r.ch:
		return p
	case <-testDone(t):
		t.Fatal("waiting for a connection release: test deadline")
		return false
	}
}

// recordingRT is a Fallback that records what it gets.
type recordingRT struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recordingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	if req.Body != nil {
		req.Body.Close()
	}
	return &http.Response{StatusCode: 299, Body: http.NoBody, Header: http.Header{}, Request: req}, nil
}

func (r *recordingRT) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// closeTracker is a request body that reports its Close.
type closeTracker struct {
	io.Reader
	closed chan struct{}
	once   sync.Once
}

func newCloseTracker(r io.Reader) *closeTracker {
	return &closeTracker{Reader: r, closed: make(chan struct{})}
}

func (c *closeTracker) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *closeTracker) wait(t *testing.T) {
	t.Helper()
	select {
	case <-c.closed:
	case <-testDone(t):
		t.Fatal("request body never closed")
	}
}

// zeros is an endless body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func lines(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }
