package caddylb_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	caddylb "github.com/golb/caddy-lb"
)

// TestStrategiesThroughCaddy runs each strategy with weights through a real
// Caddy and checks where requests go.
func TestStrategiesThroughCaddy(t *testing.T) {
	tests := []struct {
		name     string
		options  string // lines of the app block
		weights  []int  // per backend a, b, c, d; -1: no weight given
		requests int
		check    func(t *testing.T, seq string, counts map[string]int)
	}{
		{
			name: "round_robin: smooth weighted, weight 0 left out", options: "strategy round_robin",
			weights: []int{5, -1, 1, 0}, requests: 14,
			check: func(t *testing.T, seq string, _ map[string]int) {
				if want := "aabacaa" + "aabacaa"; seq != want {
					t.Errorf("sequence %s, want %s", seq, want)
				}
			},
		},
		{
			name: "least_connections: an idle pool follows the weights", options: "strategy least_connections",
			weights: []int{2, 1, 0, 1}, requests: 8,
			check: func(t *testing.T, seq string, _ map[string]int) {
				if want := "abdaabad"; seq != want { // a twice as often as b and d
					t.Errorf("sequence %s, want %s", seq, want)
				}
			},
		},
		{
			name: "first: failover order, weight 0 skipped", options: "strategy first",
			weights: []int{0, 3, 1, 1}, requests: 5,
			check: func(t *testing.T, seq string, _ map[string]int) {
				if seq != "bbbbb" {
					t.Errorf("sequence %s, want bbbbb", seq)
				}
			},
		},
		{
			name: "random: in proportion to the weights", options: "strategy random",
			weights: []int{3, 1, 0, -1}, requests: 500,
			check: func(t *testing.T, _ string, counts map[string]int) {
				checkShare(t, counts, 500, map[string]float64{"a": 0.6, "b": 0.2, "c": 0, "d": 0.2})
			},
		},
		{
			name: "p2c: an idle pool follows the weights", options: "strategy p2c",
			weights: []int{3, 1, 0, -1}, requests: 500,
			check: func(t *testing.T, _ string, counts map[string]int) {
				checkShare(t, counts, 500, map[string]float64{"a": 0.6, "b": 0.2, "c": 0, "d": 0.2})
			},
		},
		{
			name: "least_latency: every request answered, weight 0 left out", options: "strategy least_latency",
			weights: []int{1, 1, 0, 1}, requests: 60,
			check: func(t *testing.T, _ string, counts map[string]int) {
				if counts["c"] != 0 || counts["a"]+counts["b"]+counts["d"] != 60 {
					t.Errorf("counts %v, want 60 on a, b, d", counts)
				}
			},
		},
		{
			name: "hash: one key, one instance", options: "strategy hash\n\t\t\thash_key header:X-Missing",
			weights: []int{1, 1, 1, 1}, requests: 200,
			check: func(t *testing.T, _ string, counts map[string]int) {
				// Without the header: random, so spread.
				if len(counts) < 3 {
					t.Errorf("keyless requests went to %v, want spread", counts)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lines []string
			for i, w := range tt.weights {
				b := newBackend(t, string(rune('a'+i)))
				line := "instance " + b.URL
				if w >= 0 {
					line += fmt.Sprintf(" weight %d", w)
				}
				lines = append(lines, line)
			}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app w.test {
			%s
			%s
		}
	}
}`, tt.options, strings.Join(lines, "\n\t\t\t")))
			var seq strings.Builder
			counts := map[string]int{}
			for range tt.requests {
				status, body := s.get("w.test", "/")
				if status != 200 {
					t.Fatalf("got %d %q", status, body)
				}
				seq.WriteString(body)
				counts[body]++
			}
			tt.check(t, seq.String(), counts)
		})
	}
}

// checkShare fails unless each backend's count out of n is within 5
// standard deviations of its expected share.
func checkShare(t *testing.T, counts map[string]int, n int, want map[string]float64) {
	t.Helper()
	for name, p := range want {
		mean := float64(n) * p
		if tol := 5*math.Sqrt(mean*(1-p)) + 1; math.Abs(float64(counts[name])-mean) > tol {
			t.Errorf("%s: %d of %d, want %.0f ± %.0f (all: %v)", name, counts[name], n, mean, tol, counts)
		}
	}
}

// TestLeastLatencyShiftsAwayFromSlowBackend: one backend of three answers
// 10× slower; its share falls well below 1/3, and rises again once it is
// fast again. Shares are counted over bounded batches of requests.
func TestLeastLatencyShiftsAwayFromSlowBackend(t *testing.T) {
	const (
		n           = 3
		fast        = 5 * time.Millisecond
		slowLatency = 10 * fast
		batch       = 300
		clients     = 6
	)
	var backends []*backend
	var urls []string
	var slowDelay atomic.Int64
	slowDelay.Store(int64(slowLatency))
	for i := range n {
		b := newBackend(t, fmt.Sprintf("b%d", i))
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			d := fast
			if i == n-1 {
				d = time.Duration(slowDelay.Load())
			}
			time.Sleep(d) // the backend's latency, not synchronisation
			_, _ = io.WriteString(w, b.name)
		})
		backends = append(backends, b)
		urls = append(urls, b.URL)
	}
	slow := backends[n-1]
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app lat.test {
			strategy least_latency
			latency_decay 100ms
			instances %s
		}
	}
}`, strings.Join(urls, " ")))

	// runBatch sends count requests from several clients at once and
	// returns the share the slow backend served.
	runBatch := func(count int) float64 {
		t.Helper()
		before := slow.requests.Load()
		var left atomic.Int64
		left.Store(int64(count))
		errs := make(chan error, clients)
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
					req.Host = "lat.test"
					resp, err := client.Do(req)
					if err != nil {
						errs <- err
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						errs <- fmt.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return float64(slow.requests.Load()-before) / float64(count)
	}

	runBatch(60) // warm up: every backend gets measured
	// Even shares would give it 1/3 of every batch. A loaded machine
	// stretches the fast backends' latencies too, so allow a few batches.
	var share float64
	for i := range 3 {
		share = runBatch(batch)
		t.Logf("slow backend (%v vs %v), batch %d: share %.3f", slowLatency, fast, i, share)
		if share < 1.0/(2*n) {
			break
		}
	}
	if share >= 1.0/(2*n) {
		t.Fatalf("slow backend served %.1f%% of 3 batches in a row, want well below 1/%d", 100*share, n)
	}

	slowDelay.Store(int64(fast))
	// It wins its share back once tried again and found fast: within a
	// bounded number of batches.
	for i := range 10 {
		share = runBatch(batch)
		t.Logf("after it recovered, batch %d: share %.3f", i, share)
		if share >= 1.0/(2*n) {
			return
		}
	}
	t.Fatalf("recovered backend still serves %.1f%% after 10 batches, want about 1/%d", 100*share, n)
}

// keyedGet sends a request with X-Key: key through h and returns the
// backend that answered.
func keyedGet(t *testing.T, h *caddylb.Handler, key string, mod func(*http.Request)) (string, *httptest.ResponseRecorder) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "http://hash.test/", nil)
	r.Header.Set("X-Key", key)
	if mod != nil {
		mod(r)
	}
	// As Caddy's server does for every request.
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("key %s: %v", key, err)
	}
	return w.Body.String(), w
}

