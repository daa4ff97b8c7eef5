package main

import (
	"fmt"
	"strings"
	"time"
)

// hotKeyCases are the front ends of the hot-key workload: every request
// has the same hash key.
var hotKeyCases = []struct{ key, name, site string }{
	{"rp", "reverse_proxy, lb_policy header X-Key", ""},
	{"lb_hash", "load_balancer, strategy hash", ""},
	{"lb_bounded", "load_balancer, strategy hash, hash_balance 1.25", "\t\thash_balance 1.25\n"},
}

// hotKeyBench measures a hot key: three backends that answer in 5 ms,
// every request with the same X-Key, hashed on it; requests/s, p99 and
// how the requests were split over the backends.
func (b *bench) hotKeyBench() error {
	backends, ports, err := b.startBackends(3, 16, 5*time.Millisecond)
	defer func() { stopAllOf(backends) }()
	if err != nil {
		return err
	}
	type sample struct {
		rps, p50, p99 float64
		split         string
	}
	samples := map[string][]sample{}
	const conns = 16
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range hotKeyCases {
			before := make([]int64, len(ports))
			res, err := b.measureCase(caseRun{name: fmt.Sprintf("hotkey-%s-r%d", c.key, r),
				config: func(admin, front int) string { return hotKeyConfig(c.key, c.site, admin, front, ports) },
				wrk:    wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: conns, headers: []string{"X-Key: hot"}},
				before: func() error {
					for i, p := range ports {
						before[i], _, _ = backendStats(fmt.Sprintf("127.0.0.1:%d", p))
					}
					return nil
				}})
			if err != nil {
				return err
			}
			var counts []int64
			var total int64
			for i, p := range ports {
				n, _, _ := backendStats(fmt.Sprintf("127.0.0.1:%d", p))
				counts = append(counts, n-before[i])
				total += n - before[i]
			}
			var parts []string
			for _, n := range counts {
				parts = append(parts, fmt.Sprintf("%.0f", 100*float64(n)/float64(max(total, 1))))
			}
			s := sample{rps: res.RPS(), p50: ms(res.P50), p99: ms(res.P99), split: strings.Join(parts, "/")}
			samples[c.key] = append(samples[c.key], s)
			progress("hotkey   round %d/%d  %-48s %6.0f rps  p50 %6.2f ms  p99 %6.2f ms  split %s", r, b.opt.rounds, c.name, s.rps, s.p50, s.p99, s.split)
		}
	}
	b.printf("## Hot key\n\nThree backends answering in 5 ms; wrk with %d connections, every request with `X-Key: hot`, hashed on that header. "+
		"%d round(s) × %v, cases interleaved; medians (split: the last round's, %% of the requests per backend).\n\n", conns, b.opt.rounds, b.opt.duration)
	b.printf("| front end | requests/s | p50 ms | p99 ms | split over the backends |\n|---|---:|---:|---:|---|\n")
	for _, c := range hotKeyCases {
		var rps, p50, p99 []float64
		for _, s := range samples[c.key] {
			rps, p50, p99 = append(rps, s.rps), append(p50, s.p50), append(p99, s.p99)
		}
		ss := samples[c.key]
		b.printf("| %s | %.0f | %s | %s | %s |\n", c.name, median(rps), f1(median(p50)), f1(median(p99)), ss[len(ss)-1].split)
	}
	b.printf("\n")
	return nil
}

// hotKeyConfig is a hot-key case's Caddy config.
func hotKeyConfig(key, extra string, adminPort, port int, backends []int) string {
	var site strings.Builder
	if key == "rp" {
		fmt.Fprintf(&site, "\treverse_proxy %s {\n\t\tlb_policy header X-Key\n\t}\n", strings.Join(hostPorts(backends), " "))
	} else {
		site.WriteString("\tload_balancer")
		for _, p := range backends {
			fmt.Fprintf(&site, " http://127.0.0.1:%d", p)
		}
		fmt.Fprintf(&site, " {\n\t\tstrategy hash\n\t\thash_key header:X-Key\n%s\t}\n", extra)
	}
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, site.String())
}
