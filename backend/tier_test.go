package backend_test

import (
	"slices"
	"testing"

	"github.com/golb/caddy-lb/backend"
)

// TestTierChoice: which tier a pool serves from, for the health of its
// tiers, the failover threshold and the panic threshold; what a retry
// falls back to.
func TestTierChoice(t *testing.T) {
	tests := []struct {
		name       string
		priorities []int
		down       []int
		drained    []int
		failover   int
		panic      int

		wantTier     int
		wantList     []int // indexes, in order
		wantFallback []int
		wantPanic    bool
	}{
		{name: "one tier", priorities: []int{0, 0, 0}, wantTier: 0, wantList: []int{0, 1, 2}},
		{name: "one tier of priority 3", priorities: []int{3, 3}, down: []int{0}, wantTier: 3, wantList: []int{1}},
		{name: "backup untouched while the first tier serves", priorities: []int{0, 0, 1, 1},
			wantTier: 0, wantList: []int{0, 1}, wantFallback: []int{2, 3}},
		{name: "config order kept within tiers", priorities: []int{1, 0, 1, 0},
			wantTier: 0, wantList: []int{1, 3}, wantFallback: []int{0, 2}},
		{name: "one of the first tier left: it serves (backup semantics)", priorities: []int{0, 0, 0, 0, 1}, down: []int{0, 1, 2},
			wantTier: 0, wantList: []int{3}, wantFallback: []int{4}},
		{name: "first tier down: backup", priorities: []int{0, 0, 1, 1}, down: []int{0, 1},
			wantTier: 1, wantList: []int{2, 3}},
		{name: "first tier drained: backup", priorities: []int{0, 0, 1}, drained: []int{0, 1},
			wantTier: 1, wantList: []int{2}},
		{name: "first two tiers down: third", priorities: []int{0, 1, 2, 2}, down: []int{0, 1},
			wantTier: 2, wantList: []int{2, 3}},
		{name: "second tier down, first serves", priorities: []int{0, 1, 2}, down: []int{1},
			wantTier: 0, wantList: []int{0}, wantFallback: []int{2}},
		{name: "threshold 50: half available is enough", priorities: []int{0, 0, 0, 0, 1}, down: []int{0, 1}, failover: 50,
			wantTier: 0, wantList: []int{2, 3}, wantFallback: []int{4}},
		{name: "threshold 50: a quarter hands over", priorities: []int{0, 0, 0, 0, 1}, down: []int{0, 1, 2}, failover: 50,
			wantTier: 1, wantList: []int{4}},
		{name: "threshold 50: drained ones not counted", priorities: []int{0, 0, 0, 0, 1}, down: []int{0}, drained: []int{1, 2}, failover: 50,
			wantTier: 0, wantList: []int{3}, wantFallback: []int{4}},
		{name: "threshold: no tier meets it, the best with one available", priorities: []int{0, 0, 0, 0, 1, 1, 1, 1}, down: []int{0, 1, 2, 4, 5, 6},
			failover: 50, wantTier: 0, wantList: []int{3}, wantFallback: []int{7}},
		{name: "threshold: the first tier meeting it, past one that does not", priorities: []int{0, 0, 1, 1, 1, 1, 2}, down: []int{0, 1, 2, 3, 4},
			failover: 50, wantTier: 2, wantList: []int{6}},
		{name: "nothing available, no panic: empty", priorities: []int{0, 1}, down: []int{0, 1},
			wantTier: 0, wantList: []int{}},
		{name: "a tier that would panic hands over", priorities: []int{0, 0, 0, 0, 1, 1}, down: []int{0, 1, 2}, panic: 50,
			wantTier: 1, wantList: []int{4, 5}},
		{name: "panic in the best tier when no tier qualifies", priorities: []int{0, 0, 0, 0, 1, 1}, down: []int{0, 1, 2, 4}, panic: 60,
			wantTier: 0, wantList: []int{0, 1, 2, 3}, wantFallback: []int{5}, wantPanic: true},
		{name: "all down, panic: the best tier", priorities: []int{0, 0, 1}, down: []int{0, 1, 2}, panic: 50,
			wantTier: 0, wantList: []int{0, 1}, wantPanic: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, len(tt.priorities))
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			for _, i := range tt.drained {
				ins[i].SetDraining(true, backend.Now())
			}
			p := backend.NewPool()
			p.SetMembers(ins, tt.priorities)
			p.SetFailoverThreshold(tt.failover)
			p.SetPanicThreshold(tt.panic)
			pick := func(idx []int) []*backend.Instance {
				out := []*backend.Instance{}
				for _, i := range idx {
					out = append(out, ins[i])
				}
				return out
			}
			if got := p.ActiveTier(); got != tt.wantTier {
				t.Errorf("ActiveTier() = %d, want %d", got, tt.wantTier)
			}
			if got, want := p.Available(), pick(tt.wantList); !slices.Equal(got, want) {
				t.Errorf("Available() = %v, want %v", names(got), names(want))
			}
			if got, want := p.Fallback(), pick(tt.wantFallback); !slices.Equal(got, want) && len(got)+len(want) > 0 {
				t.Errorf("Fallback() = %v, want %v", names(got), names(want))
			}
			if got := p.Panicking(); got != tt.wantPanic {
				t.Errorf("Panicking() = %v, want %v", got, tt.wantPanic)
			}
			all, prios := p.Members()
			if !slices.Equal(all, ins) || !slices.Equal(prios, tt.priorities) {
				t.Errorf("Members() = %v %v, want %v %v", names(all), prios, names(ins), tt.priorities)
			}
		})
	}
}

// TestTierChanges: traffic leaves a tier when it fails and returns as soon
// as it qualifies again; each change is announced once, the first choice
// not at all.
func TestTierChanges(t *testing.T) {
	ins := newInstances(t, 4)
	p := backend.NewPool()
	p.SetMembers(ins, []int{0, 0, 1, 1})
	p.SetFailoverThreshold(50)
	type change struct{ from, to int }
	var changes []change
	p.SetOnTierChange(func(from, to int) { changes = append(changes, change{from, to}) })

	steps := []struct {
		name string
		do   func()
		tier int
	}{
		{"initial", func() {}, 0},
		{"one primary down: 50% is enough", func() { ins[0].SetHealthy(false) }, 0},
		{"both primaries down", func() { ins[1].SetHealthy(false) }, 1},
		{"one back: 50% again", func() { ins[0].SetHealthy(true) }, 0},
		{"a backup down changes nothing", func() { ins[3].SetHealthy(false) }, 0},
	}
	for _, s := range steps {
		s.do()
		if got := p.ActiveTier(); got != s.tier {
			t.Fatalf("%s: ActiveTier() = %d, want %d", s.name, got, s.tier)
		}
	}
	if want := []change{{0, 1}, {1, 0}}; !slices.Equal(changes, want) {
		t.Errorf("changes announced: %v, want %v", changes, want)
	}
}

// TestTiersSteadyStateAllocatesNothing: with tiers as without, reading the
// lists costs no allocation while nothing changes.
func TestTiersSteadyStateAllocatesNothing(t *testing.T) {
	ins := newInstances(t, 6)
	ins[0].SetHealthy(false)
	p := backend.NewPool()
	p.SetMembers(ins, []int{0, 0, 1, 1, 2, 2})
	p.Available()
	allocs := testing.AllocsPerRun(100, func() {
		_ = p.Available()
		_ = p.Fallback()
		_ = p.ActiveTier()
	})
	if allocs != 0 {
		t.Errorf("Available, Fallback and ActiveTier allocate %v times per call with no change, want 0", allocs)
	}
}
