package upstream

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

// trace1xx records the informational responses a request gets.
type trace1xx struct {
	mu       sync.Mutex
	codes    []int
	headers  []textproto.MIMEHeader
	got100   int
	waited   int
	failWith error
}

func (tr *trace1xx) attach(req *http.Request) *http.Request {
	return req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			tr.codes = append(tr.codes, code)
			tr.headers = append(tr.headers, h)
			return tr.failWith
		},
		Got100Continue:  func() { tr.mu.Lock(); tr.got100++; tr.mu.Unlock() },
		Wait100Continue: func() { tr.mu.Lock(); tr.waited++; tr.mu.Unlock() },
	}))
}

// Test1xx: informational responses go to the trace's Got1xxResponse, then
// the final response is read.
func Test1xx(t *testing.T) {
	const early = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
	const cont = "HTTP/1.1 100 Continue\r\n\r\n"
	tests := []struct {
		name      string
		reply     string
		trace     bool
		failWith  error
		maxHeader int64
		wantCodes []int
		wantErr   bool
	}{
		{name: "103", reply: early + okReply, trace: true, wantCodes: []int{103}},
		{name: "100 and 103", reply: cont + early + early + okReply, trace: true, wantCodes: []int{100, 103, 103}},
		{name: "no trace", reply: cont + early + okReply},
		{name: "hook error", reply: early + okReply, trace: true, failWith: errors.New("no"), wantErr: true, wantCodes: []int{103}},
		{name: "1xx over the header limit without trace", reply: strings.Repeat(early, 10) + okReply, maxHeader: 300, wantErr: true},
		{name: "header limit restarts after each traced 1xx", reply: strings.Repeat(early, 10) + okReply, maxHeader: 300, trace: true,
			wantCodes: []int{103, 103, 103, 103, 103, 103, 103, 103, 103, 103}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRawServer(t, func(_ int, c net.Conn) {
				serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return tc.reply, false })
			})
			tr := newTransport(t)
			tr.MaxResponseHeaderBytes = tc.maxHeader
			rec := &trace1xx{failWith: tc.failWith}
			req := mustReq(t, "GET", srv.url, nil)
			if tc.trace {
				req = rec.attach(req)
			}
			roundTripOK(t, tr, req, tc.wantErr)
			if fmt.Sprint(rec.codes) != fmt.Sprint(tc.wantCodes) && len(rec.codes)+len(tc.wantCodes) > 0 {
				t.Errorf("1xx codes %v, want %v", rec.codes, tc.wantCodes)
			}
			for i, c := range rec.codes {
				if c == 103 && rec.headers[i].Get("Link") != "</style.css>; rel=preload" {
					t.Errorf("103 headers %v", rec.headers[i])
				}
			}
		})
	}
}

// interimRec records the 1xx responses given to it as an Interim.
type interimRec struct {
	mu       sync.Mutex
	codes    []int
	links    []string
	failWith error
}

func (ir *interimRec) Interim(code int, h http.Header) error {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	ir.codes = append(ir.codes, code)
	ir.links = append(ir.links, h.Get("Link"))
	return ir.failWith
}

// TestInterim: a request's Interim gets its 1xx responses, on the fast path
// and through Fallback alike; its error fails the request.
func TestInterim(t *testing.T) {
	const early = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
	const cont = "HTTP/1.1 100 Continue\r\n\r\n"
	tests := []struct {
		name      string
		reply     string
		failWith  error
		wantCodes []int
	}{
		{name: "103", reply: early + okReply, wantCodes: []int{103}},
		{name: "100 and 103", reply: cont + early + early + okReply, wantCodes: []int{100, 103, 103}},
		{name: "hook error", reply: early + okReply, failWith: errors.New("no"), wantCodes: []int{103}},
	}
	for _, fallback := range []bool{false, true} {
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s, fallback %v", tc.name, fallback), func(t *testing.T) {
				srv := newRawServer(t, func(_ int, c net.Conn) {
					serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return tc.reply, false })
				})
				tr := newTransport(t)
				if fallback {
					std := &http.Transport{}
					t.Cleanup(std.CloseIdleConnections)
					tr.Fallback, tr.UseFallback = std, func(*http.Request) bool { return true }
				}
				rec := &interimRec{failWith: tc.failWith}
				req := mustReq(t, "GET", srv.url, nil)
				req = req.WithContext(WithInterim(req.Context(), rec))
				roundTripOK(t, tr, req, tc.failWith != nil)
				if fmt.Sprint(rec.codes) != fmt.Sprint(tc.wantCodes) {
					t.Errorf("1xx codes %v, want %v", rec.codes, tc.wantCodes)
				}
				for i, c := range rec.codes {
					if c == 103 && rec.links[i] != "</style.css>; rel=preload" {
						t.Errorf("103 Link %q", rec.links[i])
					}
				}
			})
		}
	}
}

