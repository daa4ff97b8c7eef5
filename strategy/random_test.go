package strategy_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// seeded returns a strategy with a fixed random seed.
func seeded(t testing.TB, name string, opts strategy.Options, seed uint64) strategy.Strategy {
	t.Helper()
	s, err := strategy.NewSeeded(name, opts, seed)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkShares fails the test unless counts (out of n draws) match the
// probabilities want within 5 standard deviations (plus one draw).
func checkShares(t testing.TB, counts []int, want []float64) {
	t.Helper()
	n := 0
	for _, c := range counts {
		n += c
	}
	for i, p := range want {
		mean := float64(n) * p
		tol := 5*math.Sqrt(mean*(1-p)) + 1
		if math.Abs(float64(counts[i])-mean) > tol {
			t.Errorf("instance %s: %d of %d draws, want %.0f ± %.0f (all: %v, want shares %v)",
				label(i), counts[i], n, mean, tol, counts, want)
		}
	}
}

// draws counts the picks of n selections.
func draws(t testing.TB, s strategy.Strategy, p *backend.Pool, ins []*backend.Instance, n int) []int {
	t.Helper()
	counts := make([]int, len(ins))
	for range n {
		i := index(ins, s.Select(p, nil))
		if i < 0 {
			t.Fatal("Select gave no instance of the pool")
		}
		counts[i]++
	}
	return counts
}

// shares returns the weights as fractions of their sum, 0 for those down.
func shares(weights []int, down ...int) []float64 {
	total := 0
	for i, w := range weights {
		if !containsIdx(down, i) {
			total += w
		}
	}
	out := make([]float64, len(weights))
	for i, w := range weights {
		if !containsIdx(down, i) {
			out[i] = float64(w) / float64(total)
		}
	}
	return out
}

func containsIdx(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestRandomFollowsWeights(t *testing.T) {
	tests := []struct {
		weights []int
		down    []int
	}{
		{weights: []int{1, 1, 1}},
		{weights: []int{5, 1, 1}},
		{weights: []int{1, 2, 3, 4}},
		{weights: []int{1000, 1, 1}},
		{weights: []int{3, 0, 1}},
		{weights: []int{5, 1, 1}, down: []int{0}},
		{weights: []int{7}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/down=%v", tt.weights, tt.down), func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			counts := draws(t, seeded(t, "random", strategy.Options{}, 7), backend.NewPool(ins...), ins, 60000)
			checkShares(t, counts, shares(tt.weights, tt.down...))
			for i, w := range tt.weights {
				if (w == 0 || containsIdx(tt.down, i)) && counts[i] != 0 {
					t.Errorf("instance %s (weight %d, down %v) picked %d times", label(i), w, containsIdx(tt.down, i), counts[i])
				}
			}
		})
	}
}

func TestRandomSeededIsRepeatable(t *testing.T) {
	ins := newWeighted(t, 3, 2, 1)
	p := backend.NewPool(ins...)
	a := pickSequence(seeded(t, "random", strategy.Options{}, 42), p, ins, 40)
	b := pickSequence(seeded(t, "random", strategy.Options{}, 42), p, ins, 40)
	c := pickSequence(seeded(t, "random", strategy.Options{}, 43), p, ins, 40)
	if a != b {
		t.Errorf("same seed, different picks: %s, %s", a, b)
	}
	if a == c {
		t.Errorf("different seeds, same picks: %s", a)
	}
}

func TestFirst(t *testing.T) {
	ins := newWeighted(t, 1, 5, 0, 1)
	p := backend.NewPool(ins...)
	s, err := strategy.New("first")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		change func()
		want   string
	}{
		{change: func() {}, want: "aaa"},
		{change: func() { ins[0].SetHealthy(false) }, want: "bbb"},
		{change: func() { ins[1].SetHealthy(false) }, want: "ddd"}, // c has weight 0
		{change: func() { ins[3].SetHealthy(false) }, want: "---"},
		{change: func() { ins[1].SetHealthy(true) }, want: "bbb"},
		{change: func() { ins[0].SetHealthy(true) }, want: "aaa"},
	}
	for i, st := range steps {
		st.change()
		if got := pickSequence(s, p, ins, 3); got != st.want {
			t.Errorf("step %d: picks = %s, want %s", i, got, st.want)
		}
	}
}

