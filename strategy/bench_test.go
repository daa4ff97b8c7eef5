package strategy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// BenchmarkSelect compares our strategies with Caddy's reverse_proxy
// selection policies on pools of the same size, all healthy and idle:
//
//	go test -run='^$' -bench=Select ./strategy
//
// Caddy's Upstream embeds an exported *Host holding its live state (which
// Caddy fills from a process-wide pool on Provision); it is set here the way
// Caddy's own selection benchmarks do, without provisioning a handler.
func BenchmarkSelect(b *testing.B) {
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)

	for _, n := range []int{3, 100, 1000} {
		ins := newInstances(b, n)
		pool := backend.NewPool(ins...)
		ups := make(reverseproxy.UpstreamPool, n)
		for i, in := range ins {
			ups[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: in.URL().Host}
		}

		ours := func(name string) func() bool {
			s, err := strategy.New(name)
			if err != nil {
				b.Fatal(err)
			}
			return func() bool { return s.Select(pool, req) != nil }
		}
		caddys := func(s reverseproxy.Selector) func() bool {
			return func() bool { return s.Select(ups, req, nil) != nil }
		}
		impls := []struct {
			name string
			sel  func() bool // one selection; false if it found nothing
		}{
			{"round_robin", ours("round_robin")},
			{"caddy_round_robin", caddys(new(reverseproxy.RoundRobinSelection))},
			{"least_connections", ours("least_connections")},
			{"caddy_least_conn", caddys(new(reverseproxy.LeastConnSelection))},
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
