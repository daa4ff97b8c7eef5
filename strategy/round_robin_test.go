package strategy_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

func newRoundRobin(t testing.TB) strategy.Strategy {
	t.Helper()
	s, err := strategy.New("round_robin")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRoundRobinSequence(t *testing.T) {
	tests := []struct {
		name  string
		n     int
		down  []int
		picks int
		want  string // one letter per pick, '-' for nil
	}{
		{name: "one instance", n: 1, picks: 4, want: "aaaa"},
		{name: "two instances", n: 2, picks: 6, want: "ababab"},
		{name: "three instances", n: 3, picks: 6, want: "abcabc"},
		{name: "three instances, longer", n: 3, picks: 10, want: "abcabcabca"},
		{name: "five instances", n: 5, picks: 10, want: "abcdeabcde"},
		{name: "first down", n: 3, down: []int{0}, picks: 6, want: "bcbcbc"},
		{name: "middle down", n: 3, down: []int{1}, picks: 6, want: "acacac"},
		{name: "last down", n: 3, down: []int{2}, picks: 6, want: "ababab"},
		{name: "only one up", n: 3, down: []int{0, 2}, picks: 3, want: "bbb"},
		{name: "all down", n: 3, down: []int{0, 1, 2}, picks: 3, want: "---"},
		{name: "empty pool", n: 0, picks: 3, want: "---"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, tt.n)
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			p := backend.NewPool(ins...)
			if got := pickSequence(newRoundRobin(t), p, ins, tt.picks); got != tt.want {
				t.Errorf("picks = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestRoundRobinSpreadsDownShareEvenly checks that with one instance down,
// every run of k·N selections over the N healthy instances gives each
// exactly k, wherever the counter stood when the instance went down, so the
// down instance's share does not all land on its neighbour.
func TestRoundRobinSpreadsDownShareEvenly(t *testing.T) {
	type tc struct {
		total, down, k, warm int
	}
	var tests []tc
	for _, total := range []int{2, 3, 5} {
		for _, down := range slices.Compact([]int{0, total / 2, total - 1}) {
			for _, k := range []int{1, 2, 7} {
				for _, warm := range []int{0, 1, 2*total - 1} {
					tests = append(tests, tc{total, down, k, warm})
				}
			}
		}
	}
	for _, tt := range tests {
		name := fmt.Sprintf("total=%d/down=%d/k=%d/warm=%d", tt.total, tt.down, tt.k, tt.warm)
		t.Run(name, func(t *testing.T) {
			ins := newInstances(t, tt.total)
			p := backend.NewPool(ins...)
			s := newRoundRobin(t)
			// Selections before the instance goes down move the counter.
			for range tt.warm {
				if s.Select(p, nil) == nil {
					t.Fatal("Select = nil with every instance healthy")
				}
			}
			ins[tt.down].SetHealthy(false)

			healthy := tt.total - 1
			counts := make([]int, tt.total)
			for range tt.k * healthy {
				in := s.Select(p, nil)
				i := index(ins, in)
				if i < 0 {
					t.Fatalf("Select = %v, not an instance of the pool", in)
				}
				counts[i]++
			}
			for i, c := range counts {
				want := tt.k
				if i == tt.down {
					want = 0
				}
				if c != want {
					t.Errorf("instance %s picked %d times, want %d (counts %v)", label(i), c, want, counts)
				}
			}
		})
	}
}

func TestRoundRobinRecovery(t *testing.T) {
	ins := newInstances(t, 3)
	p := backend.NewPool(ins...)
	s := newRoundRobin(t)

	steps := []struct {
		change func()
		picks  int
		want   string
	}{
		{change: func() {}, picks: 3, want: "abc"},
		{change: func() { ins[0].SetHealthy(false) }, picks: 4, want: "cbcb"},  // counter at 3: list [b c]
		{change: func() { ins[0].SetHealthy(true) }, picks: 6, want: "bcabca"}, // counter at 7
		{change: func() { ins[0].SetHealthy(false); ins[1].SetHealthy(false); ins[2].SetHealthy(false) }, picks: 2, want: "--"},
		{change: func() { ins[1].SetHealthy(true) }, picks: 2, want: "bb"},
	}
	for i, st := range steps {
		st.change()
		if got := pickSequence(s, p, ins, st.picks); got != st.want {
			t.Errorf("step %d: picks = %s, want %s", i, got, st.want)
		}
	}
}

func TestRoundRobinConcurrent(t *testing.T) {
	const (
		goroutines = 16
		perG       = 1200 // goroutines·perG divisible by every healthy count below
	)
	tests := []struct {
		name string
		n    int
		down []int
	}{
		{name: "3 healthy", n: 3},
		{name: "4 of 5 healthy", n: 5, down: []int{2}},
		{name: "8 healthy", n: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, tt.n)
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			p := backend.NewPool(ins...)
			s := newRoundRobin(t)

			perGoroutine := make([][]int, goroutines)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for g := range goroutines {
				counts := make([]int, tt.n+1) // last slot: nil or foreign picks
				perGoroutine[g] = counts
				wg.Go(func() {
					<-start
					for range perG {
						i := index(ins, s.Select(p, nil))
						if i < 0 {
							i = tt.n
						}
						counts[i]++
					}
				})
			}
			close(start)
			wg.Wait()

			total := make([]int, tt.n+1)
			sum := 0
			for _, counts := range perGoroutine {
				for i, c := range counts {
					total[i] += c
					sum += c
				}
			}
			if sum != goroutines*perG {
				t.Fatalf("%d selections counted, want %d", sum, goroutines*perG)
			}
			if total[tt.n] != 0 {
				t.Errorf("%d selections returned nil or a foreign instance", total[tt.n])
			}
			healthy := tt.n - len(tt.down)
			for i := range tt.n {
				want := goroutines * perG / healthy
				for _, d := range tt.down {
					if i == d {
						want = 0
					}
				}
				if total[i] != want {
					t.Errorf("instance %s picked %d times, want exactly %d (all: %v)", label(i), total[i], want, total[:tt.n])
				}
			}
		})
	}
}

// TestRoundRobinCounterPast32Bits: the rotation stays exact when the
// counter passes 2^32 (where the index computation changes).
func TestRoundRobinCounterPast32Bits(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		start   uint64
		want    string
	}{
		// 2^32 - 2 ≡ 2 (mod 3): the picks start at c.
		{name: "plain", weights: []int{1, 1, 1}, start: 1<<32 - 2, want: "cabcabc"},
		// 2^32 - 1 ≡ 0 (mod 5).
		{name: "plain, 5", weights: []int{1, 1, 1, 1, 1}, start: 1<<32 - 1, want: "abcdeab"},
		// 2^32 - 1 ≡ 3 (mod 7): the schedule a a b a c a a from its 4th turn.
		{name: "weighted", weights: []int{5, 1, 1}, start: 1<<32 - 1, want: "acaaaabacaa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			s := newRoundRobin(t)
			strategy.SetRoundRobinCounter(s, tt.start)
			if got := pickSequence(s, backend.NewPool(ins...), ins, len(tt.want)); got != tt.want {
				t.Errorf("picks from counter %d = %s, want %s", tt.start, got, tt.want)
			}
		})
	}
}
