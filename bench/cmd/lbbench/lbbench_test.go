package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/golb/caddy-lb"
	_ "github.com/golb/caddy-lb/fleet"
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
	if len(o.workloads) != 2 || o.workloads[1].connections != 16 || o.workloads[1].sleep != 5*time.Millisecond || o.threads != 2 || len(o.cases) != len(allCases) {
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

func TestPeerConfigs(t *testing.T) {
	ports := []int{9001, 9002, 9003}
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		config  string
		want    []string // every one must appear
		wantNot []string // none may appear
		listens int      // listeners, all on 127.0.0.1
		listen  string   // how a listener starts
	}{
		{"haproxy http", haproxyConfig(8080, ports, false),
			[]string{"nbthread 1", "mode http", "balance roundrobin", "http-reuse always", "option http-keep-alive",
				"bind 127.0.0.1:8080\n", "server b1 127.0.0.1:9001\n", "server b2 127.0.0.1:9002\n", "server b3 127.0.0.1:9003\n", "timeout server 60s"},
			[]string{"check", "log", "proto h2", "*:", "0.0.0.0"}, 1, "bind "},
		{"haproxy grpc", haproxyConfig(8080, ports, true),
			[]string{"nbthread 1", "balance roundrobin", "http-reuse always", "bind 127.0.0.1:8080 proto h2\n",
				"server b1 127.0.0.1:9001 proto h2\n", "server b3 127.0.0.1:9003 proto h2\n"},
			[]string{"check", "log", "0.0.0.0"}, 1, "bind "},
		{"nginx http", nginxConfig(nginxSetup{Dir: dir, ErrorLog: filepath.Join(dir, "error.log"), Port: 8080, Backends: ports}),
			[]string{"worker_processes 1;", "master_process off;", "daemon off;", "access_log off;", "keepalive 64;",
				"proxy_http_version 1.1;", `proxy_set_header Connection "";`, "proxy_pass http://backends;", "listen 127.0.0.1:8080;",
				"server 127.0.0.1:9001;", "server 127.0.0.1:9002;", "server 127.0.0.1:9003;",
				"pid " + filepath.Join(dir, "nginx.pid") + ";", "error_log " + filepath.Join(dir, "error.log") + " warn;",
				"proxy_temp_path " + filepath.Join(dir, "proxy_temp") + ";", "client_body_temp_path " + filepath.Join(dir, "client_body_temp") + ";"},
			[]string{"http2", "grpc_pass", "/var/", "/run/", "0.0.0.0"}, 1, "listen "},
		{"nginx grpc", nginxConfig(nginxSetup{Dir: dir, ErrorLog: filepath.Join(dir, "error.log"), Port: 8080, Backends: ports, GRPC: true}),
			[]string{"worker_processes 1;", "master_process off;", "keepalive 64;", "listen 127.0.0.1:8080 http2;",
				"grpc_pass grpc://backends;", "server 127.0.0.1:9003;"},
			[]string{"proxy_pass", "/var/", "/run/", "0.0.0.0"}, 1, "listen "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range tc.want {
				if !strings.Contains(tc.config, w) {
					t.Errorf("lacks %q:\n%s", w, tc.config)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(tc.config, w) {
					t.Errorf("has %q:\n%s", w, tc.config)
				}
			}
			n := 0
			for _, line := range strings.Split(tc.config, "\n") {
				if rest, ok := strings.CutPrefix(strings.TrimSpace(line), tc.listen); ok {
					n++
					if !strings.HasPrefix(rest, "127.0.0.1:") {
						t.Errorf("listens beyond loopback: %q", line)
					}
				}
			}
			if n != tc.listens {
				t.Errorf("%d listeners, want %d", n, tc.listens)
			}
			if strings.Count(tc.config, "{") != strings.Count(tc.config, "}") {
				t.Errorf("unbalanced braces:\n%s", tc.config)
			}
		})
	}
}

