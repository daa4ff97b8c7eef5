package main

import (
	"cmp"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The hot-key workload: three backends answering after hotkeyWork, and
// every request carrying the same hash key (X-Key: hot), under
// hotkeyConns connections: hashing sends them all to one backend, a load
// bound spreads what that backend cannot take at its share.
const (
	hotkeyWork  = 5 * time.Millisecond
	hotkeyConns = 30
	hotkeyKey   = "hot"
)

// hotkeyCases are the front ends of the hot-key workload.
var hotkeyCases = []struct{ key, name, balance string }{
	{"rp", "reverse_proxy lb_policy header X-Key", ""},
	{"lb", "load_balancer hash header:X-Key", ""},
	{"lb_125", "load_balancer hash header:X-Key, hash_balance 1.25", "1.25"},
}

// hotkeyBench measures one hot key against consistent hashing with and
// without a load bound: requests/s, p99, and the share of the requests
// each backend served.
func (b *bench) hotkeyBench() error {
	var backends []*proc
	defer func() { stopAllOf(backends) }()
	var ports []int
	for i := 0; i < 3; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		p, err := b.procs.start(fmt.Sprintf("hotkey backend %d", i+1), b.opt.serverCPUs, nil,
			filepath.Join(b.out, "logs", "hotkey-backends.log"),
			b.opt.backendBin, "-port", strconv.Itoa(port), "-sleep", hotkeyWork.String())
		if err != nil {
			return err
		}
		backends = append(backends, p)
		ports = append(ports, port)
		if err := waitHTTP(p, fmt.Sprintf("http://127.0.0.1:%d/health", port), "", 10*time.Second); err != nil {
			return err
		}
	}
	served := func() []int64 {
		out := make([]int64, len(ports))
		for i, port := range ports {
			out[i], _, _ = backendStats(fmt.Sprintf("127.0.0.1:%d", port))
		}
		return out
	}

	type sample struct {
		rps, p99 float64
		split    []float64 // each backend's share of the requests, in descending order
	}
	samples := map[string][]sample{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range hotkeyCases {
			admin, err1 := freePort()
			front, err2 := freePort()
			if err1 != nil || err2 != nil {
				return fmt.Errorf("no free port: %v %v", err1, err2)
			}
			caddy, err := b.startCaddy(fmt.Sprintf("hotkey-%s-r%d", c.key, r), hotkeyConfig(c.key, c.balance, admin, front, ports),
				fmt.Sprintf("http://127.0.0.1:%d/config/", admin), "")
			if err != nil {
				return err
			}
			run := wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: hotkeyConns,
				url: fmt.Sprintf("http://127.0.0.1:%d/", front), script: filepath.Join(b.work, "report.lua"),
				headers: []string{"X-Key: " + hotkeyKey}}
			if b.opt.warmup > 0 {
				run.duration = b.opt.warmup
				if _, err := b.runWrk(run); err != nil {
					stop(caddy, 5*time.Second)
					return err
				}
			}
			run.duration = b.opt.duration
			run.logPath = filepath.Join(b.out, "logs", fmt.Sprintf("wrk-hotkey-%s-r%d.txt", c.key, r))
			before := served()
			res, err := b.runWrk(run)
			// Answers in flight when wrk stopped are counted by the
			// backends: a few hotkeyWork later, they are done.
			time.Sleep(10 * hotkeyWork)
			after := served()
			stop(caddy, 5*time.Second)
			if err != nil {
				return err
			}
			if res.Errors() > 0 {
				return fmt.Errorf("hotkey %s, round %d: %d errors (see %s)", c.key, r, res.Errors(), run.logPath)
			}
			s := sample{rps: res.RPS(), p99: ms(res.P99), split: shares(before, after)}
			samples[c.key] = append(samples[c.key], s)
			progress("hotkey   round %d/%d  %-52s %6.0f rps  p99 %6.2f ms  split %s",
				r, b.opt.rounds, c.name, s.rps, s.p99, splitString(s.split))
		}
	}

	b.printf("## Hot key\n\nThree backends answering in %v; every request has the same hash key (`X-Key: %s`). "+
		"wrk with %d connections; %d round(s) × %v after %v of warm-up, cases interleaved; medians. "+
		"Split: each backend's share of the requests, largest first.\n\n",
		hotkeyWork, hotkeyKey, hotkeyConns, b.opt.rounds, b.opt.duration, b.opt.warmup)
	b.printf("| front end | requests/s | p99 ms | split |\n|---|---:|---:|---|\n")
	for _, c := range hotkeyCases {
		var rps, p99 []float64
		split := make([][]float64, len(ports))
		for _, s := range samples[c.key] {
			rps, p99 = append(rps, s.rps), append(p99, s.p99)
			for i, v := range s.split {
				split[i] = append(split[i], v)
			}
		}
		med := make([]float64, len(ports))
		for i := range split {
			med[i] = median(split[i])
		}
		b.printf("| %s | %.0f | %s | %s |\n", c.name, median(rps), f1(median(p99)), splitString(med))
	}
	b.printf("\nThe bound: with `hash_balance 1.25` no backend holds more than ceil(1.25 × (in flight + 1) / 3) requests, "+
		"%.0f%% of them at most with %d connections.\n\n", 100*boundShare(1.25, hotkeyConns, len(ports)), hotkeyConns)
	return nil
}

// shares returns each backend's share of the requests served between
// before and after, largest first.
func shares(before, after []int64) []float64 {
	var total int64
	for i := range after {
		total += after[i] - before[i]
	}
	out := make([]float64, len(after))
	if total == 0 {
		return out
	}
	for i := range after {
		out[i] = float64(after[i]-before[i]) / float64(total)
	}
	slices.SortFunc(out, func(a, b float64) int { return cmp.Compare(b, a) })
	return out
}

// splitString formats shares as percentages: "72 / 28 / 0".
func splitString(shares []float64) string {
	parts := make([]string, len(shares))
	for i, s := range shares {
		parts[i] = strconv.FormatFloat(100*s, 'f', 0, 64)
	}
	return strings.Join(parts, " / ") + " %"
}

// boundShare is the largest share of conns requests in flight one of n
// instances may hold under factor: ceil(factor × conns / n) of them (a
// new request counts in conns).
func boundShare(factor float64, conns, n int) float64 {
	return math.Ceil(factor*float64(conns)/float64(n)) / float64(conns)
}

// hotkeyConfig is the Caddy config of a hot-key case on port, in front of
// the backends.
func hotkeyConfig(key, balance string, adminPort, port int, backends []int) string {
	var site strings.Builder
	if key == "rp" {
		fmt.Fprintf(&site, "\treverse_proxy %s {\n\t\tlb_policy header X-Key\n\t}\n", strings.Join(hostPorts(backends), " "))
	} else {
		site.WriteString("\tload_balancer")
		for _, p := range backends {
			fmt.Fprintf(&site, " http://127.0.0.1:%d", p)
		}
		site.WriteString(" {\n\t\tstrategy hash\n\t\thash_key header:X-Key\n")
		if balance != "" {
			fmt.Fprintf(&site, "\t\thash_balance %s\n", balance)
		}
		site.WriteString("\t}\n")
	}
	return globalOptions(adminPort) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n%s}\n", port, site.String())
}
