package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// median of the values that are not NaN; NaN if there are none.
func median(vs []float64) float64 {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return math.NaN()
	}
	sort.Float64s(xs)
	m := len(xs) / 2
	if len(xs)%2 == 1 {
		return xs[m]
	}
	return (xs[m-1] + xs[m]) / 2
}

type metric func(sample) float64

var (
	mRPS metric = sample.rps
	mP50 metric = sample.p50
	mP99 metric = sample.p99
	mCPU metric = func(s sample) float64 { return s.proxyCPU }
)

// byCase indexes samples by case key, then round.
func byCase(samples []sample) map[string]map[int]sample {
	m := map[string]map[int]sample{}
	for _, s := range samples {
		if m[s.caseKey] == nil {
			m[s.caseKey] = map[int]sample{}
		}
		m[s.caseKey][s.round] = s
	}
	return m
}

// medianOf is the median of f over the rounds of one case.
func medianOf(rounds map[int]sample, f metric) float64 {
	var vs []float64
	for _, s := range rounds {
		vs = append(vs, f(s))
	}
	return median(vs)
}

// ratio is the median over rounds of f(case) / f(base) in the same round.
func ratio(idx map[string]map[int]sample, caseKey, base string, f metric) float64 {
	var vs []float64
	for r, s := range idx[caseKey] {
		if b, ok := idx[base][r]; ok && f(b) > 0 {
			vs = append(vs, f(s)/f(b))
		}
	}
	return median(vs)
}

// bestPeer is the peer (of peerKeys) with the most requests per second in
// round r, and false if no peer ran in that round. A tie goes to the first
// of peerKeys.
func bestPeer(idx map[string]map[int]sample, r int) (string, bool) {
	best, found := "", false
	for _, k := range peerKeys {
		s, ok := idx[k][r]
		if !ok {
			continue
		}
		if !found || mRPS(s) > mRPS(idx[best][r]) {
			best, found = k, true
		}
	}
	return best, found
}

// peerRatio is the median over rounds of f(case) / f(best peer), the best
// peer chosen per round by bestPeer (by requests per second, whatever f
// is): the p99 ratio is to that peer's p99, the CPU ratio to its CPU. NaN
// if no round has both.
func peerRatio(idx map[string]map[int]sample, caseKey string, f metric) float64 {
	var vs []float64
	for r, s := range idx[caseKey] {
		key, ok := bestPeer(idx, r)
		if !ok {
			continue
		}
		if b := idx[key][r]; f(b) > 0 {
			vs = append(vs, f(s)/f(b))
		}
	}
	return median(vs)
}

// bestPeers describes the best peer of each round ("r1 nginx, r2
// haproxy"), or "" if no peer ran.
func bestPeers(idx map[string]map[int]sample, rounds int) string {
	var parts []string
	for r := 1; r <= rounds; r++ {
		if k, ok := bestPeer(idx, r); ok {
			parts = append(parts, fmt.Sprintf("r%d %s", r, k))
		}
	}
	return strings.Join(parts, ", ")
}

func fmtNum(v float64, format string) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

func describe(wl workload) string {
	body := fmt.Sprintf("%d B body", wl.body)
	if wl.body >= 1024 {
		body = fmt.Sprintf("%d KiB body", wl.body>>10)
	}
	if wl.sleep > 0 {
		body = fmt.Sprintf("backend sleeps %v, %s", wl.sleep, body)
	}
	return fmt.Sprintf("%s, %d connections", body, wl.connections)
}

// A target is one goal from the issue, met by the load_balancer cases.
type target struct {
	workload, label, base string
	f                     metric
	atLeast               bool // ≥ limit, else ≤ limit
	limit                 float64
}

// The targets of Performance II.
var targets = []target{
	{"tiny", "rps ≥ 1.6× reverse_proxy (aim 2×)", "rp", mRPS, true, 1.6},
	{"tiny", "Caddy CPU/request ≤ 0.6× reverse_proxy (aim 0.5×)", "rp", mCPU, false, 0.6},
	{"tiny", "p99 ≤ 1.0× reverse_proxy", "rp", mP99, false, 1.0},
	{"64k", "rps ≥ 1.4× reverse_proxy (aim 1.5×)", "rp", mRPS, true, 1.4},
	{"sleep5ms", "rps ≥ 0.97× direct", "direct", mRPS, true, 0.97},
	{"sleep5ms", "p99 ≤ 1.25× direct", "direct", mP99, false, 1.25},
}

func throughputTable(wl workload, opt options, samples []sample) string {
	idx := byCase(samples)
	var s strings.Builder
	fmt.Fprintf(&s, "### %s: %s (%d round(s) × %v)\n\n", wl.name, describe(wl), opt.rounds, opt.duration)
	s.WriteString("| case | rps | p50 ms | p99 ms | errors (all rounds) | proxy CPU µs/req | rps × rp | CPU × rp | p99 × rp | rps × direct | p99 × direct | rps × peer | CPU × peer | p99 × peer |\n")
	s.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range opt.cases {
		rounds := idx[c.key]
		var errs int64
		for _, smp := range rounds {
			errs += smp.res.Errors()
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name,
			fmtNum(medianOf(rounds, mRPS), "%.0f"),
			fmtNum(medianOf(rounds, mP50), "%.3f"),
			fmtNum(medianOf(rounds, mP99), "%.3f"),
			errs,
			fmtNum(medianOf(rounds, mCPU), "%.1f"),
			fmtNum(ratio(idx, c.key, "rp", mRPS), "%.2f"),
			fmtNum(ratio(idx, c.key, "rp", mCPU), "%.2f"),
			fmtNum(ratio(idx, c.key, "rp", mP99), "%.2f"),
			fmtNum(ratio(idx, c.key, "direct", mRPS), "%.2f"),
			fmtNum(ratio(idx, c.key, "direct", mP99), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mRPS), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mCPU), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mP99), "%.2f"))
	}
	s.WriteString("\n")
	if peers := bestPeers(idx, opt.rounds); peers != "" {
		fmt.Fprintf(&s, "Best peer (the base of × peer) by round: %s.\n\n", peers)
	}

	var lines []string
	for _, t := range targets {
		if t.workload != wl.name {
			continue
		}
		line := "| " + t.label
		for _, key := range []string{"lb_rr", "lb_lc"} {
			v := ratio(idx, key, t.base, t.f)
			mark := "✗"
			if math.IsNaN(v) {
				mark = ""
			} else if (t.atLeast && v >= t.limit) || (!t.atLeast && v <= t.limit) {
				mark = "✓"
			}
			line += fmt.Sprintf(" | %s %s", fmtNum(v, "%.2f"), mark)
		}
		lines = append(lines, line+" |\n")
	}
	if len(lines) > 0 {
		s.WriteString("| target | load_balancer round_robin | load_balancer least_connections |\n|---|---:|---:|\n")
		for _, l := range lines {
			s.WriteString(l)
		}
		s.WriteString("\n")
	}
	return s.String()
}

func mib(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

func secs(d time.Duration) string { return fmt.Sprintf("%.0f s", d.Seconds()) }