// TestPeerConfigsValid has HAProxy and nginx check the generated configs
// themselves, where they are installed.
func TestPeerConfigsValid(t *testing.T) {
	ports := []int{9001, 9002, 9003}
	for _, grpc := range []bool{false, true} {
		t.Run(fmt.Sprintf("haproxy grpc=%v", grpc), func(t *testing.T) {
			bin, err := lookSbin("haproxy")
			if err != nil {
				skipOrFail(t, "haproxy not installed")
			}
			path := filepath.Join(t.TempDir(), "haproxy.cfg")
			if err := os.WriteFile(path, []byte(haproxyConfig(8080, ports, grpc)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput()
			if err != nil {
				t.Fatalf("haproxy -c: %v\n%s", err, out)
			}
			if strings.Contains(string(out), "WARNING") {
				t.Errorf("haproxy -c warns:\n%s", out)
			}
		})
		t.Run(fmt.Sprintf("nginx grpc=%v", grpc), func(t *testing.T) {
			bin, err := lookSbin("nginx")
			if err != nil {
				skipOrFail(t, "nginx not installed")
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "nginx.conf")
			config := nginxConfig(nginxSetup{Dir: dir, ErrorLog: filepath.Join(dir, "error.log"), Port: 8080, Backends: ports, GRPC: grpc})
			if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-t", "-p", dir, "-c", path, "-e", "stderr").CombinedOutput()
			if err != nil {
				t.Fatalf("nginx -t: %v\n%s", err, out)
			}
			if strings.Contains(string(out), "[warn]") || strings.Contains(string(out), "[emerg]") {
				t.Errorf("nginx -t warns:\n%s", out)
			}
		})
	}
}

// lookSbin finds a command on the PATH or in /usr/sbin, where Debian puts
// HAProxy and nginx and which a user's PATH may lack (run.sh adds it).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return exec.LookPath(filepath.Join("/usr/sbin", name))
}

// skipOrFail skips the test, or fails it where CADDYLB_REQUIRE_PEERS=1
// (as in CI, which installs HAProxy and nginx: a skip there would hide a
// missing install step).
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CADDYLB_REQUIRE_PEERS") == "1" {
		t.Fatal(why + " (CADDYLB_REQUIRE_PEERS=1)")
	}
	t.Skip(why)
}

func TestRespondConfig(t *testing.T) {
	for _, body := range []int{16, 64 << 10} {
		c := respondConfig(2999, 8080, body)
		if !strings.Contains(c, "http://127.0.0.1:8080 {") || !strings.Contains(c, `respond "`+strings.Repeat("x", body)+`" 200`) ||
			strings.Contains(c, "reverse_proxy") || strings.Contains(c, "load_balancer") {
			t.Errorf("respond config for %d B:\n%.300s", body, c)
		}
	}
}