// TestExpectContinue: a request with "Expect: 100-continue" waits for the
// backend's go-ahead (or its answer, or the timeout) before its body.
func TestExpectContinue(t *testing.T) {
	tests := []struct {
		name     string
		script   string // what the backend does after the request headers
		timeout  time.Duration
		status   int
		wantSent bool // the body reached the backend
		reuse    bool
	}{
		{name: "100 Continue", script: "continue", timeout: time.Hour, status: 200, wantSent: true, reuse: true},
		{name: "final answer and close", script: "reject-close", timeout: time.Hour, status: 417},
		{name: "final answer, connection kept", script: "reject-keep", timeout: time.Hour, status: 401, wantSent: true, reuse: true},
		{name: "no 100 before the timeout", script: "wait-body", timeout: time.Nanosecond, status: 200, wantSent: true, reuse: true},
		{name: "no wait configured", script: "wait-body", status: 200, wantSent: true, reuse: true},
	}
	const body = "the request body"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gotBody := make(chan string, 1)
			srv := newRawServer(t, func(n int, c net.Conn) {
				if n > 1 {
					serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
					return
				}
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				switch tc.script {
				case "continue":
					io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
					b, _ := io.ReadAll(req.Body)
					gotBody <- string(b)
					io.WriteString(c, okReply)
				case "reject-close":
					io.WriteString(c, "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
					c.(*net.TCPConn).CloseWrite()
					b, _ := io.ReadAll(br) // until the client closes
					gotBody <- string(b)
					return
				case "reject-keep":
					io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
					b, _ := io.ReadAll(req.Body)
					gotBody <- string(b)
				case "wait-body":
					b, _ := io.ReadAll(req.Body)
					gotBody <- string(b)
					io.WriteString(c, okReply)
				}
				// Then plain requests on the same connection.
				serveBuffered(br, c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
			})
			tr := newTransport(t)
			tr.ExpectContinueTimeout = tc.timeout
			rel := watchReleases(tr)
			rec := &trace1xx{}
			ct := newCloseTracker(strings.NewReader(body))
			req := mustReq(t, "PUT", srv.url, ct)
			req.ContentLength = int64(len(body))
			req.Header.Set("Expect", "100-continue")
			resp, err := tr.RoundTrip(rec.attach(req))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			ct.wait(t)
			if pooled := rel.next(t); pooled != tc.reuse {
				t.Errorf("connection pooled: %v, want %v", pooled, tc.reuse)
			}
			if got := <-gotBody; (got == body) != tc.wantSent || (!tc.wantSent && got != "") {
				t.Errorf("backend got body %q, want sent=%v", got, tc.wantSent)
			}
			if tc.timeout > 0 && rec.waited != 1 {
				t.Errorf("Wait100Continue called %d times", rec.waited)
			}
			if tc.script == "continue" && (rec.got100 != 1 || fmt.Sprint(rec.codes) != "[100]") {
				t.Errorf("Got100Continue %d, 1xx %v", rec.got100, rec.codes)
			}
			do(t, tr, mustReq(t, "GET", srv.url, nil))
			want := int32(2)
			if tc.reuse {
				want = 1
			}
			if n := srv.accepts.Load(); n != want {
				t.Errorf("%d connections, want %d", n, want)
			}
		})
	}
}

