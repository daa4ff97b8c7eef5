package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// loopbackRange returns n IPv4 addresses from first on, skipping those
// ending in .0 or .255, as the backend's -addrs does.
func loopbackRange(first netip.Addr, n int) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	for a := first; len(out) < n; a = a.Next() {
		if b := a.As4(); b[3] != 0 && b[3] != 255 {
			out = append(out, a)
		}
	}
	return out
}

// healthMany measures what health checking many instances costs Caddy:
// the same Caddy idle with no load_balancer, with one app of that many
// instances and no checks, and with checks every -health-cooldown. The
// instances are 127.1.0.1, 127.1.0.2, ... on one port, each served by a
// listener of its own in the backend process(es): loopback only, and no
// wildcard listener.
func (b *bench) healthMany() error {
	n := b.opt.healthInstances
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	hard := int(min(lim.Max, 1<<24))
	const spare = 1000
	if n+spare > hard {
		return fmt.Errorf("health10k: Caddy needs a file descriptor per instance: %d instances, open-file limit %d (raise ulimit -Hn)", n, hard)
	}
	// A backend holds two descriptors per instance (its listener and
	// Caddy's kept-alive probe connection): as few processes as the limit
	// allows, one if it is high enough.
	perProc := (hard - spare) / 2
	nProcs := (n + perProc - 1) / perProc
	perProc = (n + nProcs - 1) / nProcs
	addrs := loopbackRange(netip.MustParseAddr("127.1.0.1"), n)
	port, err := freePort()
	if err != nil {
		return err
	}
	var backends []*proc
	var statAddrs []string
	defer func() { stopAllOf(backends) }()
	for k := 0; k*perProc < n; k++ {
		first, count := k*perProc, min(perProc, n-k*perProc)
		p, err := b.procs.start(fmt.Sprintf("health backend %d", k+1), b.opt.genCPUs, nil,
			filepath.Join(b.out, "logs", "health-backends.log"),
			b.opt.backendBin, "-addr", addrs[first].String(), "-addrs", strconv.Itoa(count), "-port", strconv.Itoa(port))
		if err != nil {
			return err
		}
		backends = append(backends, p)
		last := fmt.Sprintf("%s:%d", addrs[first+count-1], port)
		if err := waitHTTP(p, "http://"+last+"/health", "", 60*time.Second); err != nil {
			return err
		}
		statAddrs = append(statAddrs, last)
	}
	progress("health   %d instances, %s … %s port %d, %d backend process(es) (open-file limit %d)", n, addrs[0], addrs[n-1], port, len(backends), hard)

	type result struct {
		name             string
		cpuPct, bkPct    float64
		checksPerSec     float64
		rss              int64
		healthy, fresh   int
		reported, checks bool
	}
	kinds := []struct {
		key, name     string
		lb, check, rp bool
	}{
		{"nolb", "no load_balancer", false, false, false},
		{"lb-nochecks", fmt.Sprintf("load_balancer, %d instances, no health_uri", n), true, false, false},
		{"lb-checks", fmt.Sprintf("load_balancer, %d instances, checks every %v", n, b.opt.healthCooldown), true, true, false},
		{"rp-checks", fmt.Sprintf("reverse_proxy, %d upstreams, active checks every %v", n, b.opt.healthCooldown), false, true, true},
	}
	checksTotal := func() int64 {
		var t int64
		for _, a := range statAddrs {
			_, c, _ := backendStats(a)
			t += c
		}
		return t
	}
	var results []result
	for _, k := range kinds {
		admin, err1 := freePort()
		cport, err2 := freePort()
		if err1 != nil || err2 != nil {
			return fmt.Errorf("no free port: %v %v", err1, err2)
		}
		config := noLoadBalancerConfig(admin, cport)
		var hosts []string
		for _, a := range addrs {
			hosts = append(hosts, a.String())
		}
		switch {
		case k.lb:
			config = manyInstancesConfig(admin, cport, hosts, port, k.check, b.opt.healthCooldown.String(), "5s")
		case k.rp:
			config = manyUpstreamsConfig(admin, cport, hosts, port, b.opt.healthCooldown.String(), "5s")
		}
		caddy, err := b.startCaddy("health-"+k.key, config, fmt.Sprintf("http://127.0.0.1:%d/", cport), "")
		if err != nil {
			return err
		}
		progress("health   %s: settling %v, then measuring %v", k.name, b.opt.healthSettle, b.opt.healthDuration)
		time.Sleep(b.opt.healthSettle)
		c0, _ := cpuTicks(caddy.pid())
		bk0 := sumTicks(backends)
		ch0 := checksTotal()
		t0 := time.Now()
		time.Sleep(b.opt.healthDuration)
		c1, err := cpuTicks(caddy.pid())
		if err != nil {
			stop(caddy, 5*time.Second)
			return fmt.Errorf("caddy exited during the run? %v", err)
		}
		bk1 := sumTicks(backends)
		ch1 := checksTotal()
		wall := time.Since(t0).Seconds()
		r := result{name: k.name, checks: k.check}
		r.rss, _ = rssKB(caddy.pid())
		r.cpuPct = float64(c1-c0) / float64(b.clkTck) / wall * 100
		r.bkPct = float64(bk1-bk0) / float64(b.clkTck) / wall * 100
		r.checksPerSec = float64(ch1-ch0) / wall
		if k.lb && k.check {
			r.healthy, r.fresh, err = healthReport(admin, 3*b.opt.healthCooldown+5*time.Second)
			r.reported = err == nil
			if err != nil {
				progress("health   report: %v", err)
			}
		}
		stop(caddy, 10*time.Second)
		progress("health   %s: Caddy CPU %.1f%% of a core, RSS %s MiB, %.0f checks/s", k.name, r.cpuPct, mib(r.rss), r.checksPerSec)
		results = append(results, r)
	}

	b.printf("## Health checking %d instances\n\n", n)
	b.printf("One app of %d instances (%s … %s, port %d; one listener per address in %d backend process(es)), health_check_cooldown %v, timeout 5s. "+
		"Caddy measured over %v after %v of settling; CPU is user+system time of the Caddy process as %% of one core; ",
		n, addrs[0], addrs[n-1], port, len(backends), b.opt.healthCooldown, b.opt.healthDuration, b.opt.healthSettle)
	if b.opt.unpinned {
		b.printf("unpinned.\n\n")
	} else {
		b.printf("Caddy on CPU %s, the backend(s) on CPU %s.\n\n", b.opt.serverCPUs, b.opt.genCPUs)
	}
	b.printf("| config | Caddy CPU %% of one core | checks/s answered | Caddy RSS MiB | RSS per instance vs no load_balancer | backend CPU %% | healthy (checked in the last %v) |\n|---|---:|---:|---:|---:|---:|---|\n",
		3*b.opt.healthCooldown+5*time.Second)
	base := results[0].rss
	for _, r := range results {
		per := "–"
		if r.rss != base {
			per = fmt.Sprintf("%.2f KiB", float64(r.rss-base)/float64(n))
		}
		healthy := "–"
		if r.reported {
			healthy = fmt.Sprintf("%d (%d)", r.healthy, r.fresh)
		}
		b.printf("| %s | %.1f | %.0f | %s | %s | %.1f | %s |\n", r.name, r.cpuPct, r.checksPerSec, mib(r.rss), per, r.bkPct, healthy)
	}
	b.printf("\n")
	if lb, rp := results[2], results[3]; rp.cpuPct > 0 && rp.rss > base {
		b.printf("load_balancer's checks against reverse_proxy's, same run: CPU %.2f×, RSS over no load_balancer %.2f×, checks/s %.2f×.\n\n",
			lb.cpuPct/rp.cpuPct, float64(lb.rss-base)/float64(rp.rss-base), lb.checksPerSec/max(rp.checksPerSec, 1))
	}
	return nil
}

// healthReport reads Caddy's load balancer report and counts the healthy
// instances, and those checked within fresh.
func healthReport(adminPort int, fresh time.Duration) (healthy, recent int, err error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/loadBalancers/report", adminPort))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("report: status %d", resp.StatusCode)
	}
	var rep struct {
		Apps []struct {
			Instances []struct {
				Healthy     bool       `json:"healthy"`
				LastChecked *time.Time `json:"last_checked"`
			} `json:"instances"`
		} `json:"apps"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return 0, 0, err
	}
	now := time.Now()
	for _, app := range rep.Apps {
		for _, in := range app.Instances {
			if in.Healthy {
				healthy++
			}
			if in.LastChecked != nil && now.Sub(*in.LastChecked) < fresh {
				recent++
			}
		}
	}
	return healthy, recent, nil
}
