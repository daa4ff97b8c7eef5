package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// memory measures Caddy's idle RSS with the three-app, 30-instance
// load_balancer config against the same Caddy with no load_balancer
// (interleaved, one of each per round), then the RSS of the load_balancer
// Caddy over a run of load.
func (b *bench) memory() error {
	backends, ports, err := b.startBackends(3, 16, 0)
	defer stopAllOf(backends)
	if err != nil {
		return err
	}
	const perApp = 10
	const cooldown = "5s"
	host := memApps[0].host

	b.printf("## Memory\n\n")
	kinds := []struct{ key, name string }{
		{"nolb", "no load_balancer (`respond`)"},
		{"lb3x10", fmt.Sprintf("load_balancer, %d apps × %d instances, health checks every %s", len(memApps), perApp, cooldown)},
	}
	idle := map[string][]float64{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, k := range kinds {
			admin, err1 := freePort()
			port, err2 := freePort()
			if err1 != nil || err2 != nil {
				return fmt.Errorf("no free port: %v %v", err1, err2)
			}
			config := noLoadBalancerConfig(admin, port)
			if k.key == "lb3x10" {
				config = multiAppConfig(admin, port, ports, perApp, cooldown)
			}
			caddy, err := b.startCaddy(fmt.Sprintf("memory-%s-r%d", k.key, r), config, fmt.Sprintf("http://127.0.0.1:%d/", port), host)
			if err != nil {
				return err
			}
			time.Sleep(b.opt.memSettle)
			rss, err := rssKB(caddy.pid())
			stop(caddy, 5*time.Second)
			if err != nil {
				return err
			}
			idle[k.key] = append(idle[k.key], float64(rss))
			progress("memory   round %d/%d  %-60s idle RSS %s MiB", r, b.opt.rounds, k.name, mib(rss))
		}
	}
	b.printf("Idle RSS of Caddy %v after start (median of %d, interleaved):\n\n| config | RSS MiB | each round, MiB |\n|---|---:|---|\n", b.opt.memSettle, b.opt.rounds)
	for _, k := range kinds {
		var each []string
		for _, v := range idle[k.key] {
			each = append(each, mib(int64(v)))
		}
		b.printf("| %s | %s | %s |\n", k.name, mib(int64(median(idle[k.key]))), strings.Join(each, ", "))
	}
	b.printf("| difference | %s | |\n\n", mib(int64(median(idle["lb3x10"])-median(idle["nolb"]))))

	// Growth: the same load_balancer config under load.
	admin, err1 := freePort()
	port, err2 := freePort()
	if err1 != nil || err2 != nil {
		return fmt.Errorf("no free port: %v %v", err1, err2)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	caddy, err := b.startCaddy("memory-growth", multiAppConfig(admin, port, ports, perApp, cooldown), url, host)
	if err != nil {
		return err
	}
	defer stop(caddy, 5*time.Second)
	time.Sleep(b.opt.memSettle)
	type point struct {
		at  time.Duration
		rss int64
	}
	var (
		mu     sync.Mutex
		points []point
	)
	sampleRSS := func(at time.Duration) {
		if rss, err := rssKB(caddy.pid()); err == nil {
			mu.Lock()
			points = append(points, point{at, rss})
			mu.Unlock()
		}
	}
	start := time.Now()
	sampleRSS(0)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sampleRSS(time.Since(start))
			}
		}
	})
	progress("memory   growth: %v of load on app %s (round_robin, %d instances), %d connections", b.opt.memDuration, host, perApp, b.opt.connections)
	res, err := b.runWrk(wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: b.opt.connections,
		duration: b.opt.memDuration, url: url, host: host, script: filepath.Join(b.work, "report.lua"),
		logPath: filepath.Join(b.out, "logs", "wrk-memory-growth.txt")})
	close(done)
	wg.Wait()
	if err != nil {
		return err
	}
	end, err := rssKB(caddy.pid())
	if err != nil {
		return fmt.Errorf("caddy exited during the run? %v", err)
	}
	time.Sleep(5 * time.Second)
	after, _ := rssKB(caddy.pid())

	// The first samples take in the connections and buffers that the load
	// needs; growth after that is what would keep going.
	at10 := points[0]
	for _, p := range points {
		if p.at >= 10*time.Second-time.Second {
			at10 = p
			break
		}
	}
	b.printf("RSS of the load_balancer Caddy (same config) over %v of load on %s (%d connections, tiny body): %.0f rps, p99 %.3f ms, %d errors.\n\n",
		b.opt.memDuration, host, b.opt.connections, res.RPS(), ms(res.P99), res.Errors())
	b.printf("| at start (idle) | after %s | end of run | growth start → end | growth %s → end | 5 s after the run |\n|---:|---:|---:|---:|---:|---:|\n",
		secs(at10.at), secs(at10.at))
	b.printf("| %s MiB | %s MiB | %s MiB | %+.1f MiB | %+.1f MiB | %s MiB |\n\n", mib(points[0].rss), mib(at10.rss), mib(end),
		float64(end-points[0].rss)/1024, float64(end-at10.rss)/1024, mib(after))
	var series []string
	for _, p := range points {
		series = append(series, fmt.Sprintf("%s: %s", secs(p.at), mib(p.rss)))
	}
	b.printf("RSS every 10 s, MiB (time since the load started): %s; end: %s\n\n", strings.Join(series, ", "), mib(end))
	return nil
}
