package strategy

import (
	"net/http"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	Register("least_connections", func() Strategy { return new(LeastConnections) })
}

// LeastConnections picks the available instance with the fewest requests in
// flight. Among instances tied at that minimum it picks the one it picked
// least recently, so ties rotate through every tied instance in turn rather
// than always favouring the first or the last, and an idle pool is served in
// exact round-robin order.
type LeastConnections struct{}

// Select implements Strategy.
func (s *LeastConnections) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	if len(list) == 0 {
		return nil
	}
	best := list[0]
	bestLoad, bestPicked := best.InFlight(), best.LastPicked()
	for _, in := range list[1:] {
		load := in.InFlight()
		if load > bestLoad {
			continue
		}
		picked := in.LastPicked()
		if load < bestLoad || picked < bestPicked {
			best, bestLoad, bestPicked = in, load, picked
		}
	}
	best.MarkPicked()
	return best
}
