// Command lbbench is the load benchmark of caddy-lb: throughput, latency and
// CPU per request of Caddy's reverse_proxy, our load_balancer and two peers
// (HAProxy and nginx) against the same backends, Caddy's memory with and without load_balancer, and
// optionally the cost of health checking 10,000 instances, of discovering
// 10,000 churning instances, and unary gRPC calls.
//
// Run it through bench/run.sh, which builds Caddy, the backend and this
// program and installs wrk, HAProxy and nginx if they are missing and the
// chosen parts need them (it asks this program with -needs); see
// bench/README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A workload is what the backends answer and how many connections wrk
// keeps open.
type workload struct {
	name        string
	body        int
	sleep       time.Duration
	connections int
}

// A case is what wrk is pointed at.
type benchCase struct {
	key, name string
}

// allCases are the cases of the throughput part, in the order they run in
// each round.
var allCases = []benchCase{
	{"direct", "direct (one backend)"},
	{"rp", "reverse_proxy round_robin"},
	{"lb_rr", "load_balancer round_robin"},
	{"lb_lc", "load_balancer least_connections"},
	{peerHAProxy, "HAProxy roundrobin (1 thread)"},
	{peerNginx, "nginx round robin (1 process)"},
	{"respond", "Caddy respond, no backend (a ceiling, not a proxy)"},
}

// defaultCases and defaultGRPCCases are the -cases and -grpc-cases
// defaults: every case, so that each run has its peers.
const (
	defaultCases     = "direct,rp,lb_rr,lb_lc,haproxy,nginx,respond"
	defaultGRPCCases = "direct,rp,lb,haproxy,nginx"
)

