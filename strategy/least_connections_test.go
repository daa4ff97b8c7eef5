package strategy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

func newLeastConnections(t testing.TB) strategy.Strategy {
	t.Helper()
	s, err := strategy.New("least_connections")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// withLoads returns a pool of len(loads) fresh instances, instance i with
// loads[i] requests in flight, and the instances in down marked unhealthy.
func withLoads(t testing.TB, loads []int, down ...int) (*backend.Pool, []*backend.Instance) {
	t.Helper()
	ins := newInstances(t, len(loads))
	for i, l := range loads {
		for range l {
			ins[i].Acquire()
		}
	}
	for _, i := range down {
		ins[i].SetHealthy(false)
	}
	return backend.NewPool(ins...), ins
}

func TestLeastConnectionsPicksStrictMinimum(t *testing.T) {
	tests := []struct {
		name  string
		loads []int
		want  int
	}{
		{name: "minimum first", loads: []int{0, 1, 2}, want: 0},
		{name: "minimum middle", loads: []int{3, 1, 2}, want: 1},
		{name: "minimum last", loads: []int{5, 5, 4}, want: 2},
		{name: "minimum last of many", loads: []int{9, 8, 7, 6, 5, 4, 3, 2, 1}, want: 8},
		{name: "minimum after a tie above it", loads: []int{2, 2, 1, 2}, want: 2},
		{name: "big loads", loads: []int{1000, 999, 1001}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ins := withLoads(t, tt.loads)
			s := newLeastConnections(t)
			// A unique minimum wins every time, however recently picked.
			for i := range 4 {
				if got := index(ins, s.Select(p, nil)); got != tt.want {
					t.Fatalf("pick %d with loads %v = %s, want %s", i, tt.loads, label(got), label(tt.want))
				}
			}
		})
	}
}

func TestLeastConnectionsTiesRotate(t *testing.T) {
	tests := []struct {
		name  string
		loads []int
		down  []int
		picks int
		want  string
	}{
		{name: "idle pool of 3", loads: []int{0, 0, 0}, picks: 6, want: "abcabc"},
		{name: "idle pool of 3, longer", loads: []int{0, 0, 0}, picks: 10, want: "abcabcabca"},
		{name: "idle pool of 5", loads: []int{0, 0, 0, 0, 0}, picks: 10, want: "abcdeabcde"},
		{name: "first busy", loads: []int{1, 0, 0}, picks: 6, want: "bcbcbc"},
		{name: "middle busy", loads: []int{0, 1, 0}, picks: 6, want: "acacac"},
		{name: "last busy", loads: []int{0, 0, 1}, picks: 6, want: "ababab"},
		{name: "tie at a non-zero minimum", loads: []int{3, 2, 4, 2}, picks: 6, want: "bdbdbd"},
		{name: "tie among healthy, idle one down", loads: []int{0, 1, 1, 1}, down: []int{0}, picks: 6, want: "bcdbcd"},
		{name: "single instance", loads: []int{7}, picks: 3, want: "aaa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ins := withLoads(t, tt.loads, tt.down...)
			if got := pickSequence(newLeastConnections(t), p, ins, tt.picks); got != tt.want {
				t.Errorf("picks with loads %v = %s, want %s", tt.loads, got, tt.want)
			}
		})
	}
}

// TestLeastConnectionsLeastRecentlyPicked follows a pool whose loads change
// between picks: of the instances tied at the minimum, the one picked least
// recently wins.
func TestLeastConnectionsLeastRecentlyPicked(t *testing.T) {
	p, ins := withLoads(t, []int{0, 0, 0})
	a, b, c := ins[0], ins[1], ins[2]
	s := newLeastConnections(t)

	steps := []struct {
		change func()
		picks  int
		want   string
	}{
		{change: func() {}, picks: 1, want: "a"},
		{change: a.Acquire, picks: 4, want: "bcbc"},                         // a busy: b and c alternate
		{change: a.Release, picks: 3, want: "abc"},                          // a idle again, picked longest ago
		{change: func() { b.Acquire(); c.Acquire() }, picks: 2, want: "aa"}, // a alone at the minimum
		{change: a.Acquire, picks: 3, want: "bca"},                          // all at 1: b, c older than a
		{change: func() { b.SetHealthy(false) }, picks: 4, want: "caca"},
	}
	for i, st := range steps {
		st.change()
		if got := pickSequence(s, p, ins, st.picks); got != st.want {
			t.Errorf("step %d: picks = %s, want %s", i, got, st.want)
		}
	}
}

func TestLeastConnectionsSkipsUnhealthy(t *testing.T) {
	tests := []struct {
		name  string
		loads []int
		down  []int
		want  int // -1: nil
	}{
		{name: "idle first down", loads: []int{0, 2, 1}, down: []int{0}, want: 2},
		{name: "idle last down", loads: []int{3, 2, 0}, down: []int{2}, want: 1},
		{name: "two idle down", loads: []int{0, 5, 0, 4}, down: []int{0, 2}, want: 3},
		{name: "only busy one left", loads: []int{0, 9, 0}, down: []int{0, 2}, want: 1},
		{name: "all down", loads: []int{0, 0, 0}, down: []int{0, 1, 2}, want: -1},
		{name: "empty pool", loads: []int{}, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ins := withLoads(t, tt.loads, tt.down...)
			s := newLeastConnections(t)
			for i := range 3 {
				got := s.Select(p, nil)
				if tt.want < 0 {
					if got != nil {
						t.Fatalf("pick %d = %s, want nil", i, got)
					}
					continue
				}
				if gi := index(ins, got); gi != tt.want {
					t.Fatalf("pick %d with loads %v, down %v = %s, want %s", i, tt.loads, tt.down, label(gi), label(tt.want))
				}
			}
		})
	}
}

