package backend_test

import (
	"fmt"
	"slices"
	"testing"
	"unsafe"

	"github.com/golb/caddy-lb/backend"
)

// The tests of this package do not run in parallel: the Pool's cache is
// invalidated by a health change of any instance in the process, and
// testing.AllocsPerRun counts every allocation in the process.

func newInstances(t testing.TB, n int) []*backend.Instance {
	t.Helper()
	ins := make([]*backend.Instance, n)
	for i := range ins {
		ins[i] = backend.NewWeighted(mustParse(t, fmt.Sprintf("http://127.0.0.1:%d", 10001+i)), 1)
	}
	return ins
}

// names returns the ports of the instances, to print them readably.
func names(list []*backend.Instance) []string {
	out := make([]string, len(list))
	for i, in := range list {
		out[i] = in.URL().Port()
	}
	return out
}

func sameSlice(a, b []*backend.Instance) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

func TestPoolAll(t *testing.T) {
	ins := newInstances(t, 3)
	p := backend.NewPool(ins...)
	ins[1].SetHealthy(false)
	if got := p.All(); !slices.Equal(got, ins) {
		t.Errorf("All() = %v, want every instance in config order %v", names(got), names(ins))
	}
}

func TestPoolAvailable(t *testing.T) {
	tests := []struct {
		name string
		n    int
		down []int
		want []int // indexes of the instances available, in order
	}{
		{name: "empty pool", n: 0, want: []int{}},
		{name: "all healthy", n: 3, want: []int{0, 1, 2}},
		{name: "first down", n: 3, down: []int{0}, want: []int{1, 2}},
		{name: "middle down", n: 3, down: []int{1}, want: []int{0, 2}},
		{name: "last down", n: 3, down: []int{2}, want: []int{0, 1}},
		{name: "two of five down", n: 5, down: []int{1, 3}, want: []int{0, 2, 4}},
		{name: "all down", n: 3, down: []int{0, 1, 2}, want: []int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, tt.n)
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			p := backend.NewPool(ins...)
			want := make([]*backend.Instance, 0, len(tt.want))
			for _, i := range tt.want {
				want = append(want, ins[i])
			}
			got := p.Available()
			if !slices.Equal(got, want) {
				t.Fatalf("Available() = %v, want %v", names(got), names(want))
			}
			if again := p.Available(); !slices.Equal(again, want) {
				t.Fatalf("second Available() = %v, want %v", names(again), names(want))
			}
		})
	}
}

func TestPoolAvailableRebuiltAfterHealthChange(t *testing.T) {
	ins := newInstances(t, 4)
	a, b, c, d := ins[0], ins[1], ins[2], ins[3]
	p := backend.NewPool(ins...)

	steps := []struct {
		name    string
		change  func()
		want    []*backend.Instance
		rebuilt bool // whether a new list is expected
	}{
		{name: "initial", change: func() {}, want: []*backend.Instance{a, b, c, d}, rebuilt: true},
		{name: "nothing changed", change: func() {}, want: []*backend.Instance{a, b, c, d}},
		{name: "b down", change: func() { b.SetHealthy(false) }, want: []*backend.Instance{a, c, d}, rebuilt: true},
		{name: "b down again (no change)", change: func() { b.SetHealthy(false) }, want: []*backend.Instance{a, c, d}},
		{name: "a healthy again (no change)", change: func() { a.SetHealthy(true) }, want: []*backend.Instance{a, c, d}},
		{name: "d down", change: func() { d.SetHealthy(false) }, want: []*backend.Instance{a, c}, rebuilt: true},
		{name: "b back", change: func() { b.SetHealthy(true) }, want: []*backend.Instance{a, b, c}, rebuilt: true},
		{
			// The epoch is per process, so the list is checked again, but
			// its contents did not change: the same slice comes back, so
			// what strategies derived from it stays valid.
			name:   "instance of another pool changes",
			change: func() { other := newInstances(t, 1)[0]; other.SetHealthy(false) },
			want:   []*backend.Instance{a, b, c},
		},
		{name: "all down", change: func() { a.SetHealthy(false); b.SetHealthy(false); c.SetHealthy(false) }, want: []*backend.Instance{}, rebuilt: true},
		{name: "all back", change: func() { a.SetHealthy(true); b.SetHealthy(true); c.SetHealthy(true); d.SetHealthy(true) }, want: []*backend.Instance{a, b, c, d}, rebuilt: true},
	}
	var prev, prevCopy []*backend.Instance
	for i, s := range steps {
		s.change()
		got := p.Available()
		if !slices.Equal(got, s.want) {
			t.Fatalf("step %d %q: Available() = %v, want %v", i, s.name, names(got), names(s.want))
		}
		if i > 0 && len(s.want) > 0 && len(prev) > 0 {
			if same := sameSlice(got, prev); same == s.rebuilt {
				t.Errorf("step %d %q: same slice as before = %v, want %v", i, s.name, same, !s.rebuilt)
			}
		}
		// A list handed out earlier is never modified by a rebuild: callers
		// may still be reading it.
		if !slices.Equal(prev, prevCopy) {
			t.Errorf("step %d %q: a previously returned list changed from %v to %v", i, s.name, names(prevCopy), names(prev))
		}
		prev, prevCopy = got, slices.Clone(got)
	}
}

func TestPoolAvailableSteadyStateAllocatesNothing(t *testing.T) {
	tests := []struct {
		name string
		n    int
		down []int
	}{
		{name: "all healthy", n: 3},
		{name: "one down", n: 3, down: []int{1}},
		{name: "large", n: 1000, down: []int{0, 500, 999}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := newInstances(t, tt.n)
			for _, i := range tt.down {
				ins[i].SetHealthy(false)
			}
			p := backend.NewPool(ins...)
			first := p.Available()
			var got []*backend.Instance
			allocs := testing.AllocsPerRun(100, func() { got = p.Available() })
			if allocs != 0 {
				t.Errorf("Available() allocates %v times per call with no health change, want 0", allocs)
			}
			if !sameSlice(got, first) {
				t.Error("Available() returned a different slice with no health change")
			}
			if want := tt.n - len(tt.down); len(got) != want {
				t.Errorf("len(Available()) = %d, want %d", len(got), want)
			}
		})
	}
}
