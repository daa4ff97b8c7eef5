package caddylb_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// variableBackend serves at most capacity requests at once, a couple of
// milliseconds each, and refuses the rest with 503 at once (as
// bench/backend -cap does); the test changes its capacity.
type variableBackend struct {
	*backend
	capacity atomic.Int64
	inFlight atomic.Int64
	refused  atomic.Int64
	served   atomic.Int64
}

func newVariableBackend(t *testing.T, capacity int) *variableBackend {
	b := &variableBackend{backend: newBackend(t, "variable")}
	b.capacity.Store(int64(capacity))
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		for {
			n := b.inFlight.Load()
			if n >= b.capacity.Load() {
				b.refused.Add(1)
				http.Error(w, "over capacity", http.StatusServiceUnavailable)
				return
			}
			if b.inFlight.CompareAndSwap(n, n+1) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond) // the work of a request
		b.inFlight.Add(-1)
		b.served.Add(1)
		_, _ = io.WriteString(w, "variable")
	})
	return b
}

// TestAutoLimitFollowsCapacity: with max_requests auto and a queue, the
// limit of a backend whose capacity changes (8, then 16, then 4) under 48
// concurrent clients finds each capacity, as the report and the metrics
// say, and the clients see few of the backend's refusals.
func TestAutoLimitFollowsCapacity(t *testing.T) {
	b := newVariableBackend(t, 8)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app auto.test {
			max_requests auto
			max_requests_max 64
			max_queue 1000
			queue_timeout 10s
			instances %s
		}
	}
}`, b.URL))
	limit := func() int64 { return instanceOf(t, fetchReport(t), "auto.test", b.URL).MaxRequests }

	// The load: 48 clients, 60,000 requests at most, until stopped.
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			for sent.Add(1) <= 60000 {
				select {
				case <-stop:
					return
				default:
				}
				if status, _, err := s.tryGet("auto.test", "/"); err != nil || status != 200 {
					failed.Add(1)
				}
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	for _, capacity := range []int64{8, 16, 4} {
		b.capacity.Store(capacity)
		waitFor(t, fmt.Sprintf("the limit to find a capacity of %d", capacity), func() bool {
			l := limit()
			return l >= capacity-1 && l <= capacity+2
		})
		// Once found, the limit stays near it, and the clients see hardly
		// any refusals: those of the probes above it are sent again.
		f0, n0 := failed.Load(), sent.Load()
		s0 := b.served.Load()
		waitFor(t, "1,000 more requests served", func() bool { return b.served.Load()-s0 >= 1000 })
		f, n := failed.Load()-f0, sent.Load()-n0
		if share := float64(f) / float64(n); share > 0.01 {
			t.Errorf("capacity %d: %d of %d requests failed (%.1f%%) once the limit found it", capacity, f, n, 100*share)
		}
		// A drain halves it for a moment every 10 s (the first after 1 s),
		// and latencies the machine's load stretches may cut it a little:
		// most reads, not all, find it near the capacity.
		var reads []int64
		near := 0
		for range 10 {
			l := limit()
			reads = append(reads, l)
			if l >= capacity*3/4-1 && l <= capacity+2 {
				near++
			}
		}
		if near < 8 {
			t.Errorf("capacity %d: the limit read %v", capacity, reads)
		}
		t.Logf("capacity %d: limit %d; %d of %d requests failed once found", capacity, limit(), f, n)
	}
	for _, m := range scrape(t) {
		if m.name == "caddy_load_balancer_instance_max_requests" && m.labels["app"] == "auto.test" {
			if l := limit(); int64(m.value) < l-2 || int64(m.value) > l+2 {
				t.Errorf("metric instance_max_requests %v, report %d", m.value, l)
			}
			return
		}
	}
	t.Error("no instance_max_requests metric for auto.test")
}

// flakyBackend answers 500 to some of its requests, by a pattern of its
// count: fail(k) for the k-th request.
func flakyBackend(t *testing.T, name string, fail func(k int64) bool) *backend {
	b := newBackend(t, name)
	var k atomic.Int64
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		if fail(k.Add(1)) {
			http.Error(w, "flaky", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, name)
	})
	return b
}

// TestOutlierEjection: statistical ejection through a real Caddy, in
// pools of 5 under steady load. One instance failing 30% of its requests
// (never 2 in a row: max_fails never trips) is ejected for its success
// rate; one failing 2% is not; failure-percentage ejection never ejects
// more than max_ejected_percent.
func TestOutlierEjection(t *testing.T) {
	// thirty fails 3 requests in 10, never two in a row; two 1 in 50.
	thirty := func(k int64) bool { return k%10 == 1 || k%10 == 4 || k%10 == 7 }
	two := func(k int64) bool { return k%50 == 25 }
	forty := func(k int64) bool { return k%5 == 1 || k%5 == 3 }
	never := func(int64) bool { return false }
	tests := []struct {
		name    string
		options string
		fails   []func(int64) bool
		want    int      // instances ejected in the end
		reason  []string // what each ejection's reason says
	}{
		{"30% by success rate", "success_rate_stdev_factor 1.9", []func(int64) bool{never, thirty, never, never, never}, 1, []string{"success rate ", " vs pool 100% (threshold 95."}},
		{"2% is no outlier", "success_rate_stdev_factor 1.9", []func(int64) bool{never, never, two, never, never}, 0, nil},
		{"failure percentage within max_ejected_percent", "failure_percent_threshold 20\n\t\t\tmax_ejected_percent 40",
			[]func(int64) bool{forty, never, forty, never, forty}, 2, []string{"failure rate ", " requests (threshold 20%)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var urls []string
			for i, fail := range tt.fails {
				urls = append(urls, flakyBackend(t, fmt.Sprintf("b%d", i), fail).URL)
			}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app outlier.test {
			%s
			outlier_interval 200ms
			outlier_min_requests 20
			retries 0
			instances %s
		}
	}
}`, tt.options, strings.Join(urls, " ")))
			var sent atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for sent.Add(1) <= 40000 {
						select {
						case <-stop:
							return
						default:
						}
						_, _, _ = s.tryGet("outlier.test", "/")
					}
				})
			}
			defer func() {
				close(stop)
				wg.Wait()
			}()
			ejected := func() (n int, reasons []string) {
				for _, in := range appOf(t, fetchReport(t), "outlier.test").Instances {
					if in.State == "ejected" {
						n++
						reasons = append(reasons, in.Reason)
					}
				}
				return n, reasons
			}
			sweeps := func() uint64 { return *appOf(t, fetchReport(t), "outlier.test").OutlierSweeps }
			if tt.want > 0 {
				waitFor(t, "the outliers ejected", func() bool { n, _ := ejected(); return n >= tt.want })
			}
			// Whatever more sweeps judge, no more are ejected.
			start := sweeps()
			most := 0
			waitFor(t, "6 more sweeps", func() bool {
				n, _ := ejected()
				most = max(most, n)
				return sweeps() >= start+6
			})
			n, reasons := ejected()
			if n != tt.want || most != tt.want {
				t.Errorf("%d ejected (at most %d), want %d: %v", n, most, tt.want, reasons)
			}
			for _, r := range reasons {
				if !strings.HasPrefix(r, tt.reason[0]) || !strings.Contains(r, tt.reason[1]) {
					t.Errorf("reason %q, want %q...%q", r, tt.reason[0], tt.reason[1])
				}
			}
		})
	}
}