// TestEarlyResponse: a backend may answer before it has read the request
// body; the answer is delivered, nothing deadlocks, and the connection is
// reused only if the whole body got written.
func TestEarlyResponse(t *testing.T) {
	t.Run("413 and close, endless body", func(t *testing.T) {
		srv := newRawServer(t, func(n int, c net.Conn) {
			if n > 1 {
				serveHTTP(c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
				return
			}
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large")
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, br) // no reset while the client writes
		})
		tr := newTransport(t)
		ct := newCloseTracker(zeros{})
		resp, body := do(t, tr, mustReq(t, "POST", srv.url, ct))
		if resp.StatusCode != 413 || body != "too large" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		ct.wait(t) // the writer gave up
		do(t, tr, mustReq(t, "GET", srv.url, nil))
		if n := srv.accepts.Load(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})

	t.Run("net/http server rejecting a large body", func(t *testing.T) {
		srv, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > 1000 {
				http.Error(w, "too large", http.StatusRequestEntityTooLarge)
				return
			}
			io.Copy(io.Discard, r.Body)
		}))
		tr := newTransport(t)
		ct := newCloseTracker(bytes.NewReader(make([]byte, 8<<20)))
		req := mustReq(t, "POST", srv.URL, ct)
		req.ContentLength = 8 << 20
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		ct.wait(t)
	})

	for _, tc := range []struct {
		name    string
		bodyErr error // the request body fails after the answer
		reuse   bool
	}{
		{"body written in full after the answer", nil, true},
		{"body failing after the answer", errors.New("client went away"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRawServer(t, func(n int, c net.Conn) {
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.WriteString(c, okReply) // before reading the body
				if _, err := io.Copy(io.Discard, req.Body); err != nil {
					return
				}
				serveBuffered(br, c, func(int, *http.Request, []byte) (string, bool) { return okReply, false })
			})
			tr := newTransport(t)
			rel := watchReleases(tr)
			pr, pw := io.Pipe()
			req := mustReq(t, "POST", srv.url, pr)
			go pw.Write([]byte("start of the body"))
			resp, body := do(t, tr, req)
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			// The response is read; the body is still being written.
			if tc.bodyErr != nil {
				pw.CloseWithError(tc.bodyErr)
			} else {
				pw.Write([]byte(" and its end"))
				pw.Close()
			}
			if pooled := rel.next(t); pooled != tc.reuse {
				t.Fatalf("pooled %v, want %v", pooled, tc.reuse)
			}
			do(t, tr, mustReq(t, "GET", srv.url, nil))
			want := int32(2)
			if tc.reuse {
				want = 1
			}
			if n := srv.accepts.Load(); n != want {
				t.Errorf("%d connections, want %d", n, want)
			}
		})
	}
}

// seenRequest is what the echoing backend saw.
type seenRequest struct {
	ContentLength    int64
	TransferEncoding []string
	Body             string
	Trailer          http.Header
	Header           http.Header
}

func echoRequest(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	json.NewEncoder(w).Encode(seenRequest{r.ContentLength, r.TransferEncoding, string(b), r.Trailer, r.Header})
}

// trailerBody fills the request's trailer when it reaches its end, as a
// server does for the inbound request ReverseProxy passes on.
type trailerBody struct {
	r       io.Reader
	trailer http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.trailer.Set("X-Checksum", "abc123")
	}
	return n, err
}
func (b *trailerBody) Close() error { return nil }

// TestRequestBodies: Content-Length, chunked encoding and trailers are
// sent as http.Transport sends them.
func TestRequestBodies(t *testing.T) {
	tests := []struct {
		name    string
		req     func(url string) *http.Request
		wantCL  int64
		wantTE  string
		want    string
		trailer string
	}{
		{
			name:   "known length",
			req:    func(u string) *http.Request { return mustReq(t, "POST", u, strings.NewReader("hello")) },
			wantCL: 5, want: "hello",
		},
		{
			name: "unknown length: chunked",
			req: func(u string) *http.Request {
				return mustReq(t, "POST", u, io.NopCloser(io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo"))))
			},
			wantCL: -1, wantTE: "chunked", want: "hello",
		},
		{
			name: "chunked with trailers",
			req: func(u string) *http.Request {
				r := mustReq(t, "POST", u, nil)
				r.Trailer = http.Header{"X-Checksum": nil}
				r.Body = &trailerBody{r: strings.NewReader("hello"), trailer: r.Trailer}
				r.ContentLength = -1
				return r
			},
			wantCL: -1, wantTE: "chunked", want: "hello", trailer: "abc123",
		},
		{
			name:   "empty body",
			req:    func(u string) *http.Request { return mustReq(t, "POST", u, http.NoBody) },
			wantCL: 0,
		},
		{
			name: "GET with an empty body of unknown length",
			req: func(u string) *http.Request {
				r := mustReq(t, "GET", u, nil)
				r.Body = io.NopCloser(strings.NewReader(""))
				r.ContentLength = -1
				return r
			},
			wantCL: 0,
		},
		{
			name: "large body",
			req: func(u string) *http.Request {
				return mustReq(t, "PUT", u, strings.NewReader(strings.Repeat("x", 1<<20)))
			},
			wantCL: 1 << 20, want: strings.Repeat("x", 1<<20),
		},
	}
	srv, _ := newCountingServer(t, http.HandlerFunc(echoRequest))
	tr := newTransport(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, body := do(t, tr, tc.req(srv.URL))
			var seen seenRequest
			if err := json.Unmarshal([]byte(body), &seen); err != nil {
				t.Fatal(err)
			}
			if seen.ContentLength != tc.wantCL || strings.Join(seen.TransferEncoding, ",") != tc.wantTE || seen.Body != tc.want {
				t.Errorf("backend saw length %d, encoding %v, body of %d bytes", seen.ContentLength, seen.TransferEncoding, len(seen.Body))
			}
			if got := seen.Trailer.Get("X-Checksum"); got != tc.trailer {
				t.Errorf("trailer %q, want %q", got, tc.trailer)
			}
		})
	}
}

