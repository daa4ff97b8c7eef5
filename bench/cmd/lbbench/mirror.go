package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// mirrorCases are the front ends of the mirroring workload: the shadow is
// "" for none, or which shadow backend the copies go to.
var mirrorCases = []struct{ key, name, shadow string }{
	{"rp", "reverse_proxy round_robin", ""},
	{"lb", "load_balancer, no mirror", ""},
	{"lb_mirror", "load_balancer, mirror 100% to a healthy shadow", "healthy"},
	{"lb_dead", "load_balancer, mirror 100% to a shadow that is down", "dead"},
	{"lb_slow", "load_balancer, mirror 100% to a shadow that answers in 10 s", "slow"},
}

// mirrorBench measures what mirroring costs the clients: the tiny
// workload through load_balancer without a mirror and with every request
// copied to a shadow that is healthy, down or very slow, and through
// reverse_proxy; requests/s, p50, p99, and the copies sent and dropped.
func (b *bench) mirrorBench() error {
	backends, ports, err := b.startBackends(3, 16, 0)
	defer func() { stopAllOf(backends) }()
	if err != nil {
		return err
	}
	shadows := map[string]int{}
	for _, kind := range []string{"healthy", "slow"} {
		port, err := freePort()
		if err != nil {
			return err
		}
		sleep := "0s"
		if kind == "slow" {
			sleep = "10s"
		}
		p, err := b.procs.start("shadow "+kind, b.opt.serverCPUs, nil, filepath.Join(b.out, "logs", "mirror-shadows.log"),
			b.opt.backendBin, "-port", strconv.Itoa(port), "-sleep", sleep)
		if err != nil {
			return err
		}
		backends = append(backends, p)
		if err := waitHTTP(p, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
			return err
		}
		shadows[kind] = port
	}
	if shadows["dead"], err = freePort(); err != nil { // nothing listens there
		return err
	}

	type sample struct {
		rps, p50, p99     float64
		mirrored, dropped uint64
	}
	samples := map[string][]sample{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range mirrorCases {
			var s sample
			name := fmt.Sprintf("mirror-%s-r%d", c.key, r)
			res, err := b.measureCase(caseRun{name: name,
				config: func(admin, front int) string {
					if c.key == "rp" {
						return reverseProxyConfig(admin, front, ports)
					}
					return mirrorConfig(admin, front, ports, c.shadow, shadows[c.shadow])
				},
				wrk: wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: b.opt.connections},
				after: func(admin int) (err error) {
					if c.shadow != "" {
						s.mirrored, s.dropped, err = mirrorReport(admin)
					}
					return err
				}})
			if err != nil {
				return err
			}
			if res.Errors() > 0 {
				return fmt.Errorf("mirror %s, round %d: %d errors (see logs/wrk-%s.txt)", c.key, r, res.Errors(), name)
			}
			s.rps, s.p50, s.p99 = res.RPS(), ms(res.P50), ms(res.P99)
			samples[c.key] = append(samples[c.key], s)
			progress("mirror   round %d/%d  %-58s %7.0f rps  p50 %6.2f ms  p99 %6.2f ms  copies sent %d, dropped %d",
				r, b.opt.rounds, c.name, s.rps, s.p50, s.p99, s.mirrored, s.dropped)
		}
	}

	b.printf("## Mirroring\n\nThe tiny workload (%d connections, three backends) through load_balancer without a mirror, and with every request copied "+
		"(mirror_percent 100, the default concurrency 16 and queue 64) to a shadow that is healthy, down (nothing listens), or answers after 10 s; and "+
		"through reverse_proxy. %d round(s) × %v, cases interleaved; medians, ratios to load_balancer without a mirror in the same round. "+
		"Copies: sent and dropped over the whole run of a case (warm-up included), from the report.\n\n", b.opt.connections, b.opt.rounds, b.opt.duration)
	b.printf("| case | requests/s | p50 ms | p99 ms | rps × no mirror | p99 × no mirror | copies sent | copies dropped |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	base := samples["lb"]
	for _, c := range mirrorCases {
		var rps, p50, p99, rr, pr, sent, dropped []float64
		for i, s := range samples[c.key] {
			rps, p50, p99 = append(rps, s.rps), append(p50, s.p50), append(p99, s.p99)
			rr, pr = append(rr, s.rps/max(base[i].rps, 1)), append(pr, s.p99/max(base[i].p99, 0.001))
			sent, dropped = append(sent, float64(s.mirrored)), append(dropped, float64(s.dropped))
		}
		copies := []string{"–", "–"}
		if c.shadow != "" {
			copies = []string{fmt.Sprintf("%.0f", median(sent)), fmt.Sprintf("%.0f", median(dropped))}
		}
		b.printf("| %s | %.0f | %s | %s | %.2f | %.2f | %s |\n", c.name, median(rps), f1(median(p50)), f1(median(p99)), median(rr), median(pr), strings.Join(copies, " | "))
	}
	b.printf("\n")
	return nil
}

// mirrorConfig is load_balancer round robin over the backends, mirroring
// every request to a pool of the shadow on shadowPort (none for kind "").
func mirrorConfig(adminPort, port int, backends []int, kind string, shadowPort int) string {
	var site strings.Builder
	site.WriteString("\tload_balancer {\n\t\tapp * {\n\t\t\tstrategy round_robin\n\t\t\tinstances")
	for _, p := range backends {
		fmt.Fprintf(&site, " http://127.0.0.1:%d", p)
	}
	site.WriteString("\n")
	if kind != "" {
		fmt.Fprintf(&site, "\t\t\tmirror shadow\n\t\t}\n\t\tpool shadow {\n\t\t\tinstances http://127.0.0.1:%d\n\t\t\tretries 0\n", shadowPort)
	}
	site.WriteString("\t\t}\n\t}\n")
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, site.String())
}

// mirrorReport reads the copies sent and dropped from a Caddy's report.
func mirrorReport(adminPort int) (mirrored, dropped uint64, err error) {
	var rep struct {
		Apps []struct {
			Mirror *struct {
				Mirrored uint64 `json:"mirrored"`
				Dropped  uint64 `json:"dropped"`
			} `json:"mirror"`
		} `json:"apps"`
	}
	if err := getJSON(fmt.Sprintf("http://127.0.0.1:%d/api/v1/loadBalancers/report", adminPort), &rep); err != nil {
		return 0, 0, err
	}
	for _, app := range rep.Apps {
		if app.Mirror != nil {
			return app.Mirror.Mirrored, app.Mirror.Dropped, nil
		}
	}
	return 0, 0, fmt.Errorf("the report has no mirror")
}
