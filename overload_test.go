package caddylb_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cappedBackend is a backend that serves at most limit requests at once:
// one more is answered 500 "over capacity" and counted. Each request
// waits on the gate, if there is one, else does a little work.
type cappedBackend struct {
	*backend
	sem      chan struct{}
	inFlight atomic.Int64
	peak     atomic.Int64 // the most requests it served at once
	over     atomic.Int64 // requests it refused for its cap
	gate     *gate        // if set, requests wait for it to open
}

func newCappedBackend(t *testing.T, name string, limit int, g *gate) *cappedBackend {
	b := &cappedBackend{backend: newBackend(t, name), sem: make(chan struct{}, limit), gate: g}
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		select {
		case b.sem <- struct{}{}:
		default:
			b.over.Add(1)
			http.Error(w, "over capacity", http.StatusInternalServerError)
			return
		}
		n := b.inFlight.Add(1)
		for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
		}
		if b.gate != nil {
			_ = b.gate.wait(r.Context())
		} else {
			time.Sleep(time.Millisecond) // the work of a request
		}
		b.inFlight.Add(-1)
		<-b.sem
		_, _ = io.WriteString(w, name)
	})
	return b
}

// queued returns the report's count of requests queued for host's app
// (-1 if the report has none).
func queued(t testing.TB, host string) int {
	t.Helper()
	app := appOf(t, fetchReport(t), host)
	if app.Queued == nil {
		return -1
	}
	return *app.Queued
}

