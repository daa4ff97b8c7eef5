package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sample is one case of one round of one workload.
type sample struct {
	workload, caseKey string
	round             int
	res               wrkResult
	proxyCPU          float64 // µs of CPU of the proxy (Caddy or the peer) per request; NaN for direct
	backendCPU        float64 // µs of CPU of all backends per request
	proxyRSS          int64   // KiB, the proxy's, at the end of the measurement
	split             string  // requests per backend, in %
}

func (s sample) rps() float64 { return s.res.RPS() }
func (s sample) p50() float64 { return float64(s.res.P50) / float64(time.Millisecond) }
func (s sample) p99() float64 { return float64(s.res.P99) / float64(time.Millisecond) }

// startBackends starts n backends answering body bytes after sleep, on
// the server CPUs, and returns them with their ports.
func (b *bench) startBackends(n, body int, sleep time.Duration) ([]*proc, []int, error) {
	var ps []*proc
	var ports []int
	for i := 0; i < n; i++ {
		port, err := freePort()
		if err != nil {
			return ps, ports, err
		}
		p, err := b.procs.start(fmt.Sprintf("backend %d", i+1), b.opt.serverCPUs, nil,
			filepath.Join(b.out, "logs", "backends.log"),
			b.opt.backendBin, "-port", strconv.Itoa(port), "-body", strconv.Itoa(body), "-sleep", sleep.String())
		if err != nil {
			return ps, ports, err
		}
		ps = append(ps, p)
		ports = append(ports, port)
		if err := waitHTTP(p, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
			return ps, ports, err
		}
	}
	return ps, ports, nil
}

func stopAllOf(ps []*proc) {
	for _, p := range ps {
		stop(p, 3*time.Second)
	}
}

// startCaddy writes config to the work directory (and a copy under the
// results' configs/ as name.caddyfile), starts Caddy on it, pinned to the
// server CPUs, and waits until url answers (with the Host header host, if
// not empty).
func (b *bench) startCaddy(name, config, url, host string) (*proc, error) {
	path := filepath.Join(b.work, name+".caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return nil, err
	}
	_ = os.WriteFile(filepath.Join(b.out, "configs", name+".caddyfile"), []byte(config), 0o644)
	home := filepath.Join(b.work, "caddy-home")
	env := []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
	if b.opt.gomaxprocs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(b.opt.gomaxprocs))
	}
	p, err := b.procs.start("caddy "+name, b.opt.serverCPUs, env, filepath.Join(b.out, "logs", "caddy-"+name+".log"),
		b.opt.caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(p, url, host, 30*time.Second); err != nil {
		stop(p, 5*time.Second)
		return nil, fmt.Errorf("%v (see %s)", err, filepath.Join(b.out, "logs", "caddy-"+name+".log"))
	}
	return p, nil
}

// backendStats reads the counters of the backend on addr.
func backendStats(addr string) (requests, checks int64, err error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/_stats")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var v struct {
		Requests int64 `json:"requests"`
		Checks   int64 `json:"health_checks"`
	}
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v.Requests, v.Checks, err
}

func sumTicks(ps []*proc) int64 {
	var t int64
	for _, p := range ps {
		n, _ := cpuTicks(p.pid())
		t += n
	}
	return t
}

