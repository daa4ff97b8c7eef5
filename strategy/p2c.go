package strategy

import (
	"net/http"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	simple("p2c", func() *P2C { return new(P2C) })
}

// P2C is the power of two choices: it draws two different available
// instances at random and picks the less loaded, as least_connections
// compares them (idle first, then (in flight + 1) / weight). Drawing two
// is enough to keep loads nearly as even as a full scan (the maximum load
// falls from log n / log log n to log log n), at O(1) cost for any pool
// size, and without the herd behaviour of a scan: concurrent requests that
// read the same counts still spread.
//
// Instances are drawn in proportion to their weights (Walker's alias
// method, built when the list of available instances changes), and a tie
// goes to the first drawn, so an idle pool is served in proportion to the
// weights too.
type P2C struct {
	rng
	samplers listCache[sampler]
}

// Select implements Strategy.
func (s *P2C) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	i, j := s.samplers.get(list, newSampler).pair(&s.rng)
	a, b := list[i], list[j]
	if lessLoaded(b.InFlight(), int64(b.SelectionWeight()), a.InFlight(), int64(a.SelectionWeight())) {
		return b
	}
	return a
}