// TestResponseBodies: bodies of each framing arrive whole, trailers are in
// resp.Trailer after the end of the body.
func TestResponseBodies(t *testing.T) {
	srv, _ := newCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "hel")
			w.(http.Flusher).Flush()
			io.WriteString(w, "lo")
			w.Header().Set("X-Sum", "42")
		case "/trailer-undeclared":
			io.WriteString(w, "hello")
			w.(http.Flusher).Flush()
			w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		}
	}))
	tests := []struct {
		path      string
		wantCL    int64
		chunked   bool
		trailer   string
		trailerOK string
	}{
		{path: "/length", wantCL: 5},
		{path: "/chunked", wantCL: -1, chunked: true, trailer: "X-Sum", trailerOK: "42"},
		{path: "/trailer-undeclared", wantCL: -1, chunked: true, trailer: "X-Late", trailerOK: "yes"},
	}
	tr := newTransport(t)
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := tr.RoundTrip(mustReq(t, "GET", srv.URL+tc.path, nil))
			if err != nil {
				t.Fatal(err)
			}
			if resp.ContentLength != tc.wantCL || (len(resp.TransferEncoding) > 0) != tc.chunked {
				t.Errorf("length %d, encoding %v", resp.ContentLength, resp.TransferEncoding)
			}
			if tc.trailer != "" && resp.Trailer.Get(tc.trailer) != "" {
				t.Errorf("trailer set before the body's end")
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != "hello" {
				t.Fatalf("%q %v", b, err)
			}
			if tc.trailer != "" && resp.Trailer.Get(tc.trailer) != tc.trailerOK {
				t.Errorf("trailer %s = %q, want %q", tc.trailer, resp.Trailer.Get(tc.trailer), tc.trailerOK)
			}
		})
	}
}

// TestConcurrent runs many requests of every kind at once, for the race
// detector.
func TestConcurrent(t *testing.T) {
	srv, _ := newCountingServer(t, http.HandlerFunc(echoRequest))
	tr := newTransport(t)
	tr.MaxIdlePerHost = 4
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			var req *http.Request
			switch i % 4 {
			case 0:
				req = mustReq(t, "GET", srv.URL, nil)
			case 1:
				req = mustReq(t, "POST", srv.URL, strings.NewReader(strings.Repeat("y", i*100)))
			case 2:
				req = mustReq(t, "POST", srv.URL, io.NopCloser(strings.NewReader("chunked")))
			case 3:
				req = mustReq(t, "HEAD", srv.URL, nil)
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			if i%8 == 7 {
				resp.Body.Close() // early
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
}

// TestCloseDuringRead: closing the body while a Read is blocked in another
// goroutine ends the Read and closes the connection.
func TestCloseDuringRead(t *testing.T) {
	srv := newRawServer(t, func(_ int, c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
		io.Copy(io.Discard, br) // until the client closes
	})
	tr := newTransport(t)
	rel := watchReleases(tr)
	resp, err := tr.RoundTrip(mustReq(t, "GET", srv.url, nil))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error)
	go func() {
		_, err := resp.Body.Read(buf) // blocks: nothing more comes
		readErr <- err
	}()
	resp.Body.Close()
	if err := <-readErr; err == nil {
		t.Error("Read after Close succeeded")
	}
	if rel.next(t) {
		t.Error("connection pooled")
	}
	srv.waitEnded(t, 1)
	if _, err := resp.Body.Read(buf); err == nil {
		t.Error("Read on a closed body succeeded")
	}
}

// brokenBody yields some bytes, then fails as a client's broken body does.
type brokenBody struct{ sent bool }

var errBroken = errors.New("malformed chunked encoding")

func (b *brokenBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "some"), nil
	}
	return 0, errBroken
}

// TestRequestBodyErrorTagged: a request that fails because its body could
// not be read says so with ErrRequestBody, on the fast path and through
// Fallback alike, and still reaches the body's own error.
func TestRequestBodyErrorTagged(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	plain := httptest.NewServer(handler)
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(handler)
	defer tlsSrv.Close()
	tr := newTransport(t)
	tr.Fallback = tlsSrv.Client().Transport
	for _, url := range []string{plain.URL, tlsSrv.URL} {
		req := mustReq(t, "PUT", url, &brokenBody{})
		req.ContentLength = -1
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: the request succeeded, want it failed by its body", url)
		}
		if !errors.Is(err, ErrRequestBody) || !errors.Is(err, errBroken) {
			t.Errorf("%s: error %v does not wrap ErrRequestBody and the body's error", url, err)
		}
	}
}