// TestHashAgreesAcrossHandlers: two handlers provisioned apart from the
// same config (two load balancers of a fleet) send every key to the same
// backend, and keys spread over all backends in proportion to weights.
func TestHashAgreesAcrossHandlers(t *testing.T) {
	var instances []string
	for i, w := range []int{1, 2, 1, 3} {
		b := newBackend(t, fmt.Sprintf("b%d", i))
		instances = append(instances, fmt.Sprintf(`{"url":%q,"weight":%d}`, b.URL, w))
	}
	cfg := fmt.Sprintf(`{"apps":[{"host":"hash.test","strategy":"hash","hash_key":"header:X-Key","instances":[%s]}]}`,
		strings.Join(instances, ","))
	h1, h2 := provisioned(t, cfg), provisioned(t, cfg)
	counts := map[string]int{}
	const keys = 700
	for k := range keys {
		key := fmt.Sprintf("tenant-%d", k)
		b1, _ := keyedGet(t, h1, key, nil)
		b2, _ := keyedGet(t, h2, key, nil)
		if b1 != b2 {
			t.Fatalf("key %s: %s on one handler, %s on the other", key, b1, b2)
		}
		counts[b1]++
	}
	checkShare(t, counts, keys, map[string]float64{"b0": 1. / 7, "b1": 2. / 7, "b2": 1. / 7, "b3": 3. / 7})
}

