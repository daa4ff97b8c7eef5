package strategy

import (
	"net/http"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	simple("random", func() *Random { return new(Random) })
}

// Random picks an available instance at random, in proportion to the
// weights, in O(1) (Walker's alias method, built when the list of available
// instances changes). It keeps no state between requests, so many load
// balancers in front of one pool spread their traffic without coordinating.
type Random struct {
	rng
	samplers listCache[sampler]
}

// Select implements Strategy.
func (s *Random) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return list[s.samplers.get(list, newSampler).draw(&s.rng)]
}