// TestOverloadLimits: a backend that serves at most 4 requests at once
// (it fails a 5th) behind max_requests 4, under 64 concurrent clients.
// With a queue every request is served; without one the excess is turned
// away with 503 and Retry-After. The backend never sees more than 4.
func TestOverloadLimits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		queue   string
		wantAll bool // every request served
	}{
		{"queue", "max_queue 200\n\t\t\tqueue_timeout 5s", true},
		{"no queue", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newCappedBackend(t, "capped", 4, nil)
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app limits.test {
			max_requests 4
			%s
			instances %s
		}
	}
}`, tc.queue, b.URL))

			const workers, each = 64, 10
			var ok, rejected atomic.Int64
			var mu sync.Mutex
			var failures []string
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range each {
						status, retryAfter, body, err := getRetryAfter(s, "limits.test")
						switch {
						case err == nil && status == http.StatusOK:
							ok.Add(1)
						case err == nil && status == http.StatusServiceUnavailable && retryAfter == "1":
							rejected.Add(1)
						default:
							mu.Lock()
							failures = append(failures, fmt.Sprintf("%d (Retry-After %q) %q %v", status, retryAfter, body, err))
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()

			if len(failures) > 0 {
				t.Errorf("%d requests failed otherwise than with 503 and Retry-After: 1, the first: %s", len(failures), failures[0])
			}
			if peak := b.peak.Load(); peak > 4 {
				t.Errorf("the backend served %d requests at once, want at most 4", peak)
			}
			if over := b.over.Load(); over > 0 {
				t.Errorf("the backend refused %d requests for its cap", over)
			}
			app := appOf(t, fetchReport(t), "limits.test")
			if app.Rejected == nil || app.Queued == nil {
				t.Fatalf("report of an app with max_requests has no queued or rejected: %+v", app)
			}
			if got := int64(*app.Rejected); got != rejected.Load() {
				t.Errorf("report: rejected %d, clients got %d such 503s", got, rejected.Load())
			}
			if *app.Queued != 0 {
				t.Errorf("report: queued %d after the load, want 0", *app.Queued)
			}
			if got := app.Instances[0].MaxRequests; got != 4 {
				t.Errorf("report: max_requests %d, want 4", got)
			}
			m := scrape(t)
			if got := value(t, m, "caddy_load_balancer_rejected_total", "app", "limits.test"); got != float64(rejected.Load()) {
				t.Errorf("rejected_total = %v, want %d", got, rejected.Load())
			}
			waits := value(t, m, "caddy_load_balancer_queue_wait_seconds_count", "app", "limits.test")
			if tc.wantAll {
				if got := ok.Load(); got != workers*each {
					t.Errorf("%d of %d requests served, want all", got, workers*each)
				}
				if waits <= 0 {
					t.Errorf("queue_wait_seconds_count = %v: no request waited in the queue, the test did not overload", waits)
				}
			} else {
				if rejected.Load() == 0 {
					t.Errorf("no request was turned away: the test did not overload")
				}
				if waits != 0 {
					t.Errorf("queue_wait_seconds_count = %v without a queue, want 0", waits)
				}
			}
			if got := value(t, m, "caddy_load_balancer_queue_length", "app", "limits.test"); got != 0 {
				t.Errorf("queue_length = %v after the load, want 0", got)
			}
		})
	}
}

// getRetryAfter sends a GET for / with Host host, and returns the status,
// the Retry-After header and the body.
func getRetryAfter(s *site, host string) (status int, retryAfter, body string, err error) {
	req, err := http.NewRequest(http.MethodGet, s.url("/"), nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b), err
}

// TestOverloadRejectsAtOnce: without a queue, a request that finds every
// instance at max_requests is turned away while those in flight still are
// (it does not wait for a slot), logged once for the burst.
func TestOverloadRejectsAtOnce(t *testing.T) {
	g := newGate()
	defer g.open()
	b := newCappedBackend(t, "held", 2, g)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app atonce.test {
			max_requests 2
			instances %s
		}
	}
}`, b.URL))
	held := []<-chan answer{s.getAsync("atonce.test", "/"), s.getAsync("atonce.test", "/")}
	waitFor(t, "2 requests in flight at the backend", func() bool { return b.inFlight.Load() == 2 })

	const excess = 5
	for range excess {
		status, retryAfter, body, err := getRetryAfter(s, "atonce.test")
		if err != nil || status != http.StatusServiceUnavailable || retryAfter != "1" {
			t.Fatalf("a request over the limit: %d, Retry-After %q, %q, %v; want 503 with Retry-After: 1", status, retryAfter, body, err)
		}
		if !strings.Contains(body, `app "atonce.test"`) || !strings.Contains(body, "max_requests") {
			t.Errorf("a rejection's body: %q; want the app and max_requests named", body)
		}
	}
	if n := b.inFlight.Load(); n != 2 {
		t.Fatalf("%d requests at the backend, want the 2 held ones", n)
	}
	g.open()
	for i, ch := range held {
		if a := recv(t, ch, "a held request"); a.err != nil || a.status != http.StatusOK {
			t.Errorf("held request %d: %d %q %v, want 200", i, a.status, a.body, a.err)
		}
	}
	if got := *appOf(t, fetchReport(t), "atonce.test").Rejected; got != excess {
		t.Errorf("report: rejected %d, want %d", got, excess)
	}
	if errs := logLines(t, s, func(l map[string]any) bool { return l["level"] == "error" }); len(errs) > 0 {
		t.Errorf("%d error log lines, want none (a line per rejection is what the rate-limited warning avoids): %v", len(errs), errs[0])
	}
	lines := logLines(t, s, func(l map[string]any) bool { return l["msg"] == "requests rejected: overloaded" })
	if len(lines) == 0 || len(lines) >= excess {
		t.Fatalf("%d log lines for %d rejections, want one a second at most (and one at least)", len(lines), excess)
	}
	if app, reason := lines[0]["app"], fmt.Sprint(lines[0]["reason"]); app != "atonce.test" || !strings.Contains(reason, "max_requests") {
		t.Errorf("log line: app %v, reason %q; want the app, and max_requests named", app, reason)
	}
}

