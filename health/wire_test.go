package health_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golb/caddy-lb/health"
)

// rawServer answers each request on a connection with the next of its
// replies (the last one over and over), raw, and counts connections. It
// closes the connection after a reply that says Connection: close, or one
// listed in closeIdx.
type rawServer struct {
	ln       net.Listener
	replies  []string
	closeIdx map[int]bool // close the connection after this reply
	conns    atomic.Int64
	next     atomic.Int64
	wg       sync.WaitGroup
}

func newRawServer(t *testing.T, replies ...string) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, replies: replies, closeIdx: map[int]bool{}}
	var mu sync.Mutex
	var open []net.Conn
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					i := int(s.next.Add(1) - 1)
					reply := s.replies[min(i, len(s.replies)-1)]
					if _, err := io.WriteString(c, reply); err != nil || s.closeIdx[i] || strings.Contains(reply, "Connection: close") {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) url() string { return "http://" + s.ln.Addr().String() + "/health" }

// TestProbeAnswers: what the probe's own parser makes of answers a health
// endpoint may give, and whether the connection is kept for the next probe.
func TestProbeAnswers(t *testing.T) {
	big := strings.Repeat("x", 70<<10)
	tests := []struct {
		name     string
		reply    string
		body     string // Spec.Body, if any
		method   string
		wantErr  string
		wantKept bool // the second probe reuses the connection
	}{
		{name: "200 with a length", reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", wantKept: true},
		{name: "no reason phrase", reply: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", wantKept: true},
		{name: "bare line feeds", reply: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", wantKept: true},
		{name: "chunked, with trailers, matched", reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{\"s\r\n8\r\n\":\"up\"}\r\n0\r\nX-T: 1\r\n\r\n",
			body: `"s":"up"`, wantKept: true},
		{name: "chunked, mismatch", reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndown\r\n0\r\n\r\n", body: "^up", wantErr: `body does not match "^up"`, wantKept: true},
		{name: "interim responses first", reply: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", wantKept: true},
		{name: "HEAD with a length", method: http.MethodHead, reply: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", wantKept: true},
		{name: "304 with a length", reply: "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", wantErr: "status 304", wantKept: true},
		{name: "Connection: close", reply: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{name: "HTTP/1.0 without keep-alive", reply: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{name: "HTTP/1.0 with keep-alive", reply: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", wantKept: true},
		{name: "body until the connection ends", reply: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nready", body: "^ready$"},
		{name: "body over 64 KiB: not kept", reply: "HTTP/1.1 200 OK\r\nContent-Length: 71680\r\n\r\n" + big},
		{name: "chunked over 64 KiB, matched early", reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11800\r\nup" + big[2:] + "\r\n0\r\n\r\n", body: "^up"},
		{name: "duplicate equal lengths", reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", wantKept: true},
		{name: "conflicting lengths", reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", wantErr: "bad Content-Length"},
		{name: "shorter than its length", reply: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nok", wantErr: "reading the body: unexpected EOF"},
		{name: "a failing status is reported before a broken body", reply: "HTTP/1.1 503 Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nok", wantErr: "status 503"},
		{name: "malformed status line", reply: "HTTP/1.1 2OO OK\r\n\r\n", wantErr: "malformed status line"},
		{name: "not HTTP", reply: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: "malformed status line"},
		{name: "head line too long", reply: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 9<<10) + "\r\n\r\n", wantErr: "response head too large"},
		{name: "unknown transfer coding", reply: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", wantErr: "unsupported Transfer-Encoding"},
		{name: "switching protocols", reply: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", wantErr: "status 101"},
		{name: "garbage after the answer: not kept", reply: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRawServer(t, tt.reply)
			s := spec(func(s *health.Spec) {
				s.Method = tt.method
				if tt.body != "" {
					s.Body = regexp.MustCompile(tt.body)
				}
			})
			p, err := health.NewProber(srv.url(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			for i := range 2 {
				checkErr(t, p.Probe(context.Background(), s), tt.wantErr)
				if i == 0 && t.Failed() {
					return
				}
			}
			want := int64(2)
			if tt.wantKept {
				want = 1
			}
			if n := srv.conns.Load(); n != want {
				t.Errorf("2 probes took %d connections, want %d", n, want)
			}
		})
	}
}

// TestProberReconnects: a kept-alive connection the instance closed while
// idle is replaced, and the probe passes; a probe cut short by its context
// says so.
func TestProberReconnects(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	srv := newRawServer(t, ok, ok, ok)
	srv.closeIdx[0] = true // the instance closes the first connection after its answer
	p, err := health.NewProber(srv.url(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 3 {
		if err := p.Probe(context.Background(), spec(nil)); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
	if n := srv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2: one closed by the instance, one kept", n)
	}

	arrived := make(chan struct{}, 1)
	blocked := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	bp, err := health.NewProber(blocked.URL, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bp.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bp.Probe(ctx, spec(func(s *health.Spec) { s.Timeout = time.Hour })) }()
	<-arrived
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("a probe cut short by its context = %v, want context.Canceled", err)
	}
}
