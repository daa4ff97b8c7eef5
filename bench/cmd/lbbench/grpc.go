package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// allGRPCCases are what the gRPC client can be pointed at, in the order
// they run in each round.
var allGRPCCases = []benchCase{
	{"direct", "direct (one backend)"},
	{"rp", "reverse_proxy h2c round_robin"},
	{"lb", "load_balancer h2c round_robin"},
	{peerHAProxy, "HAProxy h2c roundrobin (1 thread)"},
	{peerNginx, "nginx grpc_pass round robin (1 process)"},
}

// grpcResult is what one run of the gRPC client measured.
type grpcResult struct {
	Calls   int64   `json:"calls"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
}

func (r grpcResult) rate() float64 { return float64(r.Calls) / r.Seconds }

// grpcSample is r as a sample of the throughput part's kind, so that the
// same medians and ratios apply: calls as requests, the client's p50 and
// p99, proxyCPU µs per call (NaN for direct). Failed calls are not in it.
func grpcSample(key string, round int, r grpcResult, proxyCPU float64) sample {
	return sample{workload: "grpc", caseKey: key, round: round, proxyCPU: proxyCPU, res: wrkResult{
		Requests: r.Calls,
		Duration: time.Duration(r.Seconds * float64(time.Second)),
		P50:      time.Duration(r.P50ms * float64(time.Millisecond)),
		P99:      time.Duration(r.P99ms * float64(time.Millisecond)),
	}}
}

// grpcBench measures unary gRPC calls with small messages through the
// -grpc-cases (load_balancer, reverse_proxy with h2c upstreams, HAProxy
// and nginx, each h2c on both sides) and to one backend directly,
// interleaved over rounds: calls/s, p50, p99 and the proxy's CPU per call.
// The client is this program in client mode (runGRPCClient), pinned to the
// load generator's CPUs.
func (b *bench) grpcBench() error {
	var backends []*proc
	var ports []int
	defer func() { stopAllOf(backends) }()
	for i := range 3 {
		port, err := freePort()
		if err != nil {
			return err
		}
		p, err := b.procs.start(fmt.Sprintf("grpc backend %d", i+1), b.opt.serverCPUs, nil,
			filepath.Join(b.out, "logs", "grpc-backends.log"), b.opt.backendBin, "-grpc", "-port", strconv.Itoa(port))
		if err != nil {
			return err
		}
		backends = append(backends, p)
		ports = append(ports, port)
		if err := waitTCP(p, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var samples []sample
	errs := map[string]int64{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range b.opt.grpcCases {
			s, failed, err := b.grpcMeasure(self, c, r, ports)
			if err != nil {
				return fmt.Errorf("grpc, %s, round %d: %w", c.name, r, err)
			}
			samples = append(samples, s)
			errs[c.key] += failed
			progress("grpc     round %d/%d  %-40s %8.0f calls/s  p50 %6.3f ms  p99 %6.3f ms  errors %d  proxy CPU %s µs/call",
				r, b.opt.rounds, c.name, s.rps(), s.p50(), s.p99(), failed, fmtNum(s.proxyCPU, "%.1f"))
		}
	}
	b.printf("%s", grpcTable(b.opt, samples, errs))
	return nil
}

// grpcMeasure runs one case of the gRPC part: its proxy started afresh
// (none for direct), a warm-up, the measured run with the proxy's CPU time
// read around it. It returns the sample and the calls that failed.
func (b *bench) grpcMeasure(self string, c benchCase, r int, ports []int) (sample, int64, error) {
	target := fmt.Sprintf("127.0.0.1:%d", ports[0])
	var proxy *proc
	if c.key != "direct" {
		port, err := freePort()
		if err != nil {
			return sample{}, 0, err
		}
		target = fmt.Sprintf("127.0.0.1:%d", port)
		name := fmt.Sprintf("grpc-%s-r%d", c.key, r)
		ready := func(p *proc) error { return waitTCP(p, target, 30*time.Second) }
		switch c.key {
		case peerHAProxy:
			proxy, err = b.startPeer(c.key, name, haproxyConfig(port, ports, true), ready)
		case peerNginx:
			proxy, err = b.startPeer(c.key, name, nginxConfig(nginxSetup{Dir: b.nginxDir(name), ErrorLog: b.peerLog(c.key, name),
				Port: port, Backends: ports, GRPC: true}), ready)
		default:
			var admin int
			if admin, err = freePort(); err != nil {
				return sample{}, 0, err
			}
			proxy, err = b.startCaddy(name, grpcConfig(admin, port, ports, c.key == "rp"),
				fmt.Sprintf("http://127.0.0.1:%d/config/", admin), "")
		}
		if err != nil {
			return sample{}, 0, err
		}
		defer stop(proxy, 5*time.Second)
	}
	logPath := filepath.Join(b.out, "logs", fmt.Sprintf("grpc-client-%s-r%d.txt", c.key, r))
	if b.opt.warmup > 0 {
		if _, err := b.runGRPCClientProc(self, target, b.opt.warmup, logPath); err != nil {
			return sample{}, 0, err
		}
	}
	var c0 int64
	if proxy != nil {
		c0, _ = cpuTicks(proxy.pid())
	}
	res, err := b.runGRPCClientProc(self, target, b.opt.duration, logPath)
	if err != nil {
		return sample{}, 0, err
	}
	cpu := math.NaN()
	if proxy != nil {
		c1, err := cpuTicks(proxy.pid())
		if err != nil {
			return sample{}, 0, fmt.Errorf("%s exited during the run? %v", proxy.name, err)
		}
		cpu = b.perRequest(c1-c0, res.Calls)
	}
	return grpcSample(c.key, r, res, cpu), res.Errors, nil
}

// grpcTable is the gRPC part's table: medians over rounds, and medians of
// the per-round ratios to reverse_proxy and to the best peer of the round.
func grpcTable(opt options, samples []sample, errs map[string]int64) string {
	idx := byCase(samples)
	var s strings.Builder
	fmt.Fprintf(&s, "## gRPC\n\nUnary calls (grpc-go's interop TestService UnaryCall, 16-byte payloads) from one Go client of %d connections and %d calls in flight, "+
		"to three grpc-go backends over h2c; every proxy's front is h2c too. %d round(s) × %v, cases interleaved; medians, and medians of the per-round ratios "+
		"(the best peer is whichever of HAProxy and nginx made the more calls per second in that round).\n\n",
		grpcConns, grpcConcurrency, opt.rounds, opt.duration)
	s.WriteString("| case | calls/s | p50 ms | p99 ms | errors | proxy CPU µs/call | calls/s × rp | p99 × rp | CPU × rp | calls/s × peer | p99 × peer | CPU × peer |\n")
	s.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range opt.grpcCases {
		rounds := idx[c.key]
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", c.name,
			fmtNum(medianOf(rounds, mRPS), "%.0f"),
			fmtNum(medianOf(rounds, mP50), "%.3f"),
			fmtNum(medianOf(rounds, mP99), "%.3f"),
			errs[c.key],
			fmtNum(medianOf(rounds, mCPU), "%.1f"),
			fmtNum(ratio(idx, c.key, "rp", mRPS), "%.2f"),
			fmtNum(ratio(idx, c.key, "rp", mP99), "%.2f"),
			fmtNum(ratio(idx, c.key, "rp", mCPU), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mRPS), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mP99), "%.2f"),
			fmtNum(peerRatio(idx, c.key, mCPU), "%.2f"))
	}
	s.WriteString("\n")
	if peers := bestPeers(idx, opt.rounds); peers != "" {
		fmt.Fprintf(&s, "Best peer (the base of × peer) by round: %s.\n\n", peers)
	}
	return s.String()
}

// grpcConfig is a Caddy config serving gRPC over h2c on port, proxying
// to the backends with reverse_proxy (rp) or load_balancer.
func grpcConfig(adminPort, port int, backends []int, rp bool) string {
	var b strings.Builder
	b.WriteString(strings.Replace(globalOptions(adminPort), "\n}", "\n\tservers {\n\t\tprotocols h1 h2c\n\t}\n}", 1))
	fmt.Fprintf(&b, "\nhttp://:%d {\n", port)
	if rp {
		b.WriteString("\treverse_proxy")
		for _, p := range backends {
			fmt.Fprintf(&b, " h2c://127.0.0.1:%d", p)
		}
		b.WriteString(" {\n\t\tlb_policy round_robin\n\t}\n}\n")
		return b.String()
	}
	b.WriteString("\tload_balancer")
	for _, p := range backends {
		fmt.Fprintf(&b, " h2c://127.0.0.1:%d", p)
	}
	b.WriteString("\n}\n")
	return b.String()
}

// The client's shape.
const (
	grpcConns       = 4
	grpcConcurrency = 64
)

// runGRPCClientProc runs this program in client mode against target for d,
// pinned to the load generator's CPUs, and returns what it measured.
func (b *bench) runGRPCClientProc(self, target string, d time.Duration, logPath string) (grpcResult, error) {
	args := []string{self, "grpc-client", "-target", target, "-duration", d.String(),
		"-conns", strconv.Itoa(grpcConns), "-concurrency", strconv.Itoa(grpcConcurrency)}
	if b.opt.genCPUs != "" {
		args = append([]string{"taskset", "-c", b.opt.genCPUs}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout = &out
	logFile, err := os.Create(logPath)
	if err == nil {
		defer logFile.Close()
		cmd.Stderr = logFile
	}
	if err := cmd.Run(); err != nil {
		return grpcResult{}, fmt.Errorf("grpc client: %v (see %s)", err, logPath)
	}
	var res grpcResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("grpc client output %q: %v", out.String(), err)
	}
	return res, nil
}

// runGRPCClient is the client mode: unary calls from -concurrency
// goroutines over -conns connections to -target for -duration; it prints
// a grpcResult as JSON.
func runGRPCClient(args []string) error {
	fs := flag.NewFlagSet("grpc-client", flag.ContinueOnError)
	target := fs.String("target", "", "host:port, on 127.0.0.0/8")
	duration := fs.Duration("duration", 10*time.Second, "how long to call")
	conns := fs.Int("conns", grpcConns, "client connections")
	concurrency := fs.Int("concurrency", grpcConcurrency, "calls in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !strings.HasPrefix(*target, "127.") || *conns < 1 || *concurrency < 1 {
		return fmt.Errorf("want -target 127.x.x.x:port, -conns and -concurrency ≥ 1")
	}
	clients := make([]testpb.TestServiceClient, *conns)
	for i := range clients {
		cc, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		clients[i] = testpb.NewTestServiceClient(cc)
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte("x"), 16)}}
	var mu sync.Mutex
	var all []time.Duration
	var calls, errs int64
	start := time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for i := range *concurrency {
		client := clients[i%len(clients)]
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<14)
			var n, e int64
			for time.Now().Before(deadline) {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(ctx, req)
				cancel()
				if err != nil {
					e++
					continue
				}
				n++
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			calls += n
			errs += e
			mu.Unlock()
		})
	}
	wg.Wait()
	res := grpcResult{Calls: calls, Errors: errs, Seconds: time.Since(start).Seconds()}
	if len(all) > 0 {
		slices.Sort(all)
		res.P50ms = ms(all[len(all)/2])
		res.P99ms = ms(all[len(all)*99/100])
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
