package strategy

import (
	"net/http"

	"github.com/golb/caddy-lb/backend"
)

func init() {
	simple("first", func() *First { return new(First) })
}

// First picks the first available instance in config order: active-passive
// failover. The others take traffic only while every instance before them
// is down (or drained with weight 0). Weights other than 0 do not matter.
type First struct{}

// Select implements Strategy.
func (First) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	if list := pool.Available(); len(list) > 0 {
		return list[0]
	}
	return nil
}
