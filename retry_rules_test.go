package caddylb_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// failure is how the first instance of TestRetryRules fails a request.
type failure string

const (
	refused    failure = "refused"     // nothing listens: the request is never sent
	hangs      failure = "hangs"       // it reads the whole request, then never answers
	resetsRead failure = "resets-read" // it reads the whole request, then resets the connection
	resetsHead failure = "resets-head" // it reads the headers, then resets before any byte of an answer
)

// countingBackends counts the requests each path gets, on raw backends
// that fail as told, and on a good one.
type countingBackends struct {
	mu     sync.Mutex
	counts map[string]int // by backend name and path
}

func (cb *countingBackends) count(name, path string) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	cb.counts[name+" "+path]++
}

func (cb *countingBackends) get(name, path string) int {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	return cb.counts[name+" "+path]
}

// failingBackend serves each connection by failing its one request as f
// says, counting it under name once its headers are read.
func (cb *countingBackends) failingBackend(t *testing.T, f failure) string {
	if f == refused {
		return closedURL()
	}
	return rawBackend(t, func(c net.Conn, br *bufio.Reader, r *http.Request) {
		cb.count(string(f), r.URL.Path)
		if f != resetsHead {
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				return
			}
		}
		if f == hangs {
			// Until the load balancer gives up on it.
			_, _ = br.ReadByte()
			return
		}
		_ = c.(*net.TCPConn).SetLinger(0)
	})
}

// TestRetryRules: which failed requests are sent to another instance, by
// method, body and failure, through a real Caddy: the status the client
// gets, and exactly how many requests each backend received.
//
// The rules (README, Retries): a request never sent (a refused
// connection) is retried whatever its method, body intact; one sent is
// retried only if it is idempotent (GET, HEAD, PUT, DELETE, OPTIONS,
// TRACE, or any method with an Idempotency-Key) and its body can be sent
// again (none, or read whole and at most 64 KiB).
func TestRetryRules(t *testing.T) {
	cb := &countingBackends{counts: map[string]int{}}
	good := newBackend(t, "good")
	good.handle(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		cb.count("good", r.URL.Path)
		fmt.Fprintf(w, "%d", n)
	})
	failures := []failure{refused, hangs, resetsRead, resetsHead}
	var apps strings.Builder
	for _, f := range failures {
		fmt.Fprintf(&apps, `
		app %s.test {
			strategy first
			max_fails 0
			timeout 300ms
			retry_budget_percent 100
			instances %s %s
		}`, f, cb.failingBackend(t, f), good.URL)
	}
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {%s
	}
}`, apps.String()))

	type method struct {
		name       string
		header     string // an extra header
		idempotent bool
	}
	methods := []method{
		{"GET", "", true}, {"HEAD", "", true}, {"PUT", "", true}, {"DELETE", "", true}, {"OPTIONS", "", true},
		{"POST", "", false}, {"PATCH", "", false}, {"POST", "Idempotency-Key", true},
	}
	bodies := []struct {
		name string
		size int
	}{{"none", 0}, {"1KiB", 1 << 10}, {"100KiB", 100 << 10}}

	var wg sync.WaitGroup
	for _, f := range failures {
		for _, m := range methods {
			for _, body := range bodies {
				name := fmt.Sprintf("%s/%s%s/%s", f, m.name, strings.ToLower(strings.TrimSuffix(m.header, "-Key")), body.name)
				path := "/" + strings.ReplaceAll(name, "/", "-")
				// The outcome the rules give. (With resets-head, a body is
				// read whole before the reset only if it leaves with the
				// headers: the 1 KiB one does, in one write.)
				sent := f != refused
				replayable := body.size <= 64<<10
				retried := !sent || (m.idempotent && replayable)
				want, wantGood := http.StatusOK, 1
				if !retried {
					wantGood = 0
					want = http.StatusBadGateway
					if f == hangs {
						want = http.StatusGatewayTimeout
					}
				}
				wantFirst := 1
				if f == refused {
					wantFirst = 0
				}
				wg.Go(func() {
					// Subtests run one after the other, but their requests at
					// once: a hanging instance costs its timeout only once.
					status, got, err := send(s, string(f)+".test", m.name, m.header, path, body.size)
					t.Run(name, func(t *testing.T) {
						if err != nil {
							t.Fatal(err)
						}
						if status != want {
							t.Errorf("status %d, want %d", status, want)
						}
						if status == http.StatusOK && m.name != "HEAD" && got != fmt.Sprint(body.size) {
							t.Errorf("the good instance got a body of %s bytes, want %d", got, body.size)
						}
						if n := cb.get(string(f), path); f != refused && n != wantFirst {
							t.Errorf("the failing instance got %d requests, want %d", n, wantFirst)
						}
						if n := cb.get("good", path); n != wantGood {
							t.Errorf("the good instance got %d requests, want %d", n, wantGood)
						}
					})
				})
			}
		}
	}
	wg.Wait()
}

// send sends one request with a body of size bytes (none if 0) and an
// extra header, and returns the status and the body of the answer.
func send(s *site, host, method, header, path string, size int) (int, string, error) {
	var body io.Reader
	if size > 0 {
		body = bytes.NewReader(bytes.Repeat([]byte("x"), size))
	}
	req, err := http.NewRequest(method, s.url(path), body)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	if header != "" {
		req.Header.Set(header, "key-"+path)
	}
	c := &http.Client{Transport: client.Transport, Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(got), err
}
