package strategy

import (
	"cmp"
	"math/bits"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	simple("round_robin", func() *RoundRobin { return new(RoundRobin) })
}

// Bounds on the smooth weighted round-robin schedule: its length (entries of
// 4 bytes) and the work of building it (entries × distinct weights). Past
// either, RoundRobin falls back to a golden-ratio stride. Variables so that
// tests can lower them.
var (
	maxSchedule     uint64 = 1 << 18
	maxScheduleWork uint64 = 1 << 24
)

// RoundRobin hands requests to the available instances in turn, in
// proportion to their weights, with the smooth weighted round robin of
// nginx: weights 5, 1, 1 give a a b a c a a, the heavy instance's turns
// spread out rather than bunched. With equal weights it is plain round
// robin.
//
// It works on the list of available instances rather than skipping
// unavailable ones in the full list, so an instance that is down or
// drained (weight 0) leaves the others exactly their weighted shares: every
// run of Σw consecutive selections (weights divided by their greatest
// common divisor) picks each available instance exactly w times, instead of
// one neighbour taking the missing instance's share.
//
// Selection is one atomic increment and an index into a schedule computed
// when the list of available instances changes. The schedule holds one
// entry per turn (Σw of them); when that would pass 2^18 entries, or the
// building work (Σw × distinct weights) 2^24 steps, the turns are taken
// instead at a golden-ratio stride through the cumulative weights (an
// O(log n) search): still exact over every Σw selections and well spread,
// though not nginx's order.
type RoundRobin struct {
	schedule listCache[schedule] // read by every selection
	_        [64]byte            // keeps next off schedule's cache line
	next     atomic.Uint64       // written by every selection
}

// schedule is how RoundRobin turns its counter into an instance of a list.
// With neither order nor cum set, weights are equal: plain round robin.
type schedule struct {
	// The turn of counter c is c mod period: into order if set, else into
	// the list. div divides by period without a division instruction.
	period uint64
	div    fastmod

	order []uint32 // the smooth WRR sequence, one list index per turn

	// The fallback: turn c goes to the instance whose cumulative weight
	// range holds (c mod total)·stride mod total.
	cum    []uint64
	total  uint64
	stride uint64
}

// Select implements Strategy.
func (s *RoundRobin) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	if len(list) == 0 {
		return nil
	}
	c := s.next.Add(1) - 1
	if len(list) == 1 {
		return list[0]
	}
	sc := s.schedule.get(list, newSchedule)
	if sc.cum != nil {
		hi, lo := bits.Mul64(c%sc.total, sc.stride)
		_, pos := bits.Div64(hi, lo, sc.total)
		i, _ := slices.BinarySearch(sc.cum, pos+1) // first cumulative weight above pos
		return list[i]
	}
	turn := sc.div.mod(c, sc.period)
	if sc.order != nil {
		return list[sc.order[turn]]
	}
	return list[turn]
}

// fastmod computes c mod d for a fixed d < 2^32 with two multiplications
// instead of a division (Lemire, Kaser and Kurz, "Faster remainder by
// direct computation", 2019), exact for c < 2^32.
type fastmod struct{ m uint64 }

func newFastmod(d uint64) fastmod { return fastmod{m: ^uint64(0)/d + 1} }

// mod returns c mod d; d must be the divisor f was made for.
func (f fastmod) mod(c, d uint64) uint64 {
	if c > 1<<32-1 { // after 4 billion selections
		return c % d
	}
	hi, _ := bits.Mul64(f.m*c, d)
	return hi
}

// newSchedule computes the schedule of a list of available instances.
func newSchedule(list []*backend.Instance) schedule {
	var g uint64
	for _, in := range list {
		g = gcd(g, uint64(in.SelectionWeight()))
	}
	var total uint64
	for _, in := range list {
		total += uint64(in.SelectionWeight()) / g
	}
	if total == uint64(len(list)) {
		// All weights equal: plain round robin.
		return schedule{period: total, div: newFastmod(total)}
	}

	// Instances of equal weight take their turns in config order, so one
	// group per distinct weight, and one step compares the groups only.
	type group struct {
		weight  int64
		members []uint32 // list indexes, ascending
		picks   int64
	}
	var groups []group
	for i, in := range list {
		w := int64(uint64(in.SelectionWeight()) / g)
		k, found := slices.BinarySearchFunc(groups, w, func(gr group, w int64) int { return cmp.Compare(gr.weight, w) })
		if !found {
			groups = slices.Insert(groups, k, group{weight: w})
		}
		groups[k].members = append(groups[k].members, uint32(i))
	}
	if total <= maxSchedule && total*uint64(len(groups)) <= maxScheduleWork {
		// nginx: at each turn every instance's current weight grows by its
		// weight, the largest wins (the earliest in config order on a tie)
		// and loses the total. After t turns an instance picked k times
		// stands at t·w − total·k, and within a group of equal weights the
		// least picked (the next in config order) stands highest.
		order := make([]uint32, 0, total)
		t64 := int64(total)
		for t := int64(1); t <= t64; t++ {
			best, bestVal, bestIdx := -1, int64(0), uint32(0)
			for gi := range groups {
				gr := &groups[gi]
				m := int64(len(gr.members))
				val := t*gr.weight - t64*(gr.picks/m)
				idx := gr.members[gr.picks%m]
				if best < 0 || val > bestVal || (val == bestVal && idx < bestIdx) {
					best, bestVal, bestIdx = gi, val, idx
				}
			}
			order = append(order, bestIdx)
			groups[best].picks++
		}
		return schedule{period: total, div: newFastmod(total), order: order}
	}

	sc := schedule{cum: make([]uint64, len(list)), total: total}
	var sum uint64
	for i, in := range list {
		sum += uint64(in.SelectionWeight()) / g
		sc.cum[i] = sum
	}
	// A stride of about total/φ, coprime with total, visits every position
	// once per total turns, each turn far from the previous few.
	sc.stride = max(uint64(float64(total)*0.6180339887498949), 1)
	for gcd(sc.stride, total) != 1 {
		sc.stride++
	}
	return sc
}
