package strategy

import (
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
	"unsafe"

	"github.com/golb/caddy-lb/backend"
)

// This file holds what several strategies share: random numbers, a cache of
// what a strategy derives from the pool's list of available instances, and
// weighted sampling.

// rng draws random numbers: from math/rand/v2's top-level generator, which
// is per thread, lock-free and allocation-free, unless tests set a seeded
// source (one goroutine only).
type rng struct {
	src rand.Source
}

func (g *rng) uint64() uint64 {
	if g.src != nil {
		return g.src.Uint64()
	}
	return rand.Uint64()
}

// intn returns a uniform number in [0, n) (Lemire's multiply-shift; the
// bias, at most n/2^64, is far below anything measurable).
func (g *rng) intn(n int) int {
	hi, _ := bits.Mul64(g.uint64(), uint64(n))
	return int(hi)
}

// sameList reports whether a and b are the same list of available
// instances. Pool.Available hands out a new slice only when the list's
// contents change, so identity is enough.
func sameList(a, b []*backend.Instance) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// listCache holds a value a strategy derives from a list of available
// instances, rebuilt when the list changes. A rebuild racing with another
// builds the same value twice; either may be kept.
type listCache[T any] struct {
	p atomic.Pointer[derived[T]]
}

type derived[T any] struct {
	list []*backend.Instance
	val  T
}

// get returns the value derived from list, building it with build (a
// function, not a closure, so that calling get allocates nothing) if the
// cached one is for another list.
func (c *listCache[T]) get(list []*backend.Instance, build func([]*backend.Instance) T) *T {
	if d := c.p.Load(); d != nil && sameList(d.list, list) {
		return &d.val
	}
	return c.rebuild(list, build)
}

// rebuild is get's slow path, apart so that get can be inlined.
//
//go:noinline
func (c *listCache[T]) rebuild(list []*backend.Instance, build func([]*backend.Instance) T) *T {
	d := &derived[T]{list: list, val: build(list)}
	c.p.Store(d)
	return &d.val
}

// gcd returns the greatest common divisor of a and b.
func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// sampler draws instances of a list at random in proportion to their
// weights, in O(1): a uniform draw when all weights are equal, else
// Walker's alias method (Vose's construction) in integers.
type sampler struct {
	n       int
	uniform bool
	// Alias table: bucket i keeps itself when the draw's fraction is below
	// keep[i] (a fraction of 2^64; ^0 means always), else alias[i].
	keep  []uint64
	alias []uint32
}

// newSampler builds the sampler of list (available instances, weights > 0).
func newSampler(list []*backend.Instance) sampler {
	n := len(list)
	s := sampler{n: n, uniform: true}
	for _, in := range list[1:] {
		if in.SelectionWeight() != list[0].SelectionWeight() {
			s.uniform = false
			break
		}
	}
	if s.uniform {
		return s
	}
	// Scaled weights w·n against a bucket size of W = Σw: bucket i is
	// filled with its own w_i·n and topped up from a large one.
	var total uint64
	scaled := make([]uint64, n)
	for i, in := range list {
		scaled[i] = uint64(in.SelectionWeight()) * uint64(n)
		total += uint64(in.SelectionWeight())
	}
	s.keep = make([]uint64, n)
	s.alias = make([]uint32, n)
	small := make([]int, 0, n)
	large := make([]int, 0, n)
	for i, v := range scaled {
		if v < total {
			small = append(small, i)
		} else {
			large = append(large, i)
		}
	}
	for len(small) > 0 && len(large) > 0 {
		sm, lg := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		s.keep[sm] = fraction(scaled[sm], total)
		s.alias[sm] = uint32(lg)
		scaled[lg] -= total - scaled[sm]
		if scaled[lg] < total {
			large = large[:len(large)-1]
			small = append(small, lg)
		}
	}
	for _, i := range append(small, large...) {
		s.keep[i] = ^uint64(0) // full (up to rounding of the pairing above)
		s.alias[i] = uint32(i)
	}
	return s
}

// fraction returns a/b (a < b) as a fraction of 2^64.
func fraction(a, b uint64) uint64 {
	q, _ := bits.Div64(a, 0, b)
	return q
}

// draw returns the index of a random instance, chosen in proportion to the
// weights.
func (s *sampler) draw(g *rng) int {
	hi, lo := bits.Mul64(g.uint64(), uint64(s.n))
	if s.uniform || lo < s.keep[hi] {
		return int(hi)
	}
	return int(s.alias[hi])
}

// pair returns two different indexes (n ≥ 2): the first drawn in
// proportion to the weights, the second too unless that keeps giving the
// first again (one instance holding nearly all the weight), in which case
// it is drawn uniformly among the others.
func (s *sampler) pair(g *rng) (int, int) {
	if s.uniform {
		i := g.intn(s.n)
		j := g.intn(s.n - 1)
		if j >= i {
			j++
		}
		return i, j
	}
	i := s.draw(g)
	for range 3 {
		if j := s.draw(g); j != i {
			return i, j
		}
	}
	j := g.intn(s.n - 1)
	if j >= i {
		j++
	}
	return i, j
}

// lessLoaded reports whether instance a (with load la, weight wa) is
// strictly less loaded than b: idle instances first, whatever their
// weight, then the fewest requests per unit of weight counting the one
// about to be sent ((in flight + 1) / weight, as HAProxy's leastconn).
func lessLoaded(la, wa, lb, wb int64) bool {
	if la == 0 || lb == 0 {
		return la == 0 && lb != 0
	}
	return (la+1)*wb < (lb+1)*wa
}
