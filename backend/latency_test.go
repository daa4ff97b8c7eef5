package backend_test

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// unit is the resolution of the time stamps of latency estimates.
const unit = 1 << 16

func near(got, want float64) bool {
	return math.Abs(got-want) <= 1e-6*math.Abs(want)
}

func TestLatencyPeakEWMA(t *testing.T) {
	const tau = 10 * time.Second
	ms := float64(time.Millisecond)
	// A Δt of tau·ln 2, rounded to the stamp unit: w is then 1/2 (nearly).
	ln2tau := float64(tau) * math.Ln2
	half := int64(ln2tau) / unit * unit
	w := math.Exp(-float64(half) / float64(tau))
	long := 40 * int64(tau) / unit * unit

	type observe struct {
		at     int64
		sample time.Duration
	}
	tests := []struct {
		name     string
		observes []observe
		readAt   int64
		want     float64 // ns; 0: no estimate
	}{
		{name: "no sample", readAt: 1e9},
		{name: "first sample taken as is", observes: []observe{{unit, 10 * time.Millisecond}}, readAt: unit, want: 10 * ms},
		{
			name:     "a higher sample replaces the estimate at once",
			observes: []observe{{unit, 2 * time.Millisecond}, {2 * unit, 30 * time.Millisecond}},
			readAt:   2 * unit, want: 30 * ms,
		},
		{
			name:     "a lower sample moves the decayed estimate by 1-w",
			observes: []observe{{unit, 40 * time.Millisecond}, {unit + half, 10 * time.Millisecond}},
			readAt:   unit + half, want: 40*ms*w*w + 10*ms*(1-w),
		},
		{
			name:     "a sample above the decayed estimate replaces it",
			observes: []observe{{unit, 40 * time.Millisecond}, {unit + half, 25 * time.Millisecond}},
			readAt:   unit + half, want: 25 * ms,
		},
		{
			name:     "after a long silence the sample is nearly all",
			observes: []observe{{unit, 100 * time.Millisecond}, {unit + long, 5 * time.Millisecond}},
			readAt:   unit + long, want: 100*ms*math.Exp(-2*float64(long)/float64(tau)) + 5*ms*(1-math.Exp(-float64(long)/float64(tau))),
		},
		{
			name:     "a lower sample in the same stamp unit does not move it",
			observes: []observe{{unit, 20 * time.Millisecond}, {unit + unit/2, 10 * time.Millisecond}},
			readAt:   unit, want: 20 * ms,
		},
		{
			name:     "the estimate decays while no sample comes",
			observes: []observe{{unit, 20 * time.Millisecond}},
			readAt:   unit + half, want: 20 * ms * w,
		},
		{
			name:     "long idle: nearly nothing left",
			observes: []observe{{unit, 20 * time.Millisecond}},
			readAt:   unit + long, want: 20 * ms * math.Exp(-float64(long)/float64(tau)),
		},
		{
			name:     "a zero sample keeps the estimate above 0",
			observes: []observe{{unit, 0}},
			readAt:   unit, want: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			for _, o := range tt.observes {
				in.ObserveLatency(o.sample, o.at, tau)
			}
			got, ok := in.Latency(tt.readAt, tau)
			if tt.want == 0 {
				if ok {
					t.Fatalf("Latency() = %v, true; want no estimate", got)
				}
				return
			}
			if !ok || !near(got, tt.want) {
				t.Errorf("Latency() = %v, %v; want %v, true", got, ok, tt.want)
			}
		})
	}
}

func TestSeedLatency(t *testing.T) {
	const tau = time.Second
	in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
	in.SeedLatency(5e6, unit)
	if got, ok := in.Latency(unit, tau); !ok || !near(got, 5e6) {
		t.Fatalf("after SeedLatency(5ms): Latency() = %v, %v", got, ok)
	}
	// A seed never overwrites an estimate.
	in.SeedLatency(9e6, unit)
	if got, _ := in.Latency(unit, tau); !near(got, 5e6) {
		t.Fatalf("a second SeedLatency changed the estimate to %v", got)
	}
	in.ObserveLatency(20*time.Millisecond, 2*unit, tau)
	in.SeedLatency(1e6, 2*unit)
	if got, _ := in.Latency(2*unit, tau); !near(got, 20e6) {
		t.Fatalf("SeedLatency after a sample changed the estimate to %v", got)
	}
}

// TestLatencyResetOnRecovery: an instance that comes back from being
// unhealthy has no estimate, so its strategy seeds it afresh.
func TestLatencyResetOnRecovery(t *testing.T) {
	const tau = time.Second
	tests := []struct {
		name      string
		health    []bool
		wantReset bool
	}{
		{name: "healthy again without going down", health: []bool{true}},
		{name: "down only", health: []bool{false}},
		{name: "down and back", health: []bool{false, true}, wantReset: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			in.ObserveLatency(7*time.Millisecond, unit, tau)
			for _, h := range tt.health {
				in.SetHealthy(h)
			}
			_, ok := in.Latency(unit, tau)
			if ok == tt.wantReset {
				t.Errorf("has an estimate = %v, want %v", ok, !tt.wantReset)
			}
		})
	}
}

// TestObserveLatencyConcurrent: concurrent samples never leave a torn or
// out-of-range estimate.
func TestObserveLatencyConcurrent(t *testing.T) {
	const tau = time.Second
	in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				in.ObserveLatency(time.Duration(1+(g+i)%10)*time.Millisecond, int64(i)*unit, tau)
			}
		})
	}
	wg.Wait()
	// Each update is the sample, or a mix of it with the decayed estimate,
	// so the estimate stays within the samples' range, decayed by at most
	// the span of the stamps.
	got, ok := in.Latency(1999*unit, tau)
	if !ok || got < 1e6*math.Exp(-2000*unit/float64(tau)) || got > 10e6*1.0001 {
		t.Errorf("Latency() = %v, %v; want within the samples' range", got, ok)
	}
}

func TestNowIsMonotonic(t *testing.T) {
	prev := backend.Now()
	for range 1000 {
		now := backend.Now()
		if now < prev {
			t.Fatalf("Now() went back from %d to %d", prev, now)
		}
		prev = now
	}
}

func TestExpNeg(t *testing.T) {
	for x := 0.0; x >= -800; x -= 0.0137 {
		got, want := backend.ExpNeg(x), math.Exp(x)
		if x < -708 {
			want = 0 // below the smallest normal float: 0
		}
		if math.Abs(got-want) > 1e-9*want || (want == 0 && got != 0) {
			t.Fatalf("ExpNeg(%v) = %v, want %v", x, got, want)
		}
	}
	for _, x := range []float64{0, -1e-12, -0.5, -math.Ln2 / 2, -700, -708.5, -1e9} {
		got, want := backend.ExpNeg(x), math.Exp(x)
		if x < -708 {
			want = 0 // below the smallest normal float
		}
		if math.Abs(got-want) > 1e-9*want {
			t.Errorf("ExpNeg(%v) = %v, want %v", x, got, want)
		}
	}
}
