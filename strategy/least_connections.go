package strategy

import (
	"net/http"
	"sync/atomic"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	simple("least_connections", func() *LeastConnections { return new(LeastConnections) })
}

// stampShift is the fixed-point precision of LeastConnections' stamps.
const stampShift = 16

// LeastConnections picks the available instance with the fewest requests in
// flight per unit of weight. As in HAProxy's leastconn, idle instances come
// first whatever their weight; busy ones are compared by (in flight + 1) /
// weight, the load they would have with this request.
//
// Ties are broken by a stamp the strategy leaves on the instance it picks:
// the turn at which it is due again, Σw/w turns later (earliest deadline
// first). With equal weights that is the least recently picked instance, so
// ties rotate through every tied instance in turn rather than always
// favouring the first or the last, and an idle pool is served in exact
// round-robin order; with weights, an idle pool is served in proportion to
// them (5, 1, 1 give a b c a a a a ...).
//
// Selection scans every available instance: O(n), a few nanoseconds each.
type LeastConnections struct {
	total listCache[uint64] // read by every selection
	_     [64]byte          // keeps turn off total's cache line
	turn  atomic.Uint64     // written by every selection
}

// Select implements Strategy.
func (s *LeastConnections) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	if len(list) == 0 {
		return nil
	}
	best := list[0]
	bestLoad, bestWeight, bestStamp := best.InFlight(), int64(best.SelectionWeight()), best.PickStamp()
	for _, in := range list[1:] {
		load, weight := in.InFlight(), int64(in.SelectionWeight())
		if lessLoaded(bestLoad, bestWeight, load, weight) {
			continue
		}
		stamp := in.PickStamp()
		if lessLoaded(load, weight, bestLoad, bestWeight) || stamp < bestStamp {
			best, bestLoad, bestWeight, bestStamp = in, load, weight, stamp
		}
	}
	total := *s.total.get(list, totalWeight)
	turn := s.turn.Add(1)
	best.SetPickStamp(turn<<stampShift + total<<stampShift/uint64(bestWeight))
	return best
}

// totalWeight returns the sum of the weights of list.
func totalWeight(list []*backend.Instance) uint64 {
	var sum uint64
	for _, in := range list {
		sum += uint64(in.SelectionWeight())
	}
	return sum
}
