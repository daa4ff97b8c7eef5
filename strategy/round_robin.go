package strategy

import (
	"net/http"
	"sync/atomic"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	Register("round_robin", func() Strategy { return new(RoundRobin) })
}

// RoundRobin hands requests to the available instances in turn. It indexes
// the list of available instances rather than skipping unavailable ones in
// the full list, so an unhealthy instance's share is spread evenly over the
// others instead of all landing on its neighbour: with N available
// instances, every run of N consecutive selections picks each exactly once.
type RoundRobin struct {
	next atomic.Uint64
}

// Select implements Strategy.
func (s *RoundRobin) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	if len(list) == 0 {
		return nil
	}
	n := s.next.Add(1) - 1
	return list[n%uint64(len(list))]
}
