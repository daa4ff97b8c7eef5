package strategy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// BenchmarkSelect compares our strategies with Caddy's reverse_proxy
// selection policies on pools of the same size, all healthy and idle:
//
//	go test -run='^$' -bench=Select -benchtime=200ms ./strategy
//
// Pairs, ours then Caddy's: round_robin / RoundRobinSelection (equal
// weights); round_robin with weights 1-4 / WeightedRoundRobinSelection;
// least_connections / LeastConnSelection; p2c and least_latency /
// RandomChoiceSelection with choose 2 (Caddy has nothing latency-aware);
// hash with hash_key header:X-Key / HeaderHashSelection (and hash with
// weights 1-4, which Caddy has not); random /
// RandomSelection; first / FirstSelection.
//
// Caddy's Upstream embeds an exported *Host holding its live state (which
// Caddy fills from a process-wide pool on Provision); it is set here the way
// Caddy's own selection benchmarks do, without provisioning a handler.
func BenchmarkSelect(b *testing.B) {
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	req.Header.Set("X-Key", "user-12345")

	for _, n := range []int{3, 100, 1000, 10000} {
		equal := make([]int, n)
		weighted := make([]int, n)
		for i := range n {
			equal[i], weighted[i] = 1, 1+i%4
		}
		pool := backend.NewPool(newWeighted(b, equal...)...)
		wpool := backend.NewPool(newWeighted(b, weighted...)...)
		ups := make(reverseproxy.UpstreamPool, n)
		for i, in := range pool.All() {
			ups[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: in.URL().Host}
		}

		ours := func(name string, opts strategy.Options, p *backend.Pool) func() bool {
			s, err := strategy.NewWithOptions(name, opts)
			if err != nil {
				b.Fatal(err)
			}
			if obs, ok := s.(strategy.Observer); ok {
				for i, in := range p.All() {
					obs.Observe(in, time.Duration(1+i%7)*time.Millisecond)
				}
			}
			return func() bool { return s.Select(p, req) != nil }
		}
		caddys := func(s reverseproxy.Selector) func() bool {
			return func() bool { return s.Select(ups, req, nil) != nil }
		}
		wrr := &reverseproxy.WeightedRoundRobinSelection{Weights: weighted}
		if err := wrr.Provision(caddy.Context{}); err != nil {
			b.Fatal(err)
		}
		impls := []struct {
			name string
			sel  func() bool // one selection; false if it found nothing
		}{
			{"round_robin", ours("round_robin", strategy.Options{}, pool)},
			{"caddy_round_robin", caddys(new(reverseproxy.RoundRobinSelection))},
			{"round_robin_weighted", ours("round_robin", strategy.Options{}, wpool)},
			{"caddy_weighted_round_robin", caddys(wrr)},
			{"least_connections", ours("least_connections", strategy.Options{}, pool)},
			{"caddy_least_conn", caddys(new(reverseproxy.LeastConnSelection))},
			{"p2c", ours("p2c", strategy.Options{}, pool)},
			{"least_latency", ours("least_latency", strategy.Options{}, pool)},
			{"caddy_random_choose", caddys(&reverseproxy.RandomChoiceSelection{Choose: 2})},
			{"hash", ours("hash", strategy.Options{HashKey: "header:X-Key"}, pool)},
			{"caddy_header_hash", caddys(&reverseproxy.HeaderHashSelection{Field: "X-Key"})},
			{"hash_weighted", ours("hash", strategy.Options{HashKey: "header:X-Key"}, wpool)},
			{"random", ours("random", strategy.Options{}, pool)},
			{"caddy_random", caddys(new(reverseproxy.RandomSelection))},
			{"first", ours("first", strategy.Options{}, pool)},
			{"caddy_first", caddys(new(reverseproxy.FirstSelection))},
		}
		for _, impl := range impls {
			if !impl.sel() {
				b.Fatalf("%s found no instance among %d healthy ones", impl.name, n)
			}
			prefix := fmt.Sprintf("%s/n=%d", impl.name, n)
			b.Run(prefix+"/serial", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					impl.sel()
				}
			})
			b.Run(prefix+"/parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						impl.sel()
					}
				})
			})
		}
	}
}