// TestHashFailoverThroughCaddy: keys of a backend that turns unhealthy go to
// their next backend by rank, the others stay, and all come back when it
// recovers.
func TestHashFailoverThroughCaddy(t *testing.T) {
	var backends []*backend
	var urls []string
	for i := range 4 {
		b := newBackend(t, fmt.Sprintf("b%d", i))
		backends = append(backends, b)
		urls = append(urls, b.URL)
	}
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app hash.test {
			strategy hash
			hash_key query:user
			health_uri /health
			health_check_cooldown 20ms
			instances %s
		}
	}
}`, strings.Join(urls, " ")))
	mapping := func() []string {
		out := make([]string, 200)
		for k := range out {
			status, body := s.get("hash.test", fmt.Sprintf("/?user=u%d", k))
			if status != 200 {
				t.Fatalf("got %d %q", status, body)
			}
			out[k] = body
		}
		return out
	}
	before := mapping()

	backends[1].health.Store(503)
	waitFor(t, "b1 unhealthy", func() bool { return !instanceOf(t, fetchReport(t), "hash.test", urls[1]).Healthy })
	during := mapping()
	moved := 0
	for k := range before {
		switch {
		case during[k] == "b1":
			t.Fatalf("key u%d still goes to the unhealthy b1", k)
		case before[k] != "b1" && during[k] != before[k]:
			t.Fatalf("key u%d moved from %s to %s, though %s is healthy", k, before[k], during[k], before[k])
		case before[k] == "b1":
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no key was on b1")
	}

	backends[1].health.Store(0)
	waitFor(t, "b1 healthy", func() bool { return instanceOf(t, fetchReport(t), "hash.test", urls[1]).Healthy })
	if after := mapping(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Error("keys did not all return to b1 when it recovered")
	}
}

// TestStickyCookie: the first answer pins the client with a cookie; the
// cookie is honoured while its instance is available, and replaced when
// it is not.
func TestStickyCookie(t *testing.T) {
	var backends []*backend
	var urls []string
	for i := range 3 {
		b := newBackend(t, fmt.Sprintf("b%d", i))
		backends = append(backends, b)
		urls = append(urls, b.URL)
	}
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app sticky.test {
			strategy round_robin
			sticky_cookie lb
			health_uri /health
			health_check_cooldown 20ms
			instances %s
		}
	}
}`, strings.Join(urls, " ")))

	get := func(cookie string) (body, setCookie string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
		req.Host = "sticky.test"
		if cookie != "" {
			req.Header.Set("Cookie", "other=1; lb="+cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d %q", resp.StatusCode, b)
		}
		return string(b), strings.Join(resp.Header.Values("Set-Cookie"), "\n")
	}
	valueOf := func(setCookie string) string {
		t.Helper()
		c, err := http.ParseSetCookie(setCookie)
		if err != nil || c.Name != "lb" {
			t.Fatalf("Set-Cookie %q: %v", setCookie, err)
		}
		if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure || c.Path != "/" || c.MaxAge != 0 {
			t.Errorf("Set-Cookie %q: want HttpOnly, SameSite=Lax, Path=/, not Secure over plain HTTP, no Max-Age", setCookie)
		}
		for _, u := range urls {
			if strings.Contains(c.Value, strings.TrimPrefix(u, "http://")) {
				t.Errorf("cookie value %q gives the instance away", c.Value)
			}
		}
		return c.Value
	}

	first, set := get("")
	cookie := valueOf(set)
	for range 6 { // round robin alone would rotate
		body, set := get(cookie)
		if body != first || set != "" {
			t.Fatalf("with the cookie: %s (Set-Cookie %q), want %s and no new cookie", body, set, first)
		}
	}
	// Cookies of each instance differ.
	seen := map[string]string{cookie: first}
	for range 6 {
		body, set := get("")
		v := valueOf(set)
		if prev, ok := seen[v]; ok && prev != body {
			t.Fatalf("cookie %s names both %s and %s", v, prev, body)
		}
		seen[v] = body
	}
	if len(seen) != 3 {
		t.Errorf("%d cookie values for 3 instances", len(seen))
	}
	// A forged or stale value is ignored and replaced.
	if _, set := get("bogus"); set == "" {
		t.Error("a bogus cookie was not replaced")
	}

	// The pinned instance goes down: the request goes elsewhere and the
	// cookie is replaced.
	var pinned *backend
	for _, b := range backends {
		if b.name == first {
			pinned = b
		}
	}
	pinned.health.Store(503)
	waitFor(t, first+" unhealthy", func() bool { return !instanceOf(t, fetchReport(t), "sticky.test", pinned.URL).Healthy })
	body, set := get(cookie)
	if body == first || set == "" {
		t.Fatalf("pinned instance down: %s (Set-Cookie %q), want another instance and a new cookie", body, set)
	}
	if again, set2 := get(valueOf(set)); again != body || set2 != "" {
		t.Fatalf("with the new cookie: %s (Set-Cookie %q), want %s", again, set2, body)
	}
	// Back up: the old cookie is honoured again.
	pinned.health.Store(0)
	waitFor(t, first+" healthy", func() bool { return instanceOf(t, fetchReport(t), "sticky.test", pinned.URL).Healthy })
	if body, _ := get(cookie); body != first {
		t.Errorf("old cookie after recovery: %s, want %s", body, first)
	}
}

