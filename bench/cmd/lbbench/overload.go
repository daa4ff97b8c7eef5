package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// The overload workload: one backend that serves at most overloadCap
// requests at once, each after overloadWork (it answers 503 at once to
// more), under overloadConns client connections: 32 times what it can
// take.
const (
	overloadCap   = 8
	overloadWork  = 5 * time.Millisecond
	overloadConns = 256
	// Longer than the longest wait of any case (lb_try_duration and
	// queue_timeout, 5 s), so that each case's own answer is counted.
	overloadClientTimeout = 10 * time.Second
)

// overloadCases are the front ends of the overload workload.
var overloadCases = []benchCase{
	{"rp", "reverse_proxy, unhealthy_request_count 8, lb_try_duration 5s"},
	{"lb", "load_balancer, no limit"},
	{"lb_queue", "load_balancer, max_requests 8, max_queue 1024, queue_timeout 5s"},
}

// overloadBench measures what each front end makes of a saturated
// backend: goodput (200s per second), the share of requests that failed
// (a status other than 2xx/3xx, or a socket error or wrk's 5 s timeout),
// and the latency of all of them, interleaved over rounds.
func (b *bench) overloadBench() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	backend, err := b.procs.start("overload backend", b.opt.serverCPUs, nil, filepath.Join(b.out, "logs", "overload-backend.log"),
		b.opt.backendBin, "-port", strconv.Itoa(port), "-sleep", overloadWork.String(), "-cap", strconv.Itoa(overloadCap))
	if err != nil {
		return err
	}
	defer stop(backend, 5*time.Second)
	if err := waitHTTP(backend, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
		return err
	}

	type sample struct {
		goodput, errorRate, p50, p99 float64
	}
	samples := map[string][]sample{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range overloadCases {
			res, err := b.measureCase(caseRun{name: fmt.Sprintf("overload-%s-r%d", c.key, r),
				config: func(admin, front int) string { return overloadConfig(c.key, admin, front, port) },
				wrk:    wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: overloadConns, timeout: overloadClientTimeout}})
			if err != nil {
				return err
			}
			// wrk's requests are the answers it got, whatever their
			// status; socket errors and timeouts come on top.
			s := sample{goodput: float64(res.Requests-res.Status) / res.Duration.Seconds(), p50: ms(res.P50), p99: ms(res.P99)}
			if n := res.Requests + res.Connect + res.Read + res.Write + res.Timeout; n > 0 {
				s.errorRate = float64(res.Errors()) / float64(n)
			}
			samples[c.key] = append(samples[c.key], s)
			progress("overload round %d/%d  %-62s goodput %6.0f/s  errors %5.1f%%  p50 %7.1f ms  p99 %7.1f ms",
				r, b.opt.rounds, c.name, s.goodput, 100*s.errorRate, s.p50, s.p99)
		}
	}

	b.printf("## Overload\n\nOne backend that serves at most %d requests at once, each after %v of work (%d/s at most; it answers 503 at once to more), "+
		"under wrk with %d connections. Goodput: 2xx answers per second; errors: every other answer, socket error or wrk timeout (%v), "+
		"as a share of all; latencies of all answers. %d round(s) × %v, cases interleaved; medians.\n\n",
		overloadCap, overloadWork, int(float64(overloadCap)/overloadWork.Seconds()), overloadConns, overloadClientTimeout, b.opt.rounds, b.opt.duration)
	b.printf("| front end | goodput /s | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n")
	for _, c := range overloadCases {
		var goodput, errs, p50, p99 []float64
		for _, s := range samples[c.key] {
			goodput, errs, p50, p99 = append(goodput, s.goodput), append(errs, s.errorRate), append(p50, s.p50), append(p99, s.p99)
		}
		b.printf("| %s | %.0f | %.1f%% | %s | %s |\n", c.name, median(goodput), 100*median(errs), f1(median(p50)), f1(median(p99)))
	}
	b.printf("\n")
	return nil
}

// overloadConfig is the Caddy config of an overload case, on port, in
// front of the backend on backendPort.
func overloadConfig(key string, adminPort, port, backendPort int) string {
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, overloadConfigSite(key, backendPort))
}

// overloadConfigSite is the handler of an overload case in its site block.
func overloadConfigSite(key string, backendPort int) string {
	site := ""
	switch key {
	case "rp":
		// Caddy's per-upstream max_requests: an upstream at the count is
		// not picked; a request that finds none tries again every
		// lb_try_interval (250 ms) until lb_try_duration.
		site = fmt.Sprintf("\treverse_proxy 127.0.0.1:%d {\n\t\tunhealthy_request_count %d\n\t\tlb_try_duration 5s\n\t}\n", backendPort, overloadCap)
	case "lb":
		site = fmt.Sprintf("\tload_balancer http://127.0.0.1:%d\n", backendPort)
	case "lb_queue":
		site = fmt.Sprintf("\tload_balancer http://127.0.0.1:%d {\n\t\tmax_requests %d\n\t\tmax_queue 1024\n\t\tqueue_timeout 5s\n\t}\n", backendPort, overloadCap)
	}
	return site
}
