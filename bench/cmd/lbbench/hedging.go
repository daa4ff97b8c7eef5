package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The hedging workload: three backends answering after hedgeWork, one of
// which answers -slow-percent of its requests after hedgeSlow instead,
// under hedgeConns connections (few enough that the server CPU is not
// saturated, so the tail is the slow answers' and not a queue's).
const (
	hedgeWork  = time.Millisecond
	hedgeSlow  = 200 * time.Millisecond
	hedgeConns = 8
)

// hedgeCases are the front ends of the hedging workload.
var hedgeCases = []struct{ key, name, hedge string }{
	{"rp", "reverse_proxy round_robin", ""},
	{"lb", "load_balancer round_robin, no hedging", ""},
	{"lb_p95", "load_balancer, hedge_after p95", "p95"},
	{"lb_20ms", "load_balancer, hedge_after 20ms", "20ms"},
}

// hedgeBench measures the tail one slow instance gives a pool, with and
// without hedging: p50, p99, p99.9 of the clients' requests, and the extra
// requests the backends got for them.
func (b *bench) hedgeBench() error {
	var backends []*proc
	defer func() { stopAllOf(backends) }()
	var ports []int
	for i := 0; i < 3; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		args := []string{"-port", strconv.Itoa(port), "-sleep", hedgeWork.String()}
		if i == 0 {
			args = append(args, "-slow-percent", strconv.FormatFloat(b.opt.slowPercent, 'f', -1, 64), "-slow", hedgeSlow.String())
		}
		p, err := b.procs.start(fmt.Sprintf("hedge backend %d", i+1), b.opt.serverCPUs, nil,
			filepath.Join(b.out, "logs", "hedge-backends.log"), append([]string{b.opt.backendBin}, args...)...)
		if err != nil {
			return err
		}
		backends = append(backends, p)
		ports = append(ports, port)
		if err := waitHTTP(p, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
			return err
		}
	}
	served := func() int64 {
		var t int64
		for _, port := range ports {
			n, _, _ := backendStats(fmt.Sprintf("127.0.0.1:%d", port))
			t += n
		}
		return t
	}

	type sample struct{ rps, p50, p99, p999, extra float64 }
	samples := map[string][]sample{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range hedgeCases {
			var before, after int64
			name := fmt.Sprintf("hedge-%s-r%d", c.key, r)
			res, err := b.measureCase(caseRun{name: name,
				config: func(admin, front int) string { return hedgeConfig(c.key, c.hedge, admin, front, ports) },
				wrk:    wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: hedgeConns},
				before: func() error { before = served(); return nil },
				after: func(int) error {
					// Answers in flight when wrk stopped are counted by the
					// backends and not by wrk: a hedgeSlow later, they are done.
					time.Sleep(hedgeSlow + 50*time.Millisecond)
					after = served()
					return nil
				}})
			if err != nil {
				return err
			}
			if res.Errors() > 0 {
				return fmt.Errorf("hedge %s, round %d: %d errors (see logs/wrk-%s.txt)", c.key, r, res.Errors(), name)
			}
			s := sample{rps: res.RPS(), p50: ms(res.P50), p99: ms(res.P99), p999: ms(res.P999)}
			if res.Requests > 0 {
				s.extra = float64(after-before)/float64(res.Requests) - 1
			}
			samples[c.key] = append(samples[c.key], s)
			progress("hedge    round %d/%d  %-40s %6.0f rps  p50 %6.2f ms  p99 %7.2f ms  p99.9 %7.2f ms  backend requests %+5.1f%%",
				r, b.opt.rounds, c.name, s.rps, s.p50, s.p99, s.p999, 100*s.extra)
		}
	}

	b.printf("## Hedging\n\nThree backends answering in %v; one answers %g%% of its requests after %v instead (round robin: %.1f%% of all requests). "+
		"wrk with %d connections; %d round(s) × %v after %v of warm-up, cases interleaved; medians. "+
		"Backend requests: what the backends served over what the clients got, minus 1 (the hedges' extra load).\n\n",
		hedgeWork, b.opt.slowPercent, hedgeSlow, b.opt.slowPercent/3, hedgeConns, b.opt.rounds, b.opt.duration, b.opt.warmup)
	b.printf("| front end | requests/s | p50 ms | p99 ms | p99.9 ms | backend requests | p99 × no hedging | p99.9 × no hedging |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	med := func(key string) sample {
		var rps, p50, p99, p999, extra []float64
		for _, s := range samples[key] {
			rps, p50, p99, p999, extra = append(rps, s.rps), append(p50, s.p50), append(p99, s.p99), append(p999, s.p999), append(extra, s.extra)
		}
		return sample{median(rps), median(p50), median(p99), median(p999), median(extra)}
	}
	base := med("lb")
	for _, c := range hedgeCases {
		s := med(c.key)
		b.printf("| %s | %.0f | %s | %s | %s | %+.1f%% | %.2f | %.2f |\n", c.name, s.rps, f1(s.p50), f1(s.p99), f1(s.p999), 100*s.extra,
			s.p99/max(base.p99, 0.001), s.p999/max(base.p999, 0.001))
	}
	var checks []string
	for _, c := range hedgeCases {
		if c.hedge == "" {
			continue
		}
		s := med(c.key)
		p := s.p99 / max(base.p99, 0.001)
		checks = append(checks, fmt.Sprintf("%s: p99 %.2f× %s, extra requests %.1f%% %s", c.hedge, p, mark(p <= 0.25), 100*s.extra, mark(s.extra <= 0.05)))
	}
	b.printf("\nTargets (p99 ≤ 0.25× without hedging, at ≤ 5%% extra requests): %s.\n\n", strings.Join(checks, "; "))
	return nil
}

// hedgeConfig is the Caddy config of a hedging case on port, in front of
// the backends.
func hedgeConfig(key, hedge string, adminPort, port int, backends []int) string {
	var site strings.Builder
	if key == "rp" {
		fmt.Fprintf(&site, "\treverse_proxy %s {\n\t\tlb_policy round_robin\n\t}\n", strings.Join(hostPorts(backends), " "))
	} else {
		site.WriteString("\tload_balancer")
		for _, p := range backends {
			fmt.Fprintf(&site, " http://127.0.0.1:%d", p)
		}
		site.WriteString(" {\n\t\tstrategy round_robin\n")
		if hedge != "" {
			fmt.Fprintf(&site, "\t\thedge_after %s\n", hedge)
		}
		site.WriteString("\t}\n")
	}
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, site.String())
}
