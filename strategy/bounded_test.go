package strategy_test

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

func newBoundedHash(t testing.TB, factor float64) strategy.Strategy {
	t.Helper()
	return seeded(t, "hash", strategy.Options{HashKey: "header:X-Key", HashBalance: factor}, 9)
}

// loopbackHosts returns n host:port addresses on 127.0.0.1.
func loopbackHosts(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.1:%d", 20001+i)
	}
	return out
}

// hold puts n requests in flight on in.
func hold(in *backend.Instance, n int) {
	for range n {
		in.Acquire()
	}
}

// releaseAll ends every request in flight on ins.
func releaseAll(ins []*backend.Instance) {
	for _, in := range ins {
		for in.InFlight() > 0 {
			in.Release()
		}
	}
}

// TestHashBalanceUnloadedIsPlainHash: while no instance is at its bound
// (nothing in flight), a bound changes no key's instance, with equal
// weights and with weights.
func TestHashBalanceUnloadedIsPlainHash(t *testing.T) {
	for _, weights := range [][]int{nil, {1, 3, 2, 5, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			p := backend.NewPool(hostsAt(t, loopbackHosts(5), weights...)...)
			plain := mapping(t, seeded(t, "hash", strategy.Options{HashKey: "header:X-Key"}, 9), p, 2000)
			bounded := mapping(t, newBoundedHash(t, 1.25), p, 2000)
			if !slices.Equal(plain, bounded) {
				t.Error("with nothing in flight, hash_balance changed the mapping of some keys")
			}
		})
	}
}

// TestHashBalanceMovesOnlyTheLoadedKeys: with one instance past its bound,
// the keys of the other instances stay where they are, and each key of the
// loaded one moves to the next of its own ranking (where it would go were
// the loaded instance gone), not anywhere.
func TestHashBalanceMovesOnlyTheLoadedKeys(t *testing.T) {
	for _, weights := range [][]int{nil, {1, 3, 2, 5, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			ins := hostsAt(t, loopbackHosts(5), weights...)
			p := backend.NewPool(ins...)
			s := newBoundedHash(t, 1.25)
			before := mapping(t, s, p, 2000)

			loaded := ins[1]
			hold(loaded, 100) // far past any bound: (100+1)×1.25×share < 100 for a share below 0.79
			defer releaseAll(ins)
			after := mapping(t, s, p, 2000)

			without := backend.NewPool(slices.Delete(slices.Clone(ins), 1, 2)...)
			second := mapping(t, seeded(t, "hash", strategy.Options{HashKey: "header:X-Key"}, 9), without, 2000)
			moved := 0
			for k := range before {
				switch {
				case before[k] != loaded.URL().Host && after[k] != before[k]:
					t.Fatalf("key %d of an unloaded instance moved from %s to %s", k, before[k], after[k])
				case before[k] == loaded.URL().Host && after[k] != second[k]:
					t.Fatalf("key %d of the loaded instance went to %s, want its second choice %s", k, after[k], second[k])
				case before[k] == loaded.URL().Host:
					moved++
				}
			}
			if moved == 0 {
				t.Fatal("no key of the loaded instance: the test shows nothing")
			}
			t.Logf("%d of 2000 keys moved, all to their second choice", moved)
		})
	}
}

// TestHashBalanceBound: a single hot key, requests held in flight one
// after another: no instance ever has more than ceil(c × (T+1) / n) in
// flight counting the new request, T being those in flight before it;
// without a bound every request goes to one instance.
func TestHashBalanceBound(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		factor  float64
		weights []int
	}{
		{name: "3 instances, 1.25", n: 3, factor: 1.25},
		{name: "3 instances, 1.5", n: 3, factor: 1.5},
		{name: "5 instances, 1.1", n: 5, factor: 1.1},
		{name: "2 instances, 2", n: 2, factor: 2},
		{name: "3 weighted instances, 1.25", n: 3, factor: 1.25, weights: []int{1, 2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := hostsAt(t, loopbackHosts(tt.n), tt.weights...)
			defer releaseAll(ins)
			p := backend.NewPool(ins...)
			s := newBoundedHash(t, tt.factor)
			r := withHeader("hot")
			sumW := 0
			for _, in := range ins {
				sumW += in.SelectionWeight()
			}
			const requests = 60
			for i := range requests {
				in := s.Select(p, r)
				bound := int64(math.Ceil(tt.factor * float64(i+1) * float64(in.SelectionWeight()) / float64(sumW)))
				if in.InFlight()+1 > bound {
					t.Fatalf("request %d went to %s with %d in flight: more than the bound %d", i, in.URL().Host, in.InFlight(), bound)
				}
				in.Acquire()
			}
			counts := make([]int64, len(ins))
			for i, in := range ins {
				counts[i] = in.InFlight()
			}
			t.Logf("in flight after %d held requests of one key: %v", requests, counts)

			releaseAll(ins)
			plain := seeded(t, "hash", strategy.Options{HashKey: "header:X-Key"}, 9)
			first := plain.Select(p, r)
			for range requests {
				if in := plain.Select(p, r); in != first {
					t.Fatalf("without hash_balance the hot key went to %s and %s", first.URL().Host, in.URL().Host)
				}
				first.Acquire()
			}
		})
	}
}

// TestHashBalanceKeyless: requests without a key are bounded too.
func TestHashBalanceKeyless(t *testing.T) {
	ins := hostsAt(t, loopbackHosts(3))
	defer releaseAll(ins)
	p := backend.NewPool(ins...)
	s := newBoundedHash(t, 1.25)
	hold(ins[0], 50)
	for i := range 30 {
		in := s.Select(p, nil)
		if in == ins[0] {
			t.Fatalf("keyless request %d went to the instance with 50 in flight, past the bound", i)
		}
		in.Acquire()
	}
}

// TestHashBalanceAllocatesNothing: the bounded walk allocates nothing.
func TestHashBalanceAllocatesNothing(t *testing.T) {
	ins := hostsAt(t, loopbackHosts(4), 1, 2, 1, 3)
	defer releaseAll(ins)
	p := backend.NewPool(ins...)
	s := newBoundedHash(t, 1.25)
	r := withHeader("hot")
	hold(s.Select(p, r), 40) // the key's instance past its bound: every Select walks
	s.Select(p, r)
	if allocs := testing.AllocsPerRun(100, func() { s.Select(p, r) }); allocs != 0 {
		t.Errorf("Select with a bound allocates %v times per call, want 0", allocs)
	}
}