func TestPeerRatio(t *testing.T) {
	// A sample of case key in round r: rps requests per second, p99 in ms,
	// cpu µs per request.
	mk := func(key string, r int, rps int64, p99ms int, cpu float64) sample {
		return sample{caseKey: key, round: r, proxyCPU: cpu,
			res: wrkResult{Requests: rps, Duration: time.Second, P99: time.Duration(p99ms) * time.Millisecond}}
	}
	for _, tc := range []struct {
		name      string
		samples   []sample
		best      []string // best peer of rounds 1, 2, ...; "" for none
		rps, p99  float64  // lb_rr's ratios to the best peer
		cpu       float64
		described string
	}{
		{"haproxy best in both rounds",
			[]sample{mk("lb_rr", 1, 100, 4, 10), mk("haproxy", 1, 200, 2, 5), mk("nginx", 1, 50, 1, 20),
				mk("lb_rr", 2, 100, 4, 10), mk("haproxy", 2, 100, 8, 10), mk("nginx", 2, 80, 1, 20)},
			[]string{"haproxy", "haproxy"}, 0.75, 1.25, 1.5, "r1 haproxy, r2 haproxy"},
		{"the best changes by round: the p99 ratio follows the best by rps, not the lowest p99",
			[]sample{mk("lb_rr", 1, 100, 4, 10), mk("haproxy", 1, 200, 2, 5), mk("nginx", 1, 50, 1, 20),
				mk("lb_rr", 2, 100, 4, 10), mk("haproxy", 2, 50, 1, 20), mk("nginx", 2, 400, 8, 2.5)},
			[]string{"haproxy", "nginx"}, 0.375, 1.25, 3, "r1 haproxy, r2 nginx"},
		{"only nginx ran",
			[]sample{mk("lb_rr", 1, 100, 4, 10), mk("nginx", 1, 50, 2, 20)},
			[]string{"nginx"}, 2, 2, 0.5, "r1 nginx"},
		{"no peer",
			[]sample{mk("lb_rr", 1, 100, 4, 10), mk("rp", 1, 50, 2, 20)},
			[]string{""}, math.NaN(), math.NaN(), math.NaN(), ""},
		{"a round without peers is left out",
			[]sample{mk("lb_rr", 1, 100, 4, 10), mk("nginx", 1, 50, 2, 20), mk("lb_rr", 2, 100, 4, 10)},
			[]string{"nginx", ""}, 2, 2, 0.5, "r1 nginx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := byCase(tc.samples)
			for i, want := range tc.best {
				got, ok := bestPeer(idx, i+1)
				if got != want || ok != (want != "") {
					t.Errorf("round %d: best peer %q, %v; want %q", i+1, got, ok, want)
				}
			}
			near := func(a, b float64) bool { return (math.IsNaN(a) && math.IsNaN(b)) || math.Abs(a-b) < 1e-9 }
			if got := peerRatio(idx, "lb_rr", mRPS); !near(got, tc.rps) {
				t.Errorf("rps × peer %v, want %v", got, tc.rps)
			}
			if got := peerRatio(idx, "lb_rr", mP99); !near(got, tc.p99) {
				t.Errorf("p99 × peer %v, want %v", got, tc.p99)
			}
			if got := peerRatio(idx, "lb_rr", mCPU); !near(got, tc.cpu) {
				t.Errorf("CPU × peer %v, want %v", got, tc.cpu)
			}
			if got := bestPeers(idx, len(tc.best)); got != tc.described {
				t.Errorf("bestPeers %q, want %q", got, tc.described)
			}
		})
	}
}

