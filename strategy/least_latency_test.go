package strategy_test

import (
	"math"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// newLatency returns a seeded least_latency strategy on a fake clock.
func newLatency(t testing.TB, decay time.Duration, seed uint64) (strategy.Strategy, strategy.Observer, *strategy.FakeClock) {
	t.Helper()
	s := seeded(t, "least_latency", strategy.Options{LatencyDecay: decay}, seed)
	clock := new(strategy.FakeClock)
	clock.Set(int64(time.Hour)) // anywhere but 0
	strategy.SetClock(s, clock)
	return s, s.(strategy.Observer), clock
}

// serve runs n requests one after another, each answered after latency(i)
// for instance i, step apart on the fake clock, and counts the picks.
func serve(t testing.TB, s strategy.Strategy, obs strategy.Observer, clock *strategy.FakeClock,
	p *backend.Pool, ins []*backend.Instance, n int, step time.Duration, latency func(i int) time.Duration) []int {
	t.Helper()
	counts := make([]int, len(ins))
	for range n {
		in := s.Select(p, nil)
		i := index(ins, in)
		if i < 0 {
			t.Fatal("Select gave no instance of the pool")
		}
		counts[i]++
		obs.Observe(in, latency(i))
		clock.Advance(int64(step))
	}
	return counts
}

// TestLeastLatencySlowInstanceLosesAndWinsBack: one instance of three
// answers 10× slower; its share falls far below 1/3, and comes back once
// it is fast again, as the decayed estimate lets it be tried.
func TestLeastLatencySlowInstanceLosesAndWinsBack(t *testing.T) {
	const (
		decay = time.Second
		step  = time.Millisecond // 1000 requests a second
		n     = 3
	)
	ins := newInstances(t, n)
	p := backend.NewPool(ins...)
	s, obs, clock := newLatency(t, decay, 1)
	slow := 2
	latency := 100 * time.Millisecond
	lat := func(i int) time.Duration {
		if i == slow {
			return latency
		}
		return 10 * time.Millisecond
	}

	// 4 s of traffic with c slow: c's estimate must decay for
	// decay·ln 10 ≈ 2.3 s before it is tried again.
	counts := serve(t, s, obs, clock, p, ins, 4000, step, lat)
	share := float64(counts[slow]) / 4000
	t.Logf("slow: counts %v, share of c %.4f", counts, share)
	if share > 1.0/(4*n) {
		t.Errorf("slow instance got %.1f%% of requests, want well below 1/%d (counts %v)", 100*share, n, counts)
	}
	if counts[slow] == 0 {
		t.Errorf("slow instance never tried again in 4 s with latency_decay %v", decay)
	}

	// c is fast again: once retried it is as good as the others.
	latency = 10 * time.Millisecond
	serve(t, s, obs, clock, p, ins, 3000, step, lat)
	counts = serve(t, s, obs, clock, p, ins, 3000, step, lat)
	share = float64(counts[slow]) / 3000
	t.Logf("recovered: counts %v, share of c %.4f", counts, share)
	if share < 0.25 {
		t.Errorf("recovered instance got %.1f%% of requests, want about 1/%d (counts %v)", 100*share, n, counts)
	}
}

// TestLeastLatencyCost checks latency × (in flight + 1) / weight with two
// instances, which are always both drawn.
func TestLeastLatencyCost(t *testing.T) {
	tests := []struct {
		name      string
		weights   []int
		latencies []time.Duration
		loads     []int
		want      int
	}{
		{name: "faster wins", weights: []int{1, 1}, latencies: []time.Duration{20e6, 10e6}, want: 1},
		{name: "a queue costs more than latency", weights: []int{1, 1}, latencies: []time.Duration{10e6, 100e6}, loads: []int{20, 0}, want: 1},
		{name: "a short queue does not", weights: []int{1, 1}, latencies: []time.Duration{10e6, 100e6}, loads: []int{5, 0}, want: 0},
		{name: "weight divides the cost", weights: []int{3, 1}, latencies: []time.Duration{10e6, 10e6}, loads: []int{2, 1}, want: 0}, // 30/3 vs 20
		{name: "weight 0 never", weights: []int{0, 1, 1}, latencies: []time.Duration{1e6, 50e6, 60e6}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			s, obs, _ := newLatency(t, time.Second, 2)
			for i, l := range tt.latencies {
				obs.Observe(ins[i], l)
			}
			for i, l := range tt.loads {
				for range l {
					ins[i].Acquire()
				}
			}
			p := backend.NewPool(ins...)
			for k := range 20 {
				if got := index(ins, s.Select(p, nil)); got != tt.want {
					t.Fatalf("pick %d = %s, want %s", k, label(got), label(tt.want))
				}
			}
		})
	}
}

// TestLeastLatencyNewInstanceStartsAtMedian: an instance with no estimate
// (new, or back from being unhealthy) is given the pool's median, so it is
// neither flooded (as from zero) nor starved.
func TestLeastLatencyNewInstanceStartsAtMedian(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(d *backend.Instance, obs strategy.Observer)
	}{
		{name: "new", prepare: func(*backend.Instance, strategy.Observer) {}},
		{name: "recovered", prepare: func(d *backend.Instance, obs strategy.Observer) {
			obs.Observe(d, time.Millisecond) // fast once, then down
			d.SetHealthy(false)
			d.SetHealthy(true)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, 4)
			s, obs, clock := newLatency(t, 10*time.Second, 3)
			for i, l := range []time.Duration{10e6, 20e6, 30e6} {
				obs.Observe(ins[i], l)
			}
			d := ins[3]
			tt.prepare(d, obs)
			if _, ok := d.Latency(clock.Now(), 10*time.Second); ok {
				t.Fatal("d has an estimate before any selection")
			}
			p := backend.NewPool(ins...)
			// The clock stands still and nothing is observed: estimates
			// stay as they are, and shares show who is preferred.
			counts := draws(t, s, p, ins, 6000)
			got, ok := d.Latency(clock.Now(), 10*time.Second)
			if !ok || math.Abs(got-20e6) > 1 {
				t.Fatalf("d's estimate = %v, %v; want the median 20ms", got, ok)
			}
			// Of the 6 pairs, d wins {c, d}, half of {b, d} (a tie goes to
			// the first drawn) and never {a, d}: 1/4. From zero it would
			// win all three: 1/2.
			checkShares(t, counts, []float64{3. / 6, (1 + 0.5) / 6, 0, 0.25})
		})
	}
}

// TestLeastLatencyNothingKnown: with no estimates anywhere, the cost is the
// load alone.
func TestLeastLatencyNothingKnown(t *testing.T) {
	ins := newInstances(t, 2)
	ins[0].Acquire()
	s, _, _ := newLatency(t, time.Second, 4)
	if got := pickSequence(s, backend.NewPool(ins...), ins, 10); got != "bbbbbbbbbb" {
		t.Errorf("picks = %s, want the idle b every time", got)
	}
}