// TestQueueTimeout: queued requests for a backend that hangs get 503 with
// Retry-After when queue_timeout runs out; a client that goes away leaves
// the queue at once.
func TestQueueTimeout(t *testing.T) {
	g := newGate()
	defer g.open()
	b := newCappedBackend(t, "hangs", 1, g)
	s := newSite(t)
	const timeout = 300 * time.Millisecond
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app timeout.test {
			max_requests 1
			max_queue 10
			queue_timeout %s
			instances %s
		}
	}
}`, timeout, b.URL))
	held := s.getAsync("timeout.test", "/")
	waitFor(t, "a request in flight at the backend", func() bool { return b.inFlight.Load() == 1 })

	// A client that goes away while queued.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/"), nil)
		req.Host = "timeout.test"
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		gone <- err
	}()
	waitFor(t, "a request queued", func() bool { return queued(t, "timeout.test") == 1 })
	cancel()
	if err := recv(t, gone, "the cancelled request"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	waitFor(t, "the queue empty", func() bool { return queued(t, "timeout.test") == 0 })

	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			start := time.Now()
			status, retryAfter, body, err := getRetryAfter(s, "timeout.test")
			if err != nil || status != http.StatusServiceUnavailable || retryAfter != "1" {
				t.Errorf("queued request %d: %d, Retry-After %q, %q, %v; want 503 with Retry-After: 1", i, status, retryAfter, body, err)
			}
			if waited := time.Since(start); waited < timeout {
				t.Errorf("queued request %d: 503 after %v, before queue_timeout %v", i, waited, timeout)
			}
		})
	}
	wg.Wait()
	select {
	case a := <-held:
		t.Fatalf("the held request ended while its backend hangs: %+v", a)
	default:
	}
	g.open()
	if a := recv(t, held, "the held request"); a.err != nil || a.status != http.StatusOK {
		t.Errorf("held request: %d %q %v, want 200", a.status, a.body, a.err)
	}
	if got := *appOf(t, fetchReport(t), "timeout.test").Rejected; got != 3 {
		t.Errorf("report: rejected %d, want the 3 that timed out (not the one that left)", got)
	}
}

// TestQueueFIFO: requests that queue one after the other are sent to the
// instance in the order they arrived, and a request that arrives while
// others wait queues behind them even when it comes just as a slot frees.
func TestQueueFIFO(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	started := make(chan string, 16)
	b := newBackend(t, "fifo")
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
		started <- id
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, id)
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app fifo.test {
			max_requests 1
			max_queue 10
			queue_timeout 30s
			instances %s
		}
	}
}`, b.URL))
	const n = 6
	answers := make([]<-chan answer, n)
	answers[0] = s.getAsync("fifo.test", "/?id=0")
	if id := recv(t, started, "request 0 at the backend"); id != "0" {
		t.Fatalf("request %s at the backend first, want 0", id)
	}
	for i := 1; i < n; i++ {
		answers[i] = s.getAsync("fifo.test", fmt.Sprintf("/?id=%d", i))
		waitFor(t, fmt.Sprintf("request %d queued", i), func() bool { return queued(t, "fifo.test") == i })
	}
	for i := range n {
		if i > 0 {
			if id := recv(t, started, fmt.Sprintf("request %d at the backend", i)); id != fmt.Sprint(i) {
				t.Fatalf("request %s at the backend after %d, want %d", id, i-1, i)
			}
		}
		release <- struct{}{}
		if a := recv(t, answers[i], fmt.Sprintf("answer %d", i)); a.err != nil || a.status != http.StatusOK || a.body != fmt.Sprint(i) {
			t.Fatalf("request %d: %d %q %v", i, a.status, a.body, a.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order, ","); got != "0,1,2,3,4,5" {
		t.Errorf("the backend got the requests in the order %s, want 0,1,2,3,4,5", got)
	}
}

// TestRetryStatus: with retry_status 503, an idempotent request that one
// instance answers 503 goes to the other, and the client never sees the
// 503; a POST gets the 503 as the instance sent it; when no instance is
// left to try, the last response goes to the client as sent (not a 502).
func TestRetryStatus(t *testing.T) {
	unavailable := func(b *backend) {
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", b.name)
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, b.name+" is busy")
		})
	}
	busy := newBackend(t, "busy")
	unavailable(busy)
	good := newBackend(t, "good")
	busyA, busyB := newBackend(t, "busy-a"), newBackend(t, "busy-b")
	unavailable(busyA)
	unavailable(busyB)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app one.test {
			retry_status 503
			retry_budget_percent 100
			instances %s %s
		}
		app none.test {
			retry_status 5xx
			retries 1
			instances %s %s
		}
	}
}`, busy.URL, good.URL, busyA.URL, busyB.URL))

	const n = 20
	for i := range n {
		if status, body := s.get("one.test", "/"); status != http.StatusOK || body != "good" {
			t.Fatalf("GET %d: %d %q, want 200 from good", i, status, body)
		}
	}
	// POSTs with a body and without: neither is retried.
	posts503 := map[bool]int{}
	for i := range 2 * n {
		withBody := i < n
		var reqBody io.Reader
		if withBody {
			reqBody = strings.NewReader("x")
		}
		req, _ := http.NewRequest(http.MethodPost, s.url("/"), reqBody)
		req.Host = "one.test"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK && string(body) == "good":
		case resp.StatusCode == http.StatusServiceUnavailable && string(body) == "busy is busy" && resp.Header.Get("X-Backend") == "busy":
			posts503[withBody]++
		default:
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if posts503[true] == 0 || posts503[false] == 0 {
		t.Errorf("busy's 503 reached %d POSTs with a body and %d without, of %d each: POSTs were retried", posts503[true], posts503[false], n)
	}
	if got := busy.requests.Load(); got <= int64(posts503[true]+posts503[false]) {
		t.Errorf("busy got %d requests, only the POSTs it answered: the test retried nothing", got)
	}
	// Without unhealthy_status, a 503 does not count against the instance.
	rep := fetchReport(t)
	if in := instanceOf(t, rep, "one.test", busy.URL); in.State != "healthy" || in.ConsecutiveFailures != 0 {
		t.Errorf("busy: state %s, %d consecutive failures; want healthy, 0", in.State, in.ConsecutiveFailures)
	}

	for i := range 4 {
		status, body := s.get("none.test", "/")
		if status != http.StatusServiceUnavailable || !strings.HasSuffix(body, " is busy") {
			t.Fatalf("GET %d with every instance busy: %d %q, want the last 503 as sent", i, status, body)
		}
	}
	if got := busyA.requests.Load() + busyB.requests.Load(); got != 8 {
		t.Errorf("the busy instances got %d requests of none.test, want 8 (4, each tried on both)", got)
	}
}

// TestQueueAcrossReload: a reload keeps an instance's state, its requests
// in flight included, so a slot that a request of the old config frees
// must reach a request queued in the new one.
func TestQueueAcrossReload(t *testing.T) {
	g := newGate()
	defer g.open()
	b := newCappedBackend(t, "shared", 1, g)
	s := newSite(t)
	config := func(timeout string) string {
		return fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app reload.test {
			max_requests 1
			max_queue 10
			queue_timeout %s
			instances %s
		}
	}
}`, timeout, b.URL)
	}
	s.load(config("8s"))
	old := s.getAsync("reload.test", "/") // holds the one slot, in the old config
	waitFor(t, "a request in flight at the backend", func() bool { return b.inFlight.Load() == 1 })
	s.load(config("9s"))
	queuedNew := s.getAsync("reload.test", "/")
	waitFor(t, "a request queued in the new config", func() bool { return queued(t, "reload.test") == 1 })
	g.open() // and the queued one is served at once, once it gets the slot
	for _, ch := range []<-chan answer{old, queuedNew} {
		if a := recv(t, ch, "an answer"); a.err != nil || a.status != http.StatusOK {
			t.Errorf("%d %q %v, want 200", a.status, a.body, a.err)
		}
	}
}