// TestLeastConnectionsConcurrent runs selections from many goroutines, each
// holding its pick in flight as a proxied request would.
func TestLeastConnectionsConcurrent(t *testing.T) {
	const (
		goroutines = 16
		perG       = 500
		n          = 4
	)
	p, ins := withLoads(t, make([]int, n))
	s := newLeastConnections(t)

	nils := make([]int, goroutines)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for range perG {
				in := s.Select(p, nil)
				if in == nil {
					nils[g]++
					continue
				}
				in.Acquire()
				in.Release()
			}
		})
	}
	close(start)
	wg.Wait()

	var requests uint64
	for i, in := range ins {
		st := in.Status()
		if st.InFlight != 0 {
			t.Errorf("instance %s: %d in flight after all requests ended", label(i), st.InFlight)
		}
		requests += st.TotalRequests
	}
	for g, c := range nils {
		if c != 0 {
			t.Errorf("goroutine %d got nil %d times from a healthy pool", g, c)
		}
	}
	if requests != goroutines*perG {
		t.Errorf("%d requests counted, want %d", requests, goroutines*perG)
	}
}

func TestSelectAllocatesNothing(t *testing.T) {
	keyed := httptest.NewRequest(http.MethodGet, "http://example.com/x?id=7", nil)
	keyed.Header.Set("X-Key", "user-1")
	keyed.Header.Set("Cookie", "a=b; sid=42")
	strategies := []struct {
		name string
		opts strategy.Options
		req  *http.Request
	}{
		{name: "round_robin"},
		{name: "least_connections"},
		{name: "p2c"},
		{name: "least_latency"},
		{name: "random"},
		{name: "first"},
		{name: "hash", req: keyed},
		{name: "hash", opts: strategy.Options{HashKey: "header:X-Key"}, req: keyed},
		{name: "hash", opts: strategy.Options{HashKey: "cookie:sid"}, req: keyed},
		{name: "hash", opts: strategy.Options{HashKey: "query:id"}, req: keyed},
		{name: "hash", opts: strategy.Options{HashKey: "uri"}, req: keyed},
		{name: "hash", opts: strategy.Options{HashKey: "header:X-None"}, req: keyed}, // no key: random
	}
	pools := []struct {
		n       int
		down    []int
		weights bool
	}{
		{n: 1},
		{n: 3},
		{n: 100, down: []int{0, 50}},
		{n: 100, down: []int{7}, weights: true},
	}
	for _, st := range strategies {
		for _, pc := range pools {
			t.Run(fmt.Sprintf("%s/%s/n=%d/down=%d/weighted=%v", st.name, st.opts.HashKey, pc.n, len(pc.down), pc.weights), func(t *testing.T) {
				weights := make([]int, pc.n)
				for i := range weights {
					weights[i] = 1
					if pc.weights {
						weights[i] = 1 + i%5
					}
				}
				ins := newWeighted(t, weights...)
				for _, i := range pc.down {
					ins[i].SetHealthy(false)
				}
				p := backend.NewPool(ins...)
				s, err := strategy.NewWithOptions(st.name, st.opts)
				if err != nil {
					t.Fatal(err)
				}
				if obs, ok := s.(strategy.Observer); ok {
					obs.Observe(ins[len(ins)-1], time.Millisecond)
				}
				var got *backend.Instance
				allocs := testing.AllocsPerRun(200, func() { got = s.Select(p, st.req) })
				if allocs != 0 {
					t.Errorf("Select allocates %v times per call, want 0", allocs)
				}
				if got == nil {
					t.Error("Select = nil from a pool with healthy instances")
				}
				if obs, ok := s.(strategy.Observer); ok {
					if allocs := testing.AllocsPerRun(200, func() { obs.Observe(got, time.Millisecond) }); allocs != 0 {
						t.Errorf("Observe allocates %v times per call, want 0", allocs)
					}
				}
			})
		}
	}
}

// TestStrategiesConcurrent runs every strategy from many goroutines, each
// holding its pick in flight as a proxied request would, while instances
// go down and up: no nil from a pool with available instances, no pick
// of an instance of weight 0, counters balanced at the end (and, under
// -race, no data race).
func TestStrategiesConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perG       = 400
	)
	keyed := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	for _, name := range strategy.Names() {
		if strings.HasPrefix(name, "zz_") {
			continue // registered by TestRegister
		}
		t.Run(name, func(t *testing.T) {
			ins := newWeighted(t, 3, 1, 0, 2, 1)
			p := backend.NewPool(ins...)
			s, err := strategy.New(name)
			if err != nil {
				t.Fatal(err)
			}
			obs, _ := s.(strategy.Observer)
			var bad atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for k := range perG {
						if g == 0 && k%50 == 0 {
							// Flap instance d; a, b, e stay up.
							ins[3].SetHealthy(k%100 != 0)
						}
						in := s.Select(p, keyed)
						if in == nil || in == ins[2] {
							bad.Add(1)
							continue
						}
						in.Acquire()
						if obs != nil {
							obs.Observe(in, time.Duration(1+k%7)*time.Millisecond)
						}
						in.Release()
					}
				})
			}
			wg.Wait()
			if n := bad.Load(); n != 0 {
				t.Errorf("%d selections gave nil or the instance of weight 0", n)
			}
			for i, in := range ins {
				if got := in.InFlight(); got != 0 {
					t.Errorf("instance %s: %d in flight after all requests ended", label(i), got)
				}
			}
		})
	}
}
