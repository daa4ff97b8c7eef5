package main

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Latency Distribution
     50%    1.10ms
  61234 requests in 5.00s, 7.42MB read
Requests/sec:  12246.80
BENCH requests=61234 duration_us=5000123 bytes=7780000 connect=0 read=2 write=0 status=3 timeout=1 p50_us=1100 p90_us=2000 p99_us=4321 max_us=9000
`
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 61234 || r.P50 != 1100*time.Microsecond || r.P99 != 4321*time.Microsecond || r.Errors() != 6 {
		t.Fatalf("got %+v", r)
	}
	if rps := r.RPS(); math.Abs(rps-61234/5.000123) > 0.01 {
		t.Fatalf("rps %v", rps)
	}
	if _, err := parseWrk("no summary"); err == nil {
		t.Fatal("no error without a BENCH line")
	}
	if _, err := parseWrk("BENCH requests=1 p50_us=x"); err == nil {
		t.Fatal("no error on a bad field")
	}
}

func TestParseStatTicks(t *testing.T) {
	stat := "1234 (caddy (x) y) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 0 0"
	n, err := parseStatTicks(stat)
	if err != nil || n != 325 {
		t.Fatalf("got %d, %v", n, err)
	}
}

func TestMedianAndRatio(t *testing.T) {
	if m := median([]float64{3, math.NaN(), 1, 2}); m != 2 {
		t.Fatalf("median %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Fatalf("median %v", m)
	}
	if !math.IsNaN(median(nil)) {
		t.Fatal("median of nothing")
	}
	mk := func(key string, round int, req int64) sample {
		return sample{caseKey: key, round: round, res: wrkResult{Requests: req, Duration: time.Second}}
	}
	idx := byCase([]sample{mk("rp", 1, 100), mk("lb_rr", 1, 200), mk("rp", 2, 50), mk("lb_rr", 2, 150), mk("rp", 3, 100), mk("lb_rr", 3, 100)})
	if r := ratio(idx, "lb_rr", "rp", mRPS); r != 2 { // per-round ratios 2, 3, 1
		t.Fatalf("ratio %v", r)
	}
	if r := ratio(idx, "lb_rr", "direct", mRPS); !math.IsNaN(r) {
		t.Fatalf("ratio to a missing case %v", r)
	}
}

func TestCountCPUs(t *testing.T) {
	for list, want := range map[string]int{"1": 1, "0-3": 4, "0,2-3": 3} {
		if got := countCPUs(list); got != want {
			t.Errorf("countCPUs(%q) = %d, want %d", list, got, want)
		}
	}
}

func TestLoopbackRange(t *testing.T) {
	got := loopbackRange(netip.MustParseAddr("127.1.0.253"), 4)
	want := "127.1.0.253 127.1.0.254 127.1.1.1 127.1.1.2"
	var s []string
	for _, a := range got {
		s = append(s, a.String())
	}
	if strings.Join(s, " ") != want {
		t.Fatalf("got %v", s)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-caddy", "c", "-backend", "b", "--workloads", "tiny,sleep5ms", "--server-cpus", "0", "--gen-cpus", "1-2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.workloads) != 2 || o.workloads[1].connections != 16 || o.workloads[1].sleep != 5*time.Millisecond || o.threads != 2 || len(o.cases) != 4 {
		t.Fatalf("got %+v", o)
	}
	if _, err := parseFlags([]string{"-caddy", "c", "-backend", "b", "-workloads", "huge"}); err == nil {
		t.Fatal("unknown workload accepted")
	}
	o, err = parseFlags([]string{"-caddy", "c", "-backend", "b", "-workloads", "none", "-unpinned"})
	if err != nil || len(o.workloads) != 0 || o.serverCPUs != "" || o.genCPUs != "" {
		t.Fatalf("got %+v, %v", o, err)
	}
}

func TestConfigs(t *testing.T) {
	ports := []int{9001, 9002, 9003}
	for _, c := range []string{
		reverseProxyConfig(2999, 8080, ports),
		loadBalancerConfig(2999, 8080, ports, "least_connections"),
		multiAppConfig(2999, 8080, ports, 10, "5s"),
		manyInstancesConfig(2999, 8080, []string{"127.1.0.1", "127.1.0.2"}, 9100, true, "1s", "5s"),
	} {
		for _, want := range []string{"admin 127.0.0.1:2999", "persist_config off", "auto_https off", "default_bind 127.0.0.1", "level ERROR"} {
			if !strings.Contains(c, want) {
				t.Errorf("config lacks %q:\n%s", want, c)
			}
		}
		if strings.Count(c, "{") != strings.Count(c, "}") {
			t.Errorf("unbalanced braces:\n%s", c)
		}
	}
	if c := multiAppConfig(2999, 8080, ports, 10, "5s"); strings.Count(c, "http://127.0.0.1:") != 30 || !strings.Contains(c, "http://127.0.0.1:9003/i29") {
		t.Errorf("multi-app config:\n%s", c)
	}
}