// selectCases returns the cases of list (comma-separated keys) from all,
// in the order of all, or an error naming an unknown key.
func selectCases(list string, all []benchCase) ([]benchCase, error) {
	want := map[string]bool{}
	for _, c := range strings.Split(list, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		found := false
		for _, k := range all {
			found = found || k.key == c
		}
		if !found {
			var keys []string
			for _, k := range all {
				keys = append(keys, k.key)
			}
			return nil, fmt.Errorf("unknown case %q (%s)", c, strings.Join(keys, ", "))
		}
		want[c] = true
	}
	var out []benchCase
	for _, k := range all {
		if want[k.key] {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cases")
	}
	return out, nil
}

// hasCase reports whether cases holds key.
func hasCase(cases []benchCase, key string) bool {
	for _, c := range cases {
		if c.key == key {
			return true
		}
	}
	return false
}

type options struct {
	rounds           int
	duration         time.Duration
	warmup           time.Duration
	workloads        []workload
	cases            []benchCase
	grpcCases        []benchCase
	threads          int
	connections      int
	unpinned         bool
	serverCPUs       string
	genCPUs          string
	gomaxprocs       int
	memDuration      time.Duration
	memSettle        time.Duration
	health10k        bool
	healthInstances  int
	healthCooldown   time.Duration
	healthSettle     time.Duration
	healthDuration   time.Duration
	dynamic10k       bool
	grpc             bool
	overload         bool
	hedge            bool
	hotkey           bool
	slowPercent      float64
	fleet            bool
	fleetInstances   int
	fleetDuration    time.Duration
	dynamicInstances int
	dynamicChurn     int
	out              string
	caddyBin         string
	backendBin       string
	haproxyBin       string // command or path of HAProxy
	nginxBin         string // command or path of nginx
	needs            bool   // only print the external commands needed, then exit
	cmdline, gitDesc string
}

type bench struct {
	opt    options
	procs  *procs
	work   string // scratch, removed at the end
	out    string // results, kept
	clkTck int64
	report *os.File // results.md
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "grpc-client" {
		if err := runGRPCClient(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench grpc-client:", err)
			os.Exit(1)
		}
		return
	}
	opt, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(2)
	}
	if opt.needs {
		for _, n := range opt.neededTools() {
			fmt.Println(n.command, n.pkg)
		}
		return
	}
	b := &bench{opt: opt, procs: newProcs(), clkTck: clockTicks()}
	code := 0
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		code = 1
	}
	b.procs.stopAll()
	if b.work != "" {
		_ = os.RemoveAll(b.work)
	}
	os.Exit(code)
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("lbbench", flag.ContinueOnError)
	fs.IntVar(&o.rounds, "rounds", 3, "interleaved rounds of every case")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time of each case in each round (whole seconds)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load before each measurement (0 for none)")
	workloads := fs.String("workloads", "tiny,64k,sleep5ms", "workloads to run, comma-separated: tiny, 64k, sleep5ms (none: skip the throughput phase)")
	cases := fs.String("cases", defaultCases, "cases of the throughput part, in each round: direct, rp (reverse_proxy), lb_rr, lb_lc, haproxy, nginx, respond (Caddy answering by itself)")
	grpcCaseList := fs.String("grpc-cases", defaultGRPCCases, "cases of the -grpc part: direct, rp (reverse_proxy), lb (load_balancer), haproxy, nginx")
	fs.StringVar(&o.haproxyBin, "haproxy", "haproxy", "HAProxy command (looked up on the PATH) or path")
	fs.StringVar(&o.nginxBin, "nginx", "nginx", "nginx command (looked up on the PATH) or path")
	fs.BoolVar(&o.needs, "needs", false, "print the external commands the chosen parts need, one \"command debian-package\" a line, and exit (used by run.sh)")
	conns := &o.connections
	fs.IntVar(conns, "connections", 64, "wrk connections for the tiny and 64k workloads (and the memory run)")
	sleepConns := fs.Int("sleep-connections", 16, "wrk connections for the sleep5ms workload")
	fs.IntVar(&o.threads, "threads", 0, "wrk threads (0: one per load-generator CPU)")
	fs.BoolVar(&o.unpinned, "unpinned", false, "don't pin wrk and Caddy + backends to separate CPUs")
	fs.StringVar(&o.serverCPUs, "server-cpus", "", "CPU list (taskset -c) for Caddy and the backends (default: the first half)")
	fs.StringVar(&o.genCPUs, "gen-cpus", "", "CPU list for wrk (default: the second half)")
	fs.IntVar(&o.gomaxprocs, "gomaxprocs", 0, "GOMAXPROCS for Caddy (0: Go's default, the number of CPUs it may run on)")
	fs.DurationVar(&o.memDuration, "memory-duration", 60*time.Second, "length of the memory growth run (0: skip the memory phase)")
	fs.DurationVar(&o.memSettle, "memory-settle", 5*time.Second, "wait after Caddy starts before reading its idle RSS")
	fs.BoolVar(&o.health10k, "health10k", false, "also measure health checking of many instances on 127.x addresses")
	fs.IntVar(&o.healthInstances, "health-instances", 10000, "instances for -health10k")
	fs.DurationVar(&o.healthCooldown, "health-cooldown", time.Second, "health_check_cooldown for -health10k")
	fs.DurationVar(&o.healthSettle, "health-settle", 10*time.Second, "wait after Caddy starts before measuring, for -health10k")
	fs.DurationVar(&o.healthDuration, "health-duration", 30*time.Second, "measured time of each -health10k config")
	fs.BoolVar(&o.dynamic10k, "dynamic10k", false, "also measure an app of many instances discovered through etcd, churning, against the same listed in the config")
	fs.BoolVar(&o.grpc, "grpc", false, "also measure unary gRPC calls through load_balancer, reverse_proxy, HAProxy and nginx (h2c) and direct")
	fs.BoolVar(&o.overload, "overload", false, "also measure a saturated backend (cap 8, 5 ms) under 256 connections: reverse_proxy with max requests, load_balancer without limits and with max_requests and a queue")
	fs.BoolVar(&o.hedge, "hedge", false, "also measure hedging: three backends, one answering -slow-percent of its requests after 200 ms; reverse_proxy, load_balancer without and with hedge_after")
	fs.BoolVar(&o.hotkey, "hotkey", false, "also measure a hot hash key: three backends (5 ms), every request with X-Key: hot; reverse_proxy lb_policy header, load_balancer hash without and with hash_balance 1.25")
	fs.Float64Var(&o.slowPercent, "slow-percent", 6, "with -hedge: the share (%) of the slow backend's requests answered after 200 ms")
	fs.BoolVar(&o.fleet, "fleet", false, "also measure fleet health: three Caddy nodes checking the same instances, alone and as a fleet on etcd (probers 2)")
	fs.IntVar(&o.fleetInstances, "fleet-instances", 1000, "instances for -fleet")
	fs.DurationVar(&o.fleetDuration, "fleet-duration", 20*time.Second, "measured time of each -fleet config")
	fs.IntVar(&o.dynamicInstances, "dynamic-instances", 10000, "instances for -dynamic10k")
	fs.IntVar(&o.dynamicChurn, "dynamic-churn", 100, "instances replaced every second for -dynamic10k")
	fs.StringVar(&o.out, "out", "", "directory for the results (default: a new directory under $TMPDIR)")
	fs.StringVar(&o.caddyBin, "caddy", "", "the Caddy binary (built from ./cmd/caddy)")
	fs.StringVar(&o.backendBin, "backend", "", "the backend binary (built from ./bench/backend)")
	fs.StringVar(&o.cmdline, "cmdline", "", "the command line to record (set by run.sh)")
	fs.StringVar(&o.gitDesc, "git", "", "the revision to record (set by run.sh)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: bench/run.sh [options]   (-caddy, -backend, -cmdline and -git are set by run.sh)\n\nOptions (-x and --x alike):\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.caddyBin == "" || o.backendBin == "" {
		return o, fmt.Errorf("-caddy and -backend are required (use bench/run.sh)")
	}
	if o.rounds < 1 || o.duration < time.Second || o.warmup < 0 || *conns < 1 || *sleepConns < 1 || o.threads < 0 {
		return o, fmt.Errorf("bad -rounds, -duration (≥1s), -warmup, -connections or -threads")
	}
	if o.dynamic10k && (o.dynamicInstances < 1 || o.dynamicChurn < 0) {
		return o, fmt.Errorf("bad -dynamic-instances or -dynamic-churn")
	}
	if o.hedge && (o.slowPercent <= 0 || o.slowPercent > 100) {
		return o, fmt.Errorf("bad -slow-percent: want more than 0, at most 100")
	}
	if o.fleet && (o.fleetInstances < 1 || o.fleetDuration < time.Second) {
		return o, fmt.Errorf("bad -fleet-instances or -fleet-duration")
	}
	if o.health10k && (o.healthInstances < 1 || o.healthCooldown <= 0 || o.healthDuration < time.Second) {
		return o, fmt.Errorf("bad -health-instances, -health-cooldown or -health-duration")
	}
	if *workloads != "none" {
		for _, w := range strings.Split(*workloads, ",") {
			switch strings.TrimSpace(w) {
			case "tiny":
				o.workloads = append(o.workloads, workload{"tiny", 16, 0, *conns})
			case "64k":
				o.workloads = append(o.workloads, workload{"64k", 64 << 10, 0, *conns})
			case "sleep5ms":
				o.workloads = append(o.workloads, workload{"sleep5ms", 16, 5 * time.Millisecond, *sleepConns})
			case "":
			default:
				return o, fmt.Errorf("unknown workload %q (tiny, 64k, sleep5ms, none)", w)
			}
		}
	}
	var err error
	if o.cases, err = selectCases(*cases, allCases); err != nil {
		return o, fmt.Errorf("-cases: %w", err)
	}
	if o.grpcCases, err = selectCases(*grpcCaseList, allGRPCCases); err != nil {
		return o, fmt.Errorf("-grpc-cases: %w", err)
	}
	n := runtime.NumCPU()
	if !o.unpinned {
		if o.serverCPUs == "" && o.genCPUs == "" {
			if n < 2 {
				fmt.Fprintln(os.Stderr, "lbbench: one CPU only: running unpinned")
				o.unpinned = true
			} else {
				o.serverCPUs = cpuRange(0, n/2-1)
				o.genCPUs = cpuRange(n/2, n-1)
			}
		} else if o.serverCPUs == "" || o.genCPUs == "" {
			return o, fmt.Errorf("give both -server-cpus and -gen-cpus, or neither")
		}
	}
	if o.unpinned {
		o.serverCPUs, o.genCPUs = "", ""
	}
	if o.threads == 0 {
		if o.unpinned {
			o.threads = max(1, n/2)
		} else {
			o.threads = max(1, countCPUs(o.genCPUs))
		}
	}
	return o, nil
}

