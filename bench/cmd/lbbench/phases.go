package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// capacityPhases are the capacities (requests at once) of the overload
// backend while one case runs, one measured window each, in this order.
var capacityPhases = []int{8, 16, 4}

// A phaseCase is a front end of the changing-capacity workload; limit is
// its max_requests ("" for none), for load_balancer cases.
type phaseCase struct {
	key, name, limit string
	rp               bool
}

// phaseCases are the front ends: auto, each static limit that is best in
// one phase, no limit, and reverse_proxy.
var phaseCases = []phaseCase{
	{key: "auto", name: "load_balancer, max_requests auto", limit: "auto"},
	{key: "static4", name: "load_balancer, max_requests 4", limit: "4"},
	{key: "static8", name: "load_balancer, max_requests 8", limit: "8"},
	{key: "static16", name: "load_balancer, max_requests 16", limit: "16"},
	{key: "nolimit", name: "load_balancer, no limit"},
	{key: "rp", name: "reverse_proxy, unhealthy_request_count 8, lb_try_duration 5s", rp: true},
}

// phaseSample is one case's measurement in one phase of one round.
type phaseSample struct {
	goodput, errorRate, p50, p99 float64
}

// capacityBench runs every case through the capacity phases: one Caddy per
// case and round, warmed up at the first capacity, then a window of
// -duration per phase with the backend's capacity changed just before it
// (so the limit must follow within the window: that time counts).
func (b *bench) capacityBench() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	backend, err := b.procs.start("capacity backend", b.opt.serverCPUs, nil, filepath.Join(b.out, "logs", "capacity-backend.log"),
		b.opt.backendBin, "-port", strconv.Itoa(port), "-sleep", overloadWork.String(), "-cap", strconv.Itoa(capacityPhases[0]))
	if err != nil {
		return err
	}
	defer stop(backend, 5*time.Second)
	if err := waitHTTP(backend, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
		return err
	}
	setCap := func(n int) error {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/_cap?n=%d", port, n), "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("backend /_cap: status %d", resp.StatusCode)
		}
		return nil
	}

	samples := map[string][][]phaseSample{} // case → phase → rounds
	for _, c := range phaseCases {
		samples[c.key] = make([][]phaseSample, len(capacityPhases))
	}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range phaseCases {
			admin, err1 := freePort()
			front, err2 := freePort()
			if err1 != nil || err2 != nil {
				return fmt.Errorf("no free port: %v %v", err1, err2)
			}
			if err := setCap(capacityPhases[0]); err != nil {
				return err
			}
			caddy, err := b.startCaddy(fmt.Sprintf("capacity-%s-r%d", c.key, r), capacityConfig(c, admin, front, port),
				fmt.Sprintf("http://127.0.0.1:%d/config/", admin), "")
			if err != nil {
				return err
			}
			run := wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: overloadConns,
				url: fmt.Sprintf("http://127.0.0.1:%d/", front), script: filepath.Join(b.work, "report.lua"),
				timeout: overloadClientTimeout}
			if b.opt.warmup > 0 {
				run.duration = b.opt.warmup
				if _, err := b.runWrk(run); err != nil {
					stop(caddy, 5*time.Second)
					return err
				}
			}
			for i, capacity := range capacityPhases {
				if err := setCap(capacity); err != nil {
					stop(caddy, 5*time.Second)
					return err
				}
				run.duration = b.opt.duration
				run.logPath = filepath.Join(b.out, "logs", fmt.Sprintf("wrk-capacity-%s-cap%d-r%d.txt", c.key, capacity, r))
				res, err := b.runWrk(run)
				if err != nil {
					stop(caddy, 5*time.Second)
					return err
				}
				s := phaseSample{goodput: float64(res.Requests-res.Status) / res.Duration.Seconds(), p50: ms(res.P50), p99: ms(res.P99)}
				if n := res.Requests + res.Connect + res.Read + res.Write + res.Timeout; n > 0 {
					s.errorRate = float64(res.Errors()) / float64(n)
				}
				samples[c.key][i] = append(samples[c.key][i], s)
				progress("capacity round %d/%d  %-58s cap %2d  goodput %6.0f/s  errors %5.1f%%  p50 %7.1f ms  p99 %7.1f ms",
					r, b.opt.rounds, c.name, capacity, s.goodput, 100*s.errorRate, s.p50, s.p99)
			}
			stop(caddy, 5*time.Second)
		}
	}
	b.printCapacity(samples)
	return nil
}