// TestP2CNeverPicksTheMostLoaded: the two candidates are always different
// instances, so a strictly most loaded instance never wins a draw, and with
// two instances the less loaded always does.
func TestP2CNeverPicksTheMostLoaded(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		loads   []int
		never   int
	}{
		{name: "two", weights: []int{1, 1}, loads: []int{1, 0}, never: 0},
		{name: "two, weighted", weights: []int{1, 1000}, loads: []int{0, 5}, never: 1},
		{name: "three", weights: []int{1, 1, 1}, loads: []int{2, 9, 3}, never: 1},
		{name: "heavy weight dominates the draws", weights: []int{1000000, 1, 1}, loads: []int{2000001, 1, 1}, never: 0},
		{name: "ten", weights: []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, loads: []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 2}, never: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			for i, l := range tt.loads {
				for range l {
					ins[i].Acquire()
				}
			}
			counts := draws(t, seeded(t, "p2c", strategy.Options{}, 3), backend.NewPool(ins...), ins, 20000)
			if counts[tt.never] != 0 {
				t.Errorf("the most loaded instance %s won %d draws (all: %v)", label(tt.never), counts[tt.never], counts)
			}
		})
	}
}

// TestP2CShares checks the probabilities of the power of two choices: a
// uniform pair of different instances, the less loaded wins, a tie goes to
// the first drawn.
func TestP2CShares(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		loads   []int
		down    []int
		want    []float64
	}{
		// Of the 6 ordered pairs of 4, instance i wins those with a more
		// loaded partner: 3/6, 2/6, 1/6, 0.
		{name: "distinct loads", weights: []int{1, 1, 1, 1}, loads: []int{0, 1, 2, 3}, want: []float64{3. / 6, 2. / 6, 1. / 6, 0}},
		{name: "idle, equal weights", weights: []int{1, 1, 1}, loads: []int{0, 0, 0}, want: []float64{1. / 3, 1. / 3, 1. / 3}},
		{name: "idle pool follows the weights", weights: []int{5, 1, 1}, loads: []int{0, 0, 0}, want: shares([]int{5, 1, 1})},
		{name: "idle pool, one down", weights: []int{3, 1, 1, 1}, loads: []int{0, 0, 0, 0}, down: []int{1}, want: shares([]int{3, 1, 1, 1}, 1)},
		{name: "weight 0 never", weights: []int{1, 0, 1}, loads: []int{5, 0, 5}, want: []float64{0.5, 0, 0.5}},
		// (in flight + 1)/weight: a 4/4 = 1 beats b 2/1; c idle beats both.
		{name: "busy, weighted", weights: []int{4, 1, 1}, loads: []int{3, 1, 0}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			for i, l := range tt.loads {
				for range l {
					ins[i].Acquire()
				}
			}
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			counts := draws(t, seeded(t, "p2c", strategy.Options{}, 11), backend.NewPool(ins...), ins, 60000)
			want := tt.want
			if want == nil {
				// Weighted draws: c wins every pair it is in, a the pair
				// {a, b}. P(pair = {a, b}) = P(a then b) + P(b then a).
				pa, pb := 4./6, 1./6
				ab := pa*pb/(1-pa) + pb*pa/(1-pb)
				want = []float64{ab, 0, 1 - ab}
			}
			checkShares(t, counts, want)
		})
	}
}

func TestRandomizedStrategiesEdgeCases(t *testing.T) {
	for _, name := range []string{"random", "p2c", "least_latency", "hash"} {
		t.Run(name, func(t *testing.T) {
			s := seeded(t, name, strategy.Options{}, 5)
			// Empty pool, all down, all weight 0: nil.
			if got := s.Select(backend.NewPool(), nil); got != nil {
				t.Errorf("empty pool: %v", got)
			}
			down := newWeighted(t, 1, 1)
			down[0].SetHealthy(false)
			down[1].SetHealthy(false)
			if got := s.Select(backend.NewPool(down...), nil); got != nil {
				t.Errorf("all down: %v", got)
			}
			if got := s.Select(backend.NewPool(newWeighted(t, 0, 0)...), nil); got != nil {
				t.Errorf("all weight 0: %v", got)
			}
			// One available: always it.
			ins := newWeighted(t, 0, 3, 1)
			ins[2].SetHealthy(false)
			if got := pickSequence(s, backend.NewPool(ins...), ins, 5); got != "bbbbb" {
				t.Errorf("one available: picks %s, want bbbbb", got)
			}
		})
	}
}
