package caddylb_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// diffCase is a request a client sends raw, and the response a backend
// sends raw to it.
type diffCase struct {
	name     string
	request  string // raw, with {host} for the Host header
	response string // raw
}

// diffCases are the corpus of TestDifferential: tricky headers and
// framings, 1xx, upgrades, trailers, HEAD, 204/304, bodies.
var diffCases = []diffCase{
	{"plain GET", "GET /a/b?x=1&y=%zz HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"no User-Agent", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"hop-by-hop request headers", "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, X-Private\r\nX-Private: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\nX-Public: p\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"hop-by-hop response headers", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-End: 2\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"duplicate headers", "GET / HTTP/1.1\r\nHost: {host}\r\nX-Dup: a\r\nX-Dup: b\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Dup: x\r\nX-Dup: y\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"chunked response", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"},
	{"declared trailers", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n"},
	{"undeclared trailers", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Late: 1\r\n\r\n"},
	{"request body and trailers", "POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Req\r\n\r\n4\r\ndata\r\n0\r\nX-Req: r\r\n\r\n",
		"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"},
	{"request body with a length", "PUT /up HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"HTTP/1.1 204 No Content\r\n\r\n"},
	{"HEAD", "HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"},
	{"304", "GET / HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: \"x\"\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
	{"large body", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n" + strings.Repeat("z", 200000)},
	{"empty body, no length", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"},
	{"no Content-Type, with a length", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>"},
	{"no Content-Type, chunked", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n<html>\r\n0\r\n\r\n"},
	{"103 Early Hints", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"Via both ways", "GET / HTTP/1.1\r\nHost: {host}\r\nVia: 1.1 edge\r\n\r\n",
		"HTTP/1.1 200 OK\r\nVia: 1.0 inner\r\nServer: backend\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"forwarded headers from the client", "GET / HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"no Accept-Encoding", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"Accept-Encoding gzip", "GET / HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz"},
	{"upgrade", "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Up: 1\r\n\r\n"},
	{"HTTP/1.0 client", "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"204", "DELETE /x HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nX-Gone: 1\r\n\r\n"},
	{"invalid response header name", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok"},
	{"control character in a response header", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 2\r\n\r\nok"},
	{"Content-Length and chunked both", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
	{"obsolete line folding in a request", "GET / HTTP/1.1\r\nHost: {host}\r\nX-Fold: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"Expect: 100-continue", "POST / HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
	{"status 500 passed on", "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
		"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\noops"},
}

// differences are the ways load_balancer and reverse_proxy differ on
// purpose, each with its reason: a line (of what the backend or the client
// got) that only one of them gives, keyed by "case|party|who|line", where
// case "*" stands for every case. TestDifferential fails on a listed
// difference no case shows, so the list cannot go stale.
var differences = map[string]string{
	// reverse_proxy's transport asks for gzip when the client did not (and
	// unzips the answer); load_balancer passes encodings through untouched.
	"*|backend|rp|Accept-Encoding: gzip": "reverse_proxy adds Accept-Encoding: gzip",
	// Each proxy appends its Via after those already there (RFC 9110,
	// 7.6.3); reverse_proxy puts its own first in responses.
	"Via both ways|client|lb|Via: 1.0 inner, 1.1 Caddy": "Via in order",
	"Via both ways|client|rp|Via: 1.1 Caddy, 1.0 inner": "reverse_proxy puts its Via first",
	// The client's own Forwarded header: reverse_proxy passes it on
	// unchecked, load_balancer drops it (as it replaces X-Forwarded-* from
	// an untrusted client).
	"forwarded headers from the client|backend|rp|Forwarded: for=6.6.6.6": "reverse_proxy passes Forwarded unchecked",
	// An interim response carries the backend's headers only: Caddy's
	// Server header belongs to the final one.
	"*|client|rp|interim Server: Caddy": "reverse_proxy's 1xx carry the final response's headers so far",
	// A response without Content-Type: net/http sniffs one for
	// reverse_proxy (when the body is not flushed at once);
	// load_balancer adds none, so that unlabelled content cannot become
	// HTML in a browser.
	"no Content-Type, with a length|client|rp|Content-Type: text/html; charset=utf-8": "reverse_proxy sniffs a Content-Type",
	"invalid response header name|client|rp|Content-Type: text/plain; charset=utf-8":  "reverse_proxy sniffs a Content-Type",
	// A 101 is the backend's answer, passed on with a Via like any other.
	"upgrade|client|lb|Via: 1.1 Caddy": "load_balancer adds Via to a 101 too",
	"upgrade|client|rp|Server: Caddy":  "reverse_proxy's 101 carries Caddy's Server header",
}

// rawExchange is what one party got: the normalized lines of the request
// or response head, then the body and trailers.
type rawExchange struct {
	lines []string
	body  string
}

// normalizeHead turns a request or response head into sorted lines, one
// per header name ("Name: v1, v2" in received order), without the headers
// that vary by run or by framing: Date, Content-Length and
// Transfer-Encoding (bodies are compared apart).
func normalizeHead(first string, h http.Header) []string {
	lines := []string{first}
	for k, vs := range h {
		switch k {
		case "Date", "Content-Length", "Transfer-Encoding":
			continue
		}
		lines = append(lines, k+": "+strings.Join(vs, ", "))
	}
	slices.Sort(lines[1:])
	return lines
}

// diffBackend serves each connection once: it records what the request
// was, and answers resp raw.
type diffBackend struct {
	ln   net.Listener
	resp string
	mu   sync.Mutex
	got  []rawExchange
	done sync.WaitGroup
}

func newDiffBackend(t *testing.T, resp string) *diffBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &diffBackend{ln: ln, resp: resp}
	b.done.Add(1)
	go func() {
		defer b.done.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.done.Add(1)
			go func() {
				defer b.done.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if r.Header.Get("Expect") == "100-continue" {
					_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
				}
				body, _ := io.ReadAll(r.Body)
				ex := rawExchange{lines: normalizeHead(r.Method+" "+r.RequestURI+" "+r.Proto, r.Header), body: string(body)}
				for k, vs := range r.Trailer {
					ex.lines = append(ex.lines, "trailer "+k+": "+strings.Join(vs, ", "))
				}
				b.mu.Lock()
				b.got = append(b.got, ex)
				b.mu.Unlock()
				_, _ = io.WriteString(c, b.resp)
				if strings.HasPrefix(b.resp, "HTTP/1.1 101") {
					_, _ = io.Copy(c, br) // echo what comes after the switch
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.done.Wait() })
	return b
}

func (b *diffBackend) url() string { return "http://" + b.ln.Addr().String() }

// last returns what the backend got last.
func (b *diffBackend) last(t *testing.T) rawExchange {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.got) == 0 {
		t.Fatal("the backend got no request")
	}
	return b.got[len(b.got)-1]
}

// clientExchange sends raw to port and returns what the client got: every
// response (1xx included), normalized, and the final body with trailers.
func clientExchange(t *testing.T, port int, host, raw string) rawExchange {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	raw = strings.ReplaceAll(raw, "{host}", host)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	var ex rawExchange
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("reading the response: %v", err)
		}
		lines := normalizeHead(resp.Proto+" "+resp.Status, resp.Header)
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			for i := range lines {
				lines[i] = "interim " + lines[i]
			}
		}
		ex.lines = append(ex.lines, lines...)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			io.WriteString(c, "ping\n")
			line, _ := br.ReadString('\n')
			ex.body = line
			return ex
		}
		if resp.StatusCode >= 200 {
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading the body: %v", err)
			}
			ex.body = string(body)
			for k, vs := range resp.Trailer {
				ex.lines = append(ex.lines, "trailer "+k+": "+strings.Join(vs, ", "))
			}
			return ex
		}
	}
}

// TestDifferential sends each case of a corpus through load_balancer and
// through Caddy's reverse_proxy, in one Caddy, and compares what the
// backend and the client got: they must be the same but for the
// differences listed, each with its reason.
func TestDifferential(t *testing.T) {
	s := newSite(t)
	rpPort := freePort()
	backends := make([][2]*diffBackend, len(diffCases))
	var cfg strings.Builder
	for i, c := range diffCases {
		backends[i] = [2]*diffBackend{newDiffBackend(t, c.response), newDiffBackend(t, c.response)}
		fmt.Fprintf(&cfg, `
http://c%[1]d.diff.test:{port} {
	load_balancer %[2]s {
		retries 0
	}
}
http://c%[1]d.diff.test:%[3]d {
	reverse_proxy %[4]s
}`, i, backends[i][0].url(), rpPort, backends[i][1].url())
	}
	s.load(cfg.String())

	seen := map[string]bool{}
	for i, c := range diffCases {
		t.Run(c.name, func(t *testing.T) {
			host := fmt.Sprintf("c%d.diff.test", i)
			lbClient := clientExchange(t, s.port, host, c.request)
			rpClient := clientExchange(t, rpPort, host, c.request)
			lbBackend := backends[i][0].last(t)
			rpBackend := backends[i][1].last(t)
			compare(t, c.name, "backend", lbBackend, rpBackend, seen)
			compare(t, c.name, "client", lbClient, rpClient, seen)
		})
	}
	for key, reason := range differences {
		if !seen[key] {
			t.Errorf("no case shows the difference %q (%s)", key, reason)
		}
	}
}

// compare reports the lines only one of lb and rp has, but the listed
// differences, and different bodies.
func compare(t *testing.T, name, party string, lb, rp rawExchange, seen map[string]bool) {
	t.Helper()
	only := func(a, b []string, who string) {
		for _, l := range a {
			if !slices.Contains(b, l) {
				key, wild := name+"|"+party+"|"+who+"|"+l, "*|"+party+"|"+who+"|"+l
				switch {
				case differences[key] != "":
					seen[key] = true
				case differences[wild] != "":
					seen[wild] = true
				default:
					t.Errorf("the %s got %q through %s only", party, l, map[string]string{"lb": "load_balancer", "rp": "reverse_proxy"}[who])
				}
			}
		}
	}
	only(lb.lines, rp.lines, "lb")
	only(rp.lines, lb.lines, "rp")
	if lb.body != rp.body {
		t.Errorf("the %s got a body of %d bytes through load_balancer, %d through reverse_proxy", party, len(lb.body), len(rp.body))
	}
}