// TestStickyCookieAcrossHandlers: load balancers with the same config set
// and honour the same cookie values; another secret gives other values.
// Over TLS the cookie is Secure.
func TestStickyCookieAcrossHandlers(t *testing.T) {
	var instances []string
	for i := range 3 {
		instances = append(instances, fmt.Sprintf(`{"url":%q}`, newBackend(t, fmt.Sprintf("b%d", i)).URL))
	}
	cfg := func(secret string) string {
		return fmt.Sprintf(`{"apps":[{"host":"hash.test","strategy":"random","sticky_cookie":"lb","sticky_cookie_secret":%q,"instances":[%s]}]}`,
			secret, strings.Join(instances, ","))
	}
	h1, h2, other := provisioned(t, cfg("s1")), provisioned(t, cfg("s1")), provisioned(t, cfg("s2"))
	tlsReq := func(r *http.Request) { r.TLS = &tls.ConnectionState{} }
	for range 10 {
		body, w := keyedGet(t, h1, "k", tlsReq)
		set := w.Header().Get("Set-Cookie")
		c, err := http.ParseSetCookie(set)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Secure || !c.HttpOnly {
			t.Errorf("over TLS: Set-Cookie %q, want Secure and HttpOnly", set)
		}
		withCookie := func(r *http.Request) { r.Header.Set("Cookie", "lb="+c.Value) }
		for range 3 {
			if got, w := keyedGet(t, h2, "k", withCookie); got != body || w.Header().Get("Set-Cookie") != "" {
				t.Fatalf("the other load balancer sent h1's %s cookie to %s (Set-Cookie %q)", body, got, w.Header().Get("Set-Cookie"))
			}
		}
		if _, w := keyedGet(t, other, "k", withCookie); w.Header().Get("Set-Cookie") == "" {
			t.Fatalf("a load balancer with another secret honoured the cookie %s", c.Value)
		}
	}
}

// TestLeastLatencyAvoidsBrokenInstance: a failed request counts as slow
// (at least the app's timeout), so an instance that refuses connections
// gets almost nothing even before any health check notices it.
func TestLeastLatencyAvoidsBrokenInstance(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	dead := closedURL()
	s := newSite(t)
	// Neither retries nor passive checks: they would hide the dead
	// instance; only its latency estimate keeps requests off it.
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app lat.test {
			strategy least_latency
			retries 0
			max_fails 0
			instances %s %s %s
		}
	}
}`, a.URL, dead, b.URL))
	const requests = 200
	failed := 0
	for range requests {
		switch status, body := s.get("lat.test", "/"); status {
		case 200:
		case 502:
			failed++
		default:
			t.Fatalf("got %d %q", status, body)
		}
	}
	// Even shares would give the dead instance a third; its first failure
	// marks it as slow as the timeout (10s), decaying over latency_decay
	// (10s), while the others answer in a millisecond.
	attempts := instanceOf(t, fetchReport(t), "lat.test", dead).TotalRequests
	if attempts == 0 || attempts > 5 || int(attempts) != failed {
		t.Errorf("the instance that refuses connections got %d of %d requests (%d failed at the client), want 1 to 5", attempts, requests, failed)
	}
}