func (b *bench) throughput() error {
	rawPath := filepath.Join(b.out, "raw.csv")
	rawFile, err := os.Create(rawPath)
	if err != nil {
		return err
	}
	defer rawFile.Close()
	raw := csv.NewWriter(rawFile)
	_ = raw.Write([]string{"workload", "case", "round", "rps", "requests", "duration_s", "p50_ms", "p90_ms", "p99_ms", "max_ms",
		"errors", "err_connect", "err_read", "err_write", "err_timeout", "err_status",
		"proxy_cpu_us_per_req", "backends_cpu_us_per_req", "proxy_rss_kib", "backend_split_pct"})
	raw.Flush()

	b.printf("## Throughput\n\nMedians over rounds; ratios are medians of the per-round ratios (each case against the reverse_proxy, direct or best peer run of the same round; " +
		"the best peer is whichever of HAProxy and nginx had the more requests per second in that round). " +
		"CPU is the proxy process's user+system time (Caddy's, HAProxy's or nginx's) over the measured window divided by the requests completed in it. " +
		"The respond case is Caddy answering by itself, without backends and without the sleep of sleep5ms: a ceiling, not a proxy.\n\n")
	for _, wl := range b.opt.workloads {
		loadBefore := loadAvg()
		backends, ports, err := b.startBackends(3, wl.body, wl.sleep)
		if err != nil {
			stopAllOf(backends)
			return err
		}
		var samples []sample
		for r := 1; r <= b.opt.rounds; r++ {
			for _, c := range b.opt.cases {
				s, err := b.measure(wl, c, r, backends, ports)
				if err != nil {
					stopAllOf(backends)
					return fmt.Errorf("%s, %s, round %d: %w", wl.name, c.name, r, err)
				}
				samples = append(samples, s)
				cpu := "-"
				if !math.IsNaN(s.proxyCPU) {
					cpu = fmt.Sprintf("%.1f µs/req", s.proxyCPU)
				}
				progress("%-8s round %d/%d  %-33s %8.0f rps  p50 %6.3f ms  p99 %6.3f ms  errors %d  proxy CPU %s  split %s",
					wl.name, r, b.opt.rounds, c.name, s.rps(), s.p50(), s.p99(), s.res.Errors(), cpu, s.split)
				_ = raw.Write([]string{wl.name, c.key, strconv.Itoa(r), f1(s.rps()), strconv.FormatInt(s.res.Requests, 10),
					f3(s.res.Duration.Seconds()), f3(s.p50()), f3(ms(s.res.P90)), f3(s.p99()), f3(ms(s.res.Max)),
					strconv.FormatInt(s.res.Errors(), 10), i64(s.res.Connect), i64(s.res.Read), i64(s.res.Write), i64(s.res.Timeout), i64(s.res.Status),
					f2(s.proxyCPU), f2(s.backendCPU), i64(s.proxyRSS), s.split})
				raw.Flush()
			}
		}
		stopAllOf(backends)
		b.printf("%s", throughputTable(wl, b.opt, samples))
		b.printf("Load average before and after: %s; %s.\n\n", loadBefore, loadAvg())
	}
	return raw.Error()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func f1(v float64) string        { return strconv.FormatFloat(v, 'f', 1, 64) }
func f2(v float64) string        { return strconv.FormatFloat(v, 'f', 2, 64) }
func f3(v float64) string        { return strconv.FormatFloat(v, 'f', 3, 64) }
func i64(v int64) string         { return strconv.FormatInt(v, 10) }

// measure runs one case: its proxy started afresh on its config (none for
// direct), a warm-up, then the measured wrk run with the CPU times of the
// proxy and the backends read around it.
func (b *bench) measure(wl workload, c benchCase, round int, backends []*proc, ports []int) (sample, error) {
	s := sample{workload: wl.name, caseKey: c.key, round: round, proxyCPU: math.NaN()}
	var proxy *proc
	url := fmt.Sprintf("http://127.0.0.1:%d/", ports[0])
	if c.key != "direct" {
		port, err := freePort()
		if err != nil {
			return s, err
		}
		url = fmt.Sprintf("http://127.0.0.1:%d/", port)
		if proxy, err = b.startFront(c.key, fmt.Sprintf("%s-%s-r%d", wl.name, c.key, round), wl, port, ports, url); err != nil {
			return s, err
		}
		defer stop(proxy, 5*time.Second)
	}
	run := wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: wl.connections, url: url}
	if b.opt.warmup > 0 {
		run.duration = b.opt.warmup
		if _, err := b.runWrk(run); err != nil {
			return s, err
		}
	}
	before := make([]int64, len(ports))
	for i, p := range ports {
		before[i], _, _ = backendStats(fmt.Sprintf("127.0.0.1:%d", p))
	}
	var proxy0 int64
	if proxy != nil {
		proxy0, _ = cpuTicks(proxy.pid())
	}
	back0 := sumTicks(backends)

	run.duration = b.opt.duration
	run.script = filepath.Join(b.work, "report.lua")
	run.logPath = filepath.Join(b.out, "logs", fmt.Sprintf("wrk-%s-%s-r%d.txt", wl.name, c.key, round))
	res, err := b.runWrk(run)
	if err != nil {
		return s, err
	}
	back1 := sumTicks(backends)
	s.res = res
	if proxy != nil {
		proxy1, err := cpuTicks(proxy.pid())
		if err != nil {
			return s, fmt.Errorf("%s exited during the run? %v", proxy.name, err)
		}
		s.proxyRSS, _ = rssKB(proxy.pid())
		s.proxyCPU = b.perRequest(proxy1-proxy0, res.Requests)
	}
	s.backendCPU = b.perRequest(back1-back0, res.Requests)
	var split []string
	var total int64
	deltas := make([]int64, len(ports))
	for i, p := range ports {
		n, _, _ := backendStats(fmt.Sprintf("127.0.0.1:%d", p))
		deltas[i] = n - before[i]
		total += deltas[i]
	}
	for _, d := range deltas {
		split = append(split, strconv.FormatInt(d*100/max(total, 1), 10))
	}
	s.split = strings.Join(split, "/")
	return s, nil
}

// startFront starts the proxy of case key (every case but direct) for the
// case run name, listening on 127.0.0.1:port in front of the backends on
// ports, and waits until url answers through it. Each is one process whose
// /proc times are all of its CPU: Caddy, HAProxy with one thread, nginx
// without a master (see nginxConfig).
func (b *bench) startFront(key, name string, wl workload, port int, ports []int, url string) (*proc, error) {
	ready := func(p *proc) error { return waitHTTP(p, url, "", 30*time.Second) }
	switch key {
	case peerHAProxy:
		return b.startPeer(key, name, haproxyConfig(port, ports, false), ready)
	case peerNginx:
		config := nginxConfig(nginxSetup{Dir: b.nginxDir(name), ErrorLog: b.peerLog(key, name), Port: port, Backends: ports})
		return b.startPeer(key, name, config, ready)
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	var config string
	switch key {
	case "rp":
		config = reverseProxyConfig(admin, port, ports)
	case "lb_rr":
		config = loadBalancerConfig(admin, port, ports, "round_robin")
	case "lb_lc":
		config = loadBalancerConfig(admin, port, ports, "least_connections")
	case "respond":
		config = respondConfig(admin, port, wl.body)
	default:
		return nil, fmt.Errorf("unknown case %q", key)
	}
	return b.startCaddy(name, config, url, "")
}

// perRequest converts CPU clock ticks over some requests to µs per request.
func (b *bench) perRequest(ticks, requests int64) float64 {
	if requests <= 0 {
		return math.NaN()
	}
	return float64(ticks) / float64(b.clkTck) * 1e6 / float64(requests)
}
