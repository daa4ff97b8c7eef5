package strategy_test

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// newWeighted returns instances with the given weights; instance i listens
// on port 10001+i and is labelled 'a'+i.
func newWeighted(t testing.TB, weights ...int) []*backend.Instance {
	t.Helper()
	ins := make([]*backend.Instance, len(weights))
	for i, w := range weights {
		u, err := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", 10001+i))
		if err != nil {
			t.Fatal(err)
		}
		ins[i] = newInstance(u, w)
	}
	return ins
}

// nginxSWRR is nginx's smooth weighted round robin as written in
// ngx_http_upstream_get_peer, over the instances not in down, for n picks:
// the reference RoundRobin must match.
func nginxSWRR(weights []int, down map[int]bool, n int) string {
	current := make([]int, len(weights))
	var b strings.Builder
	for range n {
		best, total := -1, 0
		for i, w := range weights {
			if down[i] || w == 0 {
				continue
			}
			current[i] += w
			total += w
			if best < 0 || current[i] > current[best] {
				best = i
			}
		}
		if best < 0 {
			b.WriteString("-")
			continue
		}
		current[best] -= total
		b.WriteString(label(best))
	}
	return b.String()
}

func TestRoundRobinSmoothWeighted(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		down    []int
		picks   int
		want    string
	}{
		{name: "nginx's example", weights: []int{5, 1, 1}, picks: 14, want: "aabacaa" + "aabacaa"},
		{name: "4 2 1", weights: []int{4, 2, 1}, picks: 7, want: "abacaba"},
		{name: "2 1", weights: []int{2, 1}, picks: 6, want: "abaaba"},
		{name: "heavy last", weights: []int{1, 1, 3}, picks: 5, want: "cacbc"},
		{name: "equal weights are plain round robin", weights: []int{3, 3, 3}, picks: 6, want: "abcabc"},
		{name: "weights divided by their gcd", weights: []int{10, 2, 2}, picks: 7, want: "aabacaa"},
		{name: "weight 0 takes nothing", weights: []int{5, 0, 1, 1}, picks: 7, want: "aacadaa"},
		{name: "heavy one down", weights: []int{5, 1, 1}, down: []int{0}, picks: 4, want: "bcbc"},
		{name: "light one down", weights: []int{5, 1, 1}, down: []int{2}, picks: 6, want: "aaabaa"},
		{name: "all down", weights: []int{5, 1, 1}, down: []int{0, 1, 2}, picks: 2, want: "--"},
		{name: "all weight 0", weights: []int{0, 0}, picks: 2, want: "--"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			down := map[int]bool{}
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
				down[i] = true
			}
			got := pickSequence(newRoundRobin(t), backend.NewPool(ins...), ins, tt.picks)
			if got != tt.want {
				t.Errorf("picks = %s, want %s", got, tt.want)
			}
			if ref := nginxSWRR(tt.weights, down, tt.picks); got != ref {
				t.Errorf("picks = %s, nginx's algorithm gives %s", got, ref)
			}
		})
	}
}

// TestRoundRobinMatchesNginx compares RoundRobin with nginx's algorithm on
// many weight vectors, some instances down.
func TestRoundRobinMatchesNginx(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for c := range 300 {
		n := 1 + r.IntN(8)
		weights := make([]int, n)
		down := map[int]bool{}
		total := 0
		for i := range weights {
			weights[i] = r.IntN(12) // 0 included: drained
			if r.IntN(5) == 0 {
				down[i] = true
			}
			if !down[i] {
				total += weights[i]
			}
		}
		t.Run(fmt.Sprintf("%d/%v/down=%v", c, weights, down), func(t *testing.T) {
			ins := newWeighted(t, weights...)
			for i := range down {
				ins[i].SetHealthy(false)
			}
			picks := 2*total + 3
			got := pickSequence(newRoundRobin(t), backend.NewPool(ins...), ins, picks)
			if want := nginxSWRR(weights, down, picks); got != want {
				t.Errorf("picks = %s, nginx gives %s", got, want)
			}
		})
	}
}

// TestRoundRobinWeightedExactWithChanges: however the list of available
// instances changes, every full period of Σw picks after the change gives
// each available instance exactly its weight.
func TestRoundRobinWeightedExactWithChanges(t *testing.T) {
	ins := newWeighted(t, 4, 3, 2, 1)
	p := backend.NewPool(ins...)
	s := newRoundRobin(t)
	steps := []struct {
		name   string
		change func()
		want   []int // picks per instance over k periods, k = 3
	}{
		{name: "all up", change: func() {}, want: []int{4, 3, 2, 1}},
		{name: "b down", change: func() { ins[1].SetHealthy(false) }, want: []int{4, 0, 2, 1}},
		{name: "a down too", change: func() { ins[0].SetHealthy(false) }, want: []int{0, 0, 2, 1}},
		{name: "all back", change: func() { ins[0].SetHealthy(true); ins[1].SetHealthy(true) }, want: []int{4, 3, 2, 1}},
	}
	const k = 3
	for _, st := range steps {
		st.change()
		// Picks made before the change leave the counter anywhere.
		s.Select(p, nil)
		total := 0
		for _, w := range st.want {
			total += w
		}
		counts := make([]int, len(ins))
		for range k * total {
			counts[index(ins, s.Select(p, nil))]++
		}
		for i, c := range counts {
			if c != k*st.want[i] {
				t.Errorf("%s: counts %v, want %d·%v", st.name, counts, k, st.want)
				break
			}
		}
	}
}

