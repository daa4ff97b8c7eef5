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

// grpcCases are what the gRPC client is pointed at.
var grpcCases = []benchCase{
	{"direct", "direct (one backend)"},
	{"rp", "reverse_proxy h2c round_robin"},
	{"lb", "load_balancer h2c round_robin"},
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

// grpcBench measures unary gRPC calls with small messages through
// load_balancer, through reverse_proxy (transport http, versions h2c) and
// to one backend directly, interleaved over rounds: calls/s, p50, p99 and
// Caddy's CPU per call. The client is this program in client mode
// (runGRPCClient), pinned to the load generator's CPUs.
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
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	type sample struct {
		res grpcResult
		cpu float64 // µs of Caddy CPU per call; NaN for direct
	}
	samples := map[string][]sample{}
	for r := 1; r <= b.opt.rounds; r++ {
		for _, c := range grpcCases {
			target := fmt.Sprintf("127.0.0.1:%d", ports[0])
			var caddy *proc
			if c.key != "direct" {
				admin, err1 := freePort()
				port, err2 := freePort()
				if err1 != nil || err2 != nil {
					return fmt.Errorf("no free port: %v %v", err1, err2)
				}
				config := grpcConfig(admin, port, ports, c.key == "rp")
				target = fmt.Sprintf("127.0.0.1:%d", port)
				if caddy, err = b.startCaddy(fmt.Sprintf("grpc-%s-r%d", c.key, r), config,
					fmt.Sprintf("http://127.0.0.1:%d/config/", admin), ""); err != nil {
					return err
				}
			}
			run := func(d time.Duration) (grpcResult, error) {
				return b.runGRPCClientProc(self, target, d, filepath.Join(b.out, "logs", fmt.Sprintf("grpc-client-%s-r%d.txt", c.key, r)))
			}
			if b.opt.warmup > 0 {
				if _, err := run(b.opt.warmup); err != nil {
					stop(caddy, 5*time.Second)
					return err
				}
			}
			var c0 int64
			if caddy != nil {
				c0, _ = cpuTicks(caddy.pid())
			}
			res, err := run(b.opt.duration)
			if err != nil {
				stop(caddy, 5*time.Second)
				return err
			}
			s := sample{res: res, cpu: math.NaN()}
			if caddy != nil {
				c1, err := cpuTicks(caddy.pid())
				if err != nil {
					return fmt.Errorf("caddy exited during the run? %v", err)
				}
				s.cpu = b.perRequest(c1-c0, res.Calls)
				stop(caddy, 5*time.Second)
			}
			samples[c.key] = append(samples[c.key], s)
			progress("grpc     round %d/%d  %-33s %8.0f calls/s  p50 %6.3f ms  p99 %6.3f ms  errors %d  Caddy CPU %.1f µs/call",
				r, b.opt.rounds, c.name, res.rate(), res.P50ms, res.P99ms, res.Errors, s.cpu)
		}
	}

	b.printf("## gRPC\n\nUnary calls (grpc-go's interop TestService UnaryCall, 16-byte payloads) from one Go client of %d connections and %d calls in flight, "+
		"to three grpc-go backends over h2c; Caddy's front is h2c too. %d round(s) × %v, cases interleaved; medians, and medians of the per-round ratios.\n\n",
		grpcConns, grpcConcurrency, b.opt.rounds, b.opt.duration)
	b.printf("| case | calls/s | p50 ms | p99 ms | errors | Caddy CPU µs/call | calls/s × rp | p99 × rp | CPU × rp |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	med := func(xs []float64) float64 {
		slices.Sort(xs)
		if len(xs) == 0 {
			return math.NaN()
		}
		return xs[len(xs)/2]
	}
	for _, c := range grpcCases {
		var rate, p50, p99, cpu, rRate, rP99, rCPU []float64
		var errs int64
		for i, s := range samples[c.key] {
			rp := samples["rp"][i]
			rate, p50, p99, cpu = append(rate, s.res.rate()), append(p50, s.res.P50ms), append(p99, s.res.P99ms), append(cpu, s.cpu)
			rRate, rP99, rCPU = append(rRate, s.res.rate()/rp.res.rate()), append(rP99, s.res.P99ms/rp.res.P99ms), append(rCPU, s.cpu/rp.cpu)
			errs += s.res.Errors
		}
		cpuCell, rCPUCell := "–", "–"
		if c.key != "direct" {
			cpuCell, rCPUCell = f1(med(cpu)), f2(med(rCPU))
		}
		b.printf("| %s | %.0f | %.3f | %.3f | %d | %s | %.2f | %.2f | %s |\n", c.name, med(rate), med(p50), med(p99), errs, cpuCell, med(rRate), med(rP99), rCPUCell)
	}
	b.printf("\n")
	return nil
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
