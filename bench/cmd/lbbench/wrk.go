package main

import (
	"bufio"
	"cmp"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// wrkScript makes wrk print its summary as one machine-readable line at the
// end. Only done() is defined: wrk keeps its fast path (no per-request Lua).
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`

// wrkResult is one wrk run's summary.
type wrkResult struct {
	Requests   int64
	Duration   time.Duration
	Bytes      int64
	Connect    int64 // socket errors, by kind
	Read       int64
	Write      int64
	Timeout    int64
	Status     int64 // responses other than 2xx and 3xx
	P50        time.Duration
	P90        time.Duration
	P99        time.Duration
	P999       time.Duration // the 99.9th percentile
	Max        time.Duration
	RawSummary string
}

func (r wrkResult) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Duration.Seconds()
}

// Errors is every failed request: socket errors and non-2xx/3xx answers.
func (r wrkResult) Errors() int64 { return r.Connect + r.Read + r.Write + r.Timeout + r.Status }

// parseWrk reads the BENCH line that wrkScript prints.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	r.RawSummary = out
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "BENCH ")
		if !ok {
			continue
		}
		vals := map[string]int64{}
		for _, kv := range strings.Fields(line) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return r, fmt.Errorf("wrk: bad field %q", kv)
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("wrk: bad field %q", kv)
			}
			vals[k] = n
		}
		for _, k := range []string{"requests", "duration_us", "p50_us", "p99_us"} {
			if _, ok := vals[k]; !ok {
				return r, fmt.Errorf("wrk: no %s in %q", k, line)
			}
		}
		us := func(k string) time.Duration { return time.Duration(vals[k]) * time.Microsecond }
		r.Requests, r.Duration, r.Bytes = vals["requests"], us("duration_us"), vals["bytes"]
		r.Connect, r.Read, r.Write, r.Timeout, r.Status = vals["connect"], vals["read"], vals["write"], vals["timeout"], vals["status"]
		r.P50, r.P90, r.P99, r.P999, r.Max = us("p50_us"), us("p90_us"), us("p99_us"), us("p999_us"), us("max_us")
		return r, nil
	}
	return r, fmt.Errorf("wrk printed no summary:\n%s", out)
}

// wrkRun is how wrk is run: where, and how hard.
type wrkRun struct {
	cpus        string // taskset list, or "" unpinned
	threads     int
	connections int
	duration    time.Duration
	url         string
	host        string        // Host header, if not the URL's
	headers     []string      // more request headers, "Name: value"
	script      string        // path of wrkScript
	timeout     time.Duration // wrk's --timeout; 0: 5s
	logPath     string        // wrk's output is written here
}

// runWrk runs wrk once and returns its summary. It is bounded: wrk stops
// itself after the duration, and is killed if it is still running 30 s
// later.
func (b *bench) runWrk(w wrkRun) (wrkResult, error) {
	argv := []string{"wrk", "-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.connections),
		"-d", fmt.Sprintf("%ds", max(1, int(w.duration.Round(time.Second).Seconds()))),
		"--timeout", cmp.Or(w.timeout, 5*time.Second).String(), "--latency"}
	if w.script != "" {
		argv = append(argv, "-s", w.script)
	}
	if w.host != "" {
		argv = append(argv, "-H", "Host: "+w.host)
	}
	for _, h := range w.headers {
		argv = append(argv, "-H", h)
	}
	argv = append(argv, w.url)
	out, err := os.CreateTemp(b.work, "wrk-*.out")
	if err != nil {
		return wrkResult{}, err
	}
	outPath := out.Name()
	out.Close()
	defer os.Remove(outPath)
	p, err := b.procs.start("wrk", w.cpus, nil, outPath, argv...)
	if err != nil {
		return wrkResult{}, err
	}
	select {
	case <-p.done:
	case <-time.After(w.duration + 30*time.Second):
		stop(p, time.Second)
		return wrkResult{}, fmt.Errorf("wrk did not stop after %v", w.duration+30*time.Second)
	}
	text, _ := os.ReadFile(outPath)
	if w.logPath != "" {
		_ = os.WriteFile(w.logPath, append([]byte(strings.Join(argv, " ")+"\n"), text...), 0o644)
	}
	if p.err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v:\n%s", p.err, text)
	}
	if w.script == "" {
		return wrkResult{}, nil
	}
	return parseWrk(string(text))
}