// A tool is an external command the benchmark runs and the Debian
// package that has it.
type tool struct{ command, pkg string }

// neededTools are the external commands the chosen parts run (besides
// taskset and getconf, which every part needs): wrk for every part with
// HTTP/1.1 load, etcd for -dynamic10k and -fleet, HAProxy and nginx when a chosen
// part has their case.
func (o options) neededTools() []tool {
	var out []tool
	http1 := len(o.workloads) > 0
	if http1 || o.memDuration > 0 || o.overload || o.dynamic10k || o.hedge || o.hotkey {
		out = append(out, tool{"wrk", "wrk"})
	}
	if o.dynamic10k || o.fleet {
		out = append(out, tool{"etcd", "etcd-server"})
	}
	if (http1 && hasCase(o.cases, peerHAProxy)) || (o.grpc && hasCase(o.grpcCases, peerHAProxy)) {
		out = append(out, tool{o.haproxyBin, "haproxy"})
	}
	if (http1 && hasCase(o.cases, peerNginx)) || (o.grpc && hasCase(o.grpcCases, peerNginx)) {
		out = append(out, tool{o.nginxBin, "nginx-light"})
	}
	return out
}

func cpuRange(a, b int) string {
	if a == b {
		return strconv.Itoa(a)
	}
	return fmt.Sprintf("%d-%d", a, b)
}

// countCPUs counts the CPUs of a taskset list such as "0,2-3".
func countCPUs(list string) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		a, b, isRange := strings.Cut(part, "-")
		if !isRange {
			n++
			continue
		}
		x, err1 := strconv.Atoi(a)
		y, err2 := strconv.Atoi(b)
		if err1 == nil && err2 == nil && y >= x {
			n += y - x + 1
		}
	}
	return n
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

