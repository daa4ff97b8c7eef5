package strategy

import (
	"fmt"
	"math"

	"github.com/golb/caddy-lb/backend"
)

// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
// as Google's Cloud load balancers and HAProxy's hash-balance-factor do it),
// on the rendezvous ranking of hash.go.
//
// With factor c (hash_balance, more than 1), an instance of the list is
// under the bound while it has fewer than
//
//	ceil(c × (T + 1) × w / W)
//
// requests in flight, T being the requests in flight to the whole list, w
// the instance's selection weight and W the list's total (w / W = 1/n with
// equal weights). A key goes to the first instance of its ranking under
// the bound: its own instance while that has room, else the next, so a key
// moves only while its instance is loaded past the bound, and only as far
// down its ranking as it must. The capacities add up to at least
// c × (T + 1) > T, so some instance is always under the bound; should
// counts read while they change say otherwise, the key's own instance is
// picked.
//
// The bound is relative to the list's load, where max_requests is an
// absolute limit per instance; both apply (the bound picks, the limit
// admits).

// setBalance checks and sets the load bound's factor; 0 means none.
func (s *Hash) setBalance(factor float64) error {
	if factor == 0 {
		return nil
	}
	if !(factor > 1) || math.IsInf(factor, 0) {
		return fmt.Errorf("%w: want more than 1.0, got %v", ErrInvalidOption, factor)
	}
	s.balance = factor
	return nil
}

// bounded returns the index in list (the list hl was derived from) of the
// first instance of key's ranking that is under the load bound of factor.
func (hl *hashList) bounded(list []*backend.Instance, key uint64, factor float64) int {
	var total int64
	for _, in := range list {
		total += in.InFlight()
	}
	// The whole list's capacity, before each instance's share of it.
	capacity := factor * float64(total+1)
	first := hl.best(key)
	if hl.under(list, first, capacity) {
		return first
	}
	for prev, step := first, 1; step < len(list); step++ {
		next := hl.after(key, prev)
		if hl.under(list, next, capacity) {
			return next
		}
		prev = next
	}
	return first
}

// under reports whether instance i of list has room under its share of
// capacity.
func (hl *hashList) under(list []*backend.Instance, i int, capacity float64) bool {
	share := 1 / float64(len(list))
	if hl.weights != nil {
		share = hl.weights[i] / hl.weightSum
	}
	return float64(list[i].InFlight()) < math.Ceil(capacity*share)
}

// after returns the index of the instance that follows instance prev in
// key's ranking (best first, as best ranks them). There must be one.
func (hl *hashList) after(key uint64, prev int) int {
	next := -1
	for i := range hl.ids {
		if i == prev || !hl.before(key, prev, i) {
			continue // prev itself, or ranked before it: walked already
		}
		if next < 0 || hl.before(key, i, next) {
			next = i
		}
	}
	return next
}

// before reports whether instance i ranks before instance j for key: a
// higher score, or an equal score and an earlier place, as best decides.
func (hl *hashList) before(key uint64, i, j int) bool {
	hi, hj := mix(key^hl.ids[i]), mix(key^hl.ids[j])
	if hl.weights == nil {
		return hi > hj || (hi == hj && i < j)
	}
	// Scores −w/ln(u) compared as best compares them: w_i·E_j against
	// w_j·E_i, with E = −ln(u).
	a := hl.weights[i] * -math.Log(unit(hj))
	b := hl.weights[j] * -math.Log(unit(hi))
	return a > b || (a == b && i < j)
}