// TestQueueNoBarging: a request that arrives while others wait queues
// behind them, even when a slot was just freed and the oldest waiter has
// not taken it yet. Through the app's own pick-or-wait, so that the
// moment between the slot freed and the waiter woken is the test's.
func TestQueueNoBarging(t *testing.T) {
	h := provisioned(t, `{"handler":"load_balancer","apps":[{"host":"nb.test","max_requests":1,"max_queue":10,"queue_timeout":"30s","instances":[{"url":"http://127.0.0.1:1"}]}]}`)
	app := h.Apps[0]
	request := func() *http.Request { return httptest.NewRequest(http.MethodGet, "http://nb.test/", nil) }
	first, err := app.Next(httptest.NewRecorder(), request())
	if err != nil || first == nil {
		t.Fatalf("the first request: %v, %v", first, err)
	}
	order := make(chan string, 2)
	take := func(name string) {
		in, err := app.Next(httptest.NewRecorder(), request())
		if err == nil && in != nil {
			order <- name
			app.Done(in)
			return
		}
		order <- fmt.Sprintf("%s: %v %v", name, in, err)
	}
	go take("waiter")
	waitFor(t, "the waiter queued", func() bool { return app.Queued() == 1 })
	for range 50 {
		// The slot frees, and a newcomer arrives before the waiter
		// (woken, not yet run) has taken it: it must queue too.
		app.Done(first)
		go take("newcomer")
		if got := recv(t, order, "the first to get the slot"); got != "waiter" {
			t.Fatalf("%q got the freed slot first, want the waiter", got)
		}
		if got := recv(t, order, "the second"); got != "newcomer" {
			t.Fatalf("then %q, want the newcomer", got)
		}
		if first, err = app.Next(httptest.NewRecorder(), request()); err != nil || first == nil {
			t.Fatalf("the slot again: %v %v", first, err)
		}
		go take("waiter")
		waitFor(t, "the waiter queued", func() bool { return app.Queued() == 1 })
	}
	app.Done(first)
	if got := recv(t, order, "the last waiter"); got != "waiter" {
		t.Fatalf("%q", got)
	}
}