// printCapacity writes the table of the capacity phases and the check of
// auto against the static limits.
func (b *bench) printCapacity(samples map[string][][]phaseSample) {
	var phases []string
	for _, c := range capacityPhases {
		phases = append(phases, strconv.Itoa(c))
	}
	b.printf("## Overload with a changing capacity\n\nThe same backend (%v of work, 503 at once beyond its capacity), its capacity changed while each case runs: "+
		"%s requests at once, one window of %v each, in that order, after %v of warm-up at the first; %d connections. "+
		"Static limits and auto have max_queue 1024, queue_timeout 5s. %d round(s), cases interleaved; medians. "+
		"Goodput: 2xx per second (the backend's ceiling is capacity / %v); errors: every other answer or socket error, as a share of all.\n\n",
		overloadWork, strings.Join(phases, " → "), b.opt.duration, b.opt.warmup, overloadConns, b.opt.rounds, overloadWork)
	b.printf("| front end |")
	for _, c := range capacityPhases {
		b.printf(" cap %d: goodput /s | errors | p99 ms |", c)
	}
	b.printf("\n|---|")
	for range capacityPhases {
		b.printf("---:|---:|---:|")
	}
	b.printf("\n")
	med := func(key string, phase int) phaseSample {
		var g, e, p50, p99 []float64
		for _, s := range samples[key][phase] {
			g, e, p50, p99 = append(g, s.goodput), append(e, s.errorRate), append(p50, s.p50), append(p99, s.p99)
		}
		return phaseSample{median(g), median(e), median(p50), median(p99)}
	}
	for _, c := range phaseCases {
		b.printf("| %s |", c.name)
		for i := range capacityPhases {
			s := med(c.key, i)
			b.printf(" %.0f | %.1f%% | %s |", s.goodput, 100*s.errorRate, f1(s.p99))
		}
		b.printf("\n")
	}
	b.printf("\nmax_requests auto against the static limits, phase by phase (targets: goodput ≥ 0.9× the best static limit's, the best being the one with the most goodput at ≤ 1%% errors; errors ≤ 1%%; p99 ≤ 1.5× the static limit equal to the capacity):\n\n")
	b.printf("| capacity | best static | auto goodput × best static | auto errors | auto p99 × tuned static |\n|---:|---|---:|---:|---:|\n")
	for i, capacity := range capacityPhases {
		auto := med("auto", i)
		// The best static limit is the one with the most goodput among
		// those that keep errors within 1% (a limit above the capacity
		// has goodput too, at the price of refusing most requests); if
		// none does, the one with the most goodput.
		best, bestKey, bestOK := phaseSample{}, "", false
		for _, c := range phaseCases {
			if c.limit == "" || c.limit == "auto" {
				continue
			}
			s := med(c.key, i)
			ok := s.errorRate <= 0.01
			if (ok && !bestOK) || (ok == bestOK && s.goodput > best.goodput) {
				best, bestKey, bestOK = s, c.key, ok
			}
		}
		tuned := med(fmt.Sprintf("static%d", capacity), i)
		g, p := auto.goodput/max(best.goodput, 1), auto.p99/max(tuned.p99, 0.001)
		b.printf("| %d | %s | %.2f %s | %.1f%% %s | %.2f %s |\n", capacity, strings.TrimPrefix(bestKey, "static"),
			g, mark(g >= 0.9), 100*auto.errorRate, mark(auto.errorRate <= 0.01), p, mark(p <= 1.5))
	}
	b.printf("\n")
}

// mark is ✓ or ✗.
func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// capacityConfig is the Caddy config of a capacity case on port, in front
// of the backend on backendPort.
func capacityConfig(c phaseCase, adminPort, port, backendPort int) string {
	var site string
	switch {
	case c.rp:
		site = overloadConfigSite("rp", backendPort)
	case c.limit == "":
		site = fmt.Sprintf("\tload_balancer http://127.0.0.1:%d\n", backendPort)
	default:
		site = fmt.Sprintf("\tload_balancer http://127.0.0.1:%d {\n\t\tmax_requests %s\n\t\tmax_queue 1024\n\t\tqueue_timeout 5s\n\t}\n", backendPort, c.limit)
	}
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, site)
}
