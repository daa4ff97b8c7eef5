package backend_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
)

func TestNewWeighted(t *testing.T) {
	tests := []struct {
		weight        int
		wantWeight    int
		wantAvailable bool
	}{
		{weight: 1, wantWeight: 1, wantAvailable: true},
		{weight: 5, wantWeight: 5, wantAvailable: true},
		{weight: backend.MaxWeight, wantWeight: backend.MaxWeight, wantAvailable: true},
		{weight: 0, wantWeight: 0, wantAvailable: false},
		{weight: -3, wantWeight: 0, wantAvailable: false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weight), func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), tt.weight)
			if got := in.Weight(); got != tt.wantWeight {
				t.Errorf("Weight() = %d, want %d", got, tt.wantWeight)
			}
			if !in.Healthy() {
				t.Error("Healthy() = false for a new instance")
			}
			if got := in.Available(); got != tt.wantAvailable {
				t.Errorf("Available() = %v, want %v", got, tt.wantAvailable)
			}
			in.SetHealthy(false)
			if in.Available() {
				t.Error("Available() = true for an unhealthy instance")
			}
		})
	}
}

// TestPoolAvailableLeavesOutWeightZero: an instance of weight 0 takes no
// new requests, healthy or not, so no strategy can pick it.
func TestPoolAvailableLeavesOutWeightZero(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		down    []int
		want    []int
	}{
		{name: "one of three drained", weights: []int{1, 0, 1}, want: []int{0, 2}},
		{name: "all drained", weights: []int{0, 0}, want: []int{}},
		{name: "drained and down", weights: []int{0, 3, 2}, down: []int{1}, want: []int{2}},
		{name: "weights kept", weights: []int{4, 1, 7}, want: []int{0, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := make([]*backend.Instance, len(tt.weights))
			for i, w := range tt.weights {
				ins[i] = backend.NewWeighted(mustParse(t, fmt.Sprintf("http://127.0.0.1:%d", 20001+i)), w)
			}
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			p := backend.NewPool(ins...)
			want := make([]*backend.Instance, 0, len(tt.want))
			for _, i := range tt.want {
				want = append(want, ins[i])
			}
			if got := p.Available(); !slices.Equal(got, want) {
				t.Errorf("Available() = %v, want %v", names(got), names(want))
			}
			if got := p.All(); !slices.Equal(got, ins) {
				t.Errorf("All() = %v, want every instance %v", names(got), names(ins))
			}
		})
	}
}

// TestTryAcquire: a limit is never exceeded, even by racing callers; 0 is
// no limit; slow start scales it with the weight, to at least 1.
func TestTryAcquire(t *testing.T) {
	u := mustParse(t, "http://127.0.0.1:1")
	in := backend.NewWeighted(u, 1)
	for range 3 {
		if !in.TryAcquire(3) {
			t.Fatal("refused below the limit")
		}
	}
	if in.TryAcquire(3) {
		t.Fatal("a 4th request under a limit of 3")
	}
	if !in.TryAcquire(0) || in.InFlight() != 4 {
		t.Fatalf("limit 0 refused, or in flight %d", in.InFlight())
	}
	for range 4 {
		in.Release()
	}

	// Racing callers.
	const limit, callers = 5, 64
	var wg sync.WaitGroup
	var over atomic.Bool
	for range callers {
		wg.Go(func() {
			for range 200 {
				if in.TryAcquire(limit) {
					if in.InFlight() > limit {
						over.Store(true)
					}
					in.Release()
				}
			}
		})
	}
	wg.Wait()
	if over.Load() || in.InFlight() != 0 {
		t.Errorf("over the limit %v, in flight at the end %d", over.Load(), in.InFlight())
	}

	// Slow start: the first step of ten is a tenth of the weight.
	p := &backend.Policy{SlowStart: time.Hour}
	ramp := backend.New(u, 4, p, backend.Now())
	ramp.StartSlowStart(backend.Now())
	for _, tt := range []struct{ limit, want int }{{100, 10}, {40, 4}, {5, 1}, {1, 1}} {
		if got := ramp.Limit(tt.limit); got != int64(tt.want) {
			t.Errorf("at the first step of slow start, Limit(%d) = %d, want %d", tt.limit, got, tt.want)
		}
	}
}