func TestSelectCasesAndNeeds(t *testing.T) {
	base := []string{"-caddy", "c", "-backend", "b", "-unpinned"}
	for _, tc := range []struct {
		name  string
		args  []string
		cases string // keys of the throughput cases
		grpc  string // keys of the gRPC cases
		needs string // commands of neededTools
	}{
		{"defaults", nil, "direct rp lb_rr lb_lc haproxy nginx respond", "direct rp lb haproxy nginx", "wrk haproxy nginx"},
		{"order is the table's, not the list's", []string{"-cases", "nginx,rp, respond"}, "rp nginx respond", "direct rp lb haproxy nginx", "wrk nginx"},
		{"no peers", []string{"-cases", "rp,lb_rr"}, "rp lb_rr", "direct rp lb haproxy nginx", "wrk"},
		{"gRPC only, with HAProxy", []string{"-workloads", "none", "-memory-duration", "0", "-grpc", "-grpc-cases", "lb,haproxy"},
			"direct rp lb_rr lb_lc haproxy nginx respond", "lb haproxy", "haproxy"},
		{"gRPC cases without -grpc need nothing", []string{"-workloads", "none", "-memory-duration", "0", "-grpc-cases", "nginx"},
			"direct rp lb_rr lb_lc haproxy nginx respond", "nginx", ""},
		{"other commands", []string{"-haproxy", "haproxy-2.8", "-nginx", "nginx-debug", "-dynamic10k"},
			"direct rp lb_rr lb_lc haproxy nginx respond", "direct rp lb haproxy nginx", "wrk etcd haproxy-2.8 nginx-debug"},
		{"hot key only: wrk", []string{"-workloads", "none", "-memory-duration", "0", "-hotkey"},
			"direct rp lb_rr lb_lc haproxy nginx respond", "direct rp lb haproxy nginx", "wrk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(append(append([]string{}, base...), tc.args...))
			if err != nil {
				t.Fatal(err)
			}
			keys := func(cs []benchCase) string {
				var ks []string
				for _, c := range cs {
					ks = append(ks, c.key)
				}
				return strings.Join(ks, " ")
			}
			var needs []string
			for _, n := range o.neededTools() {
				needs = append(needs, n.command)
			}
			if got := keys(o.cases); got != tc.cases {
				t.Errorf("cases %q, want %q", got, tc.cases)
			}
			if got := keys(o.grpcCases); got != tc.grpc {
				t.Errorf("gRPC cases %q, want %q", got, tc.grpc)
			}
			if got := strings.Join(needs, " "); got != tc.needs {
				t.Errorf("needs %q, want %q", got, tc.needs)
			}
		})
	}
	for _, args := range [][]string{{"-cases", "lb"}, {"-grpc-cases", "lb_rr"}, {"-cases", ","}, {"-grpc-cases", "respond"}} {
		if _, err := parseFlags(append(append([]string{}, base...), args...)); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestCaddyConfigsAdapt adapts every Caddyfile the driver writes for
// load_balancer and reverse_proxy with Caddy's own adapter, so that an
// option the module does not know (or a brace out of place) fails here and
// not minutes into a bench run.
func TestCaddyConfigsAdapt(t *testing.T) {
	ports := []int{9001, 9002, 9003}
	hosts := []string{"127.1.0.1", "127.1.0.2"}
	configs := map[string]string{
		"reverse_proxy":     reverseProxyConfig(2999, 8080, ports),
		"load_balancer":     loadBalancerConfig(2999, 8080, ports, "least_connections"),
		"multi-app":         multiAppConfig(2999, 8080, ports, 10, "5s"),
		"many instances":    manyInstancesConfig(2999, 8080, hosts, 9100, true, "1s", "5s"),
		"fleet node":        fleetNodeConfig(2999, 8080, hosts, 9100, true, "http://127.0.0.1:2379", "node1", "/lbbench/fleet/"),
		"fleet node, alone": fleetNodeConfig(2999, 8080, hosts, 9100, false, "http://127.0.0.1:2379", "node1", "/lbbench/fleet/"),
	}
	for _, key := range []string{"rp", "lb", "lb_queue"} {
		configs["overload "+key] = overloadConfig(key, 2999, 8080, 9001)
	}
	for _, c := range phaseCases {
		configs["capacity "+c.key] = capacityConfig(c, 2999, 8080, 9001)
	}
	for _, c := range hedgeCases {
		configs["hedge "+c.key] = hedgeConfig(c.key, c.hedge, 2999, 8080, ports)
	}
	for _, c := range hotkeyCases {
		configs["hotkey "+c.key] = hotkeyConfig(c.key, c.balance, 2999, 8080, ports)
	}
	for name, config := range configs {
		t.Run(name, func(t *testing.T) {
			out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(config), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("adapt: %v\n%s", err, config)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s", w)
			}
			if !json.Valid(out) {
				t.Fatalf("not JSON: %s", out)
			}
		})
	}
	// The options that make each case what it claims to be.
	for name, want := range map[string]string{
		"fleet node":        `"load_balancer_fleet"`,
		"capacity auto":     `"max_requests":"auto"`,
		"capacity static16": `"max_requests":16`,
		"hedge lb_p95":      `"hedge_after":"p95"`,
		"hotkey lb_125":     `"hash_balance":1.25`,
		"hotkey lb":         `"hash_key":"header:X-Key"`,
		"hotkey rp":         `"field":"X-Key"`,
	} {
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(configs[name]), nil)
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s: %s not in %s (%v)", name, want, out, err)
		}
	}
	if out, _, _ := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(configs["fleet node, alone"]), nil); strings.Contains(string(out), "fleet") {
		t.Errorf("the fleet-less node has a fleet: %s", out)
	}
}