func (b *bench) run() error {
	var err error
	if b.work, err = os.MkdirTemp("", "lbbench-work-"); err != nil {
		return err
	}
	b.out = b.opt.out
	if b.out == "" {
		if b.out, err = os.MkdirTemp("", "lbbench-results-"); err != nil {
			return err
		}
	}
	for _, d := range []string{b.out, filepath.Join(b.out, "logs"), filepath.Join(b.out, "configs"), filepath.Join(b.work, "caddy-home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if b.report, err = os.Create(filepath.Join(b.out, "results.md")); err != nil {
		return err
	}
	defer b.report.Close()
	if err := os.WriteFile(filepath.Join(b.work, "report.lua"), []byte(wrkScript), 0o644); err != nil {
		return err
	}

	// Ctrl-C or SIGTERM: stop everything started, keep what was written.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\nlbbench: %v: stopping everything it started; partial results in %s\n", s, b.out)
		b.procs.stopAll()
		_ = os.RemoveAll(b.work)
		os.Exit(130)
	}()

	b.printf("%s", b.header())
	if len(b.opt.workloads) > 0 {
		if err := b.throughput(); err != nil {
			return err
		}
	}
	if b.opt.memDuration > 0 {
		if err := b.memory(); err != nil {
			return err
		}
	}
	if b.opt.health10k {
		if err := b.healthMany(); err != nil {
			return err
		}
	}
	if b.opt.dynamic10k {
		if err := b.dynamicMany(); err != nil {
			return err
		}
	}
	if b.opt.grpc {
		if err := b.grpcBench(); err != nil {
			return err
		}
	}
	if b.opt.overload {
		if err := b.overloadBench(); err != nil {
			return err
		}
		if err := b.capacityBench(); err != nil {
			return err
		}
	}
	if b.opt.hedge {
		if err := b.hedgeBench(); err != nil {
			return err
		}
	}
	if b.opt.hotkey {
		if err := b.hotkeyBench(); err != nil {
			return err
		}
	}
	if b.opt.fleet {
		if err := b.fleetBench(); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "\nlbbench: results in %s (results.md, raw.csv, configs/, logs/)\n", b.out)
	return nil
}

// printf writes to the report and to standard output.
func (b *bench) printf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	fmt.Print(s)
	_, _ = b.report.WriteString(s)
}

// progress is a line on standard error only.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (b *bench) header() string {
	var s strings.Builder
	fmt.Fprintf(&s, "# caddy-lb load benchmark\n\n")
	fmt.Fprintf(&s, "- date: %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "- command: `%s`\n", orDefault(b.opt.cmdline, strings.Join(os.Args, " ")))
	if b.opt.gitDesc != "" {
		fmt.Fprintf(&s, "- revision: %s\n", b.opt.gitDesc)
	}
	model, ncpu := cpuInfo()
	fmt.Fprintf(&s, "- machine: %d CPUs (%s), kernel %s, load average at start %s\n", ncpu, model,
		strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")), loadAvg())
	fmt.Fprintf(&s, "- go: %s; caddy: %s; wrk: %s\n", runtime.Version(), firstLine(b.output(b.opt.caddyBin, "version")), wrkVersion())
	fmt.Fprintf(&s, "- peers: %s; %s\n", b.opt.peerVersion(peerHAProxy), b.opt.peerVersion(peerNginx))
	if b.opt.unpinned {
		fmt.Fprintf(&s, "- pinning: none (unpinned); wrk threads %d\n", b.opt.threads)
	} else {
		fmt.Fprintf(&s, "- pinning: wrk on CPU %s (%d thread(s)); Caddy (or the peer) and backends on CPU %s\n", b.opt.genCPUs, b.opt.threads, b.opt.serverCPUs)
	}
	gmp := "Go's default (CPUs it may run on)"
	if b.opt.gomaxprocs > 0 {
		gmp = strconv.Itoa(b.opt.gomaxprocs)
	}
	fmt.Fprintf(&s, "- Caddy GOMAXPROCS: %s; USER_HZ %d\n", gmp, b.clkTck)
	fmt.Fprintf(&s, "- rounds %d, %v measured per case and round after %v of warm-up; cases interleaved within each round\n\n",
		b.opt.rounds, b.opt.duration, b.opt.warmup)
	return s.String()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func (b *bench) output(argv ...string) string {
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return string(out)
}

func wrkVersion() string {
	out, _ := exec.Command("wrk", "-v").CombinedOutput() // exits 1 after printing
	f := strings.Fields(firstLine(string(out)))
	if len(f) >= 2 {
		return f[1]
	}
	return "?"
}

func cpuInfo() (model string, n int) {
	for _, line := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "processor":
			n++
		case "model name":
			model = strings.TrimSpace(v)
		}
	}
	return model, n
}

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