// TestHedging: a request the first instance has not answered within
// hedge_after goes to another as well; the first answer wins, the other
// attempt is cancelled at its instance and counts as no failure. Hedges
// spend the retry budget; requests that may not be sent twice are not
// hedged; a quantile delay follows the pool's latencies.
func TestHedging(t *testing.T) {
	type counts struct{ sent, won float64 }
	hedges := func() counts {
		var c counts
		for _, m := range scrape(t) {
			switch {
			case m.labels["app"] != "hedge.test":
			case m.name == "caddy_load_balancer_hedges_total":
				c.sent = m.value
			case m.name == "caddy_load_balancer_hedges_won_total":
				c.won = m.value
			}
		}
		return c
	}
	for _, tt := range []struct {
		name, options string
		warm          bool // send 200 quick requests first (for a quantile)
		budget        int  // hedges the budget allows; 0: more than the test needs
	}{
		{"fixed delay", "hedge_after 50ms\n\t\t\tretry_budget_percent 100", false, 0},
		{"quantile", "hedge_after p90\n\t\t\tretry_budget_percent 100", true, 0},
		{"within the budget", "hedge_after 50ms\n\t\t\tretry_budget_percent 0", false, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			slow, fast1, fast2 := newBackend(t, "slow"), newBackend(t, "fast1"), newBackend(t, "fast2")
			var held, cancelled atomic.Int64
			release := make(chan struct{})
			slow.handle(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Slow") == "" {
					_, _ = io.WriteString(w, "slow")
					return
				}
				held.Add(1)
				select {
				case <-r.Context().Done(): // the load balancer gave up on it
					cancelled.Add(1)
				case <-release:
					_, _ = io.WriteString(w, "slow")
				}
			})
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	log
	load_balancer {
		app hedge.test {
			%s
			instances %s %s %s
		}
	}
}`, tt.options, slow.URL, fast1.URL, fast2.URL))
			if tt.warm {
				for range 200 {
					s.get("hedge.test", "/")
				}
				waitFor(t, "a hedge delay from the latencies", func() bool {
					d := appOf(t, fetchReport(t), "hedge.test").HedgeDelayMs
					return d != nil && *d > 0
				})
			}
			before := hedges()
			get := func(method string) (int, string) {
				req, _ := http.NewRequest(method, s.url("/"), nil)
				req.Host = "hedge.test"
				req.Header.Set("X-Slow", "1")
				resp, err := client.Do(req)
				if err != nil {
					return 0, err.Error()
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(body)
			}
			// Requests the slow instance holds: each is hedged, and the
			// hedge's answer is the client's.
			answered := map[string]int{}
			want := 10
			if tt.budget > 0 {
				want = tt.budget
			}
			for n := 0; held.Load() < int64(want); n++ {
				if n == 200 {
					t.Fatalf("200 requests, %d held at the slow instance", held.Load())
				}
				status, body := get(http.MethodGet)
				if status != 200 {
					t.Fatalf("status %d %q", status, body)
				}
				answered[body]++
			}
			if answered["slow"] != 0 {
				t.Errorf("answers %v: want only the fast instances'", answered)
			}
			waitFor(t, "the given-up attempts cancelled at the slow instance", func() bool { return cancelled.Load() == held.Load() })
			got := hedges()
			// Every held attempt was one of a hedged pair: the first, which
			// its hedge beat, or (with a delay that short) a hedge that the
			// first beat.
			sent, won := int64(got.sent-before.sent), int64(got.won-before.won)
			if sent < held.Load() || won > sent || !tt.warm && won != held.Load() {
				t.Errorf("%d requests held at the slow instance, %d hedges sent, %d won; want every held one given up for the other of its pair", held.Load(), sent, won)
			}
			if in := instanceOf(t, fetchReport(t), "hedge.test", slow.URL); in.State != "healthy" || in.Failures != 0 {
				t.Errorf("the slow instance: %s, %d failures (%s); want healthy, none (a given-up attempt is no failure)", in.State, in.Failures, in.LastError)
			}
			if lines := logLines(t, s, func(l map[string]any) bool { return l["load_balancer_hedged"] == true }); len(lines) != int(got.sent-before.sent) {
				t.Errorf("%d access log lines with load_balancer_hedged, want one per hedge, %v", len(lines), got.sent-before.sent)
			}

			// Past the budget, or for a POST, no hedge: the request waits.
			sentBefore := hedges().sent
			method := http.MethodPost
			if tt.budget > 0 {
				method = http.MethodGet
			}
			done := make(chan int, 1)
			stuck := held.Load()
			go func() {
				for held.Load() == stuck {
					if status, _ := get(method); status != 200 {
						done <- status
						return
					}
				}
				done <- 200
			}()
			waitFor(t, "a "+method+" held at the slow instance", func() bool { return held.Load() > stuck })
			if h := hedges().sent; h != sentBefore {
				t.Errorf("%s hedged: %v more hedges", method, h-sentBefore)
			}
			close(release)
			if status := recv(t, done, "the held request to end"); status != 200 {
				t.Errorf("the held %s: status %d", method, status)
			}
		})
	}
}