// TestRoundRobinScheduleFallback: past the schedule bounds, turns follow a
// golden-ratio stride: still exact over every period, and spread out.
func TestRoundRobinScheduleFallback(t *testing.T) {
	tests := []struct {
		name          string
		entries, work uint64
		weights       []int
		maxRun        int // longest run of one instance allowed
	}{
		{name: "too many entries", entries: 4, work: 1 << 24, weights: []int{3, 2, 1}, maxRun: 3},
		{name: "too much work", entries: 1 << 18, work: 10, weights: []int{5, 4, 3, 2, 1}, maxRun: 2},
		{name: "huge weights", entries: 1 << 18, work: 1 << 24, weights: []int{backend.MaxWeight, backend.MaxWeight - 1, 7}, maxRun: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer strategy.SetScheduleLimits(tt.entries, tt.work)()
			ins := newWeighted(t, tt.weights...)
			p := backend.NewPool(ins...)
			s := newRoundRobin(t)
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			periods := 2
			if total > 100000 {
				periods = 1
			}
			counts := make([]int, len(ins))
			run, prev, longest := 0, -1, 0
			for range periods * total {
				i := index(ins, s.Select(p, nil))
				counts[i]++
				if i == prev {
					run++
				} else {
					run, prev = 1, i
				}
				longest = max(longest, run)
			}
			for i, w := range tt.weights {
				if counts[i] != periods*w {
					t.Fatalf("counts %v over %d periods, want %d·%v", counts, periods, periods, tt.weights)
				}
			}
			if longest > tt.maxRun {
				t.Errorf("longest run of one instance = %d, want at most %d (turns bunched)", longest, tt.maxRun)
			}
		})
	}
}

func TestRoundRobinWeightedConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perG       = 700 // goroutines·perG a multiple of Σw = 7
	)
	ins := newWeighted(t, 5, 1, 1, 0)
	p := backend.NewPool(ins...)
	s := newRoundRobin(t)
	counts := make([][]int, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		counts[g] = make([]int, len(ins)+1)
		wg.Go(func() {
			for range perG {
				i := index(ins, s.Select(p, nil))
				if i < 0 {
					i = len(ins)
				}
				counts[g][i]++
			}
		})
	}
	wg.Wait()
	total := make([]int, len(ins)+1)
	for _, c := range counts {
		for i, v := range c {
			total[i] += v
		}
	}
	if want := []int{4000, 800, 800, 0, 0}; fmt.Sprint(total) != fmt.Sprint(want) {
		t.Errorf("counts %v, want exactly %v", total, want)
	}
}

func TestLeastConnectionsWeighted(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		loads   []int
		want    int
	}{
		{name: "idle first whatever its weight", weights: []int{100, 1}, loads: []int{1, 0}, want: 1},
		{name: "fewest per unit of weight", weights: []int{1, 5}, loads: []int{1, 4}, want: 1},       // 2/1 vs 5/5
		{name: "the request being placed counts", weights: []int{1, 2}, loads: []int{1, 2}, want: 1}, // 2/1 vs 3/2
		{name: "heavier loses when fuller", weights: []int{3, 1}, loads: []int{6, 1}, want: 1},       // 7/3 vs 2/1
		{name: "weight 0 never, even idle", weights: []int{0, 1}, loads: []int{0, 9}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			for i, l := range tt.loads {
				for range l {
					ins[i].Acquire()
				}
			}
			p := backend.NewPool(ins...)
			s := newLeastConnections(t)
			for k := range 3 {
				if got := index(ins, s.Select(p, nil)); got != tt.want {
					t.Fatalf("pick %d = %s, want %s", k, label(got), label(tt.want))
				}
			}
		})
	}
}

// TestLeastConnectionsIdlePoolFollowsWeights: with every instance idle,
// ties are broken by the turn each is due, so picks follow the weights.
func TestLeastConnectionsIdlePoolFollowsWeights(t *testing.T) {
	tests := []struct {
		weights []int
		first   string // the first picks
	}{
		{weights: []int{5, 1, 1}, first: "abcaaaa" + "abacaaa"},
		{weights: []int{1, 1, 1}, first: "abcabcabc"},
		{weights: []int{2, 1}, first: "abaaba"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			ins := newWeighted(t, tt.weights...)
			p := backend.NewPool(ins...)
			s := newLeastConnections(t)
			if got := pickSequence(s, p, ins, len(tt.first)); got != tt.first {
				t.Errorf("first picks = %s, want %s", got, tt.first)
			}
			// Over many picks, shares match the weights to within one
			// pick per instance.
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			const k = 500
			counts := make([]int, len(ins))
			for range k * total {
				counts[index(ins, s.Select(p, nil))]++
			}
			for i, w := range tt.weights {
				if d := counts[i] - k*w; d < -1 || d > 1 {
					t.Errorf("counts %v over %d picks, want %d·%v ± 1", counts, k*total, k, tt.weights)
					break
				}
			}
		})
	}
}
