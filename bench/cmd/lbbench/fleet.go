package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fleetProbers is the fleet's probers option in the fleet cases.
const fleetProbers = 2

// A fleetKind is one configuration of the fleet part: how many Caddy nodes,
// and whether they share their checks through etcd.
type fleetKind struct {
	key, name string
	nodes     int
	fleet     bool
}

// fleetBench measures what a fleet saves the backends: nodes Caddy
// processes with the same app of -fleet-instances instances checked every
// second, each probing everything alone, then sharing the checks on one
// etcd with probers 2 (with 3 nodes and with 2, to show the probes do not
// grow with the nodes): the probes per second the backends answered and
// each node's CPU.
func (b *bench) fleetBench() error {
	n := b.opt.fleetInstances
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	// The backend holds a listener per instance and a kept-alive probe
	// connection per instance and node.
	if need := 4*n + 1000; int(min(lim.Max, 1<<24)) < need {
		return fmt.Errorf("fleet: %d instances need about %d open files in the backend, the limit is %d (raise ulimit -Hn)", n, need, lim.Max)
	}
	endpoint, etcd, err := b.startEtcd("fleet")
	if err != nil {
		return err
	}
	defer stop(etcd, 3*time.Second)
	addrs := loopbackRange(netip.MustParseAddr("127.1.0.1"), n)
	port, err := freePort()
	if err != nil {
		return err
	}
	backend, err := b.procs.start("fleet backend", b.opt.genCPUs, nil, filepath.Join(b.out, "logs", "fleet-backend.log"),
		b.opt.backendBin, "-addr", addrs[0].String(), "-addrs", strconv.Itoa(n), "-port", strconv.Itoa(port))
	if err != nil {
		return err
	}
	defer stop(backend, 5*time.Second)
	statAddr := fmt.Sprintf("%s:%d", addrs[n-1], port)
	if err := waitHTTP(backend, "http://"+statAddr+"/health", "", 60*time.Second); err != nil {
		return err
	}
	var hosts []string
	for _, a := range addrs {
		hosts = append(hosts, a.String())
	}
	progress("fleet    %d instances, %s … %s port %d; etcd at %s", n, addrs[0], addrs[n-1], port, endpoint)

	kinds := []fleetKind{
		{"alone3", "3 nodes, each probing every instance", 3, false},
		{"fleet3", fmt.Sprintf("3 nodes, a fleet with probers %d", fleetProbers), 3, true},
		{"fleet2", fmt.Sprintf("2 nodes, a fleet with probers %d", fleetProbers), 2, true},
	}
	type sample struct {
		probes  float64   // per second, at the backend
		cpu     []float64 // % of one core, per node
		probing []int     // instances each node probed, from its report (fleet only)
	}
	samples := map[string][]sample{}
	const settle = 10 * time.Second
	for r := 1; r <= b.opt.rounds; r++ {
		for _, k := range kinds {
			var nodes []*proc
			var admins []int
			stopNodes := func() {
				for _, p := range nodes {
					stop(p, 10*time.Second)
				}
			}
			for i := 1; i <= k.nodes; i++ {
				admin, err1 := freePort()
				cport, err2 := freePort()
				if err1 != nil || err2 != nil {
					stopNodes()
					return fmt.Errorf("no free port: %v %v", err1, err2)
				}
				config := fleetNodeConfig(admin, cport, hosts, port, k.fleet, endpoint, fmt.Sprintf("node%d", i), fmt.Sprintf("/lbbench/fleet-r%d-%s/", r, k.key))
				p, err := b.startCaddy(fmt.Sprintf("fleet-%s-node%d-r%d", k.key, i, r), config, fmt.Sprintf("http://127.0.0.1:%d/", cport), "")
				if err != nil {
					stopNodes()
					return err
				}
				nodes, admins = append(nodes, p), append(admins, admin)
			}
			progress("fleet    round %d/%d  %s: settling %v, then measuring %v", r, b.opt.rounds, k.name, settle, b.opt.fleetDuration)
			time.Sleep(settle)
			var t0s []int64
			for _, p := range nodes {
				t, _ := cpuTicks(p.pid())
				t0s = append(t0s, t)
			}
			_, c0, _ := backendStats(statAddr)
			start := time.Now()
			time.Sleep(b.opt.fleetDuration)
			_, c1, err := backendStats(statAddr)
			wall := time.Since(start).Seconds()
			s := sample{probes: float64(c1-c0) / wall}
			for i, p := range nodes {
				t, err := cpuTicks(p.pid())
				if err != nil {
					stopNodes()
					return fmt.Errorf("fleet: node %d exited during the run? %v", i+1, err)
				}
				s.cpu = append(s.cpu, float64(t-t0s[i])/float64(b.clkTck)/wall*100)
				if k.fleet {
					probing, err := fleetProbing(admins[i])
					if err != nil {
						progress("fleet    node %d report: %v", i+1, err)
					}
					s.probing = append(s.probing, probing)
				}
			}
			stopNodes()
			if err != nil {
				return fmt.Errorf("fleet: backend stats: %v", err)
			}
			samples[k.key] = append(samples[k.key], s)
			progress("fleet    round %d/%d  %s: %.0f probes/s at the backends, node CPU %s%% of a core, probing %v",
				r, b.opt.rounds, k.name, s.probes, joinFloats(s.cpu), s.probing)
		}
	}

	b.printf("## Fleet health\n\nOne app of %d instances (%s … %s, port %d, one backend process), health_check_cooldown 1s, on each node; "+
		"the fleet on one etcd member (lease_ttl 10s, heartbeat 1s). Measured over %v after %v of settling; %d round(s), medians. "+
		"Probes/s: health checks the backend answered; the budget with a fleet is probers × instances / interval = %d/s, whatever the node count. "+
		"CPU: each Caddy node's user+system time as %% of one core (all nodes share CPU %s).\n\n",
		n, addrs[0], addrs[n-1], port, b.opt.fleetDuration, settle, b.opt.rounds, fleetProbers*n, orDefault(b.opt.serverCPUs, "any"))
	b.printf("| config | probes/s at the backends | per instance /s | vs budget | CPU per node %% of one core | instances probed per node |\n|---|---:|---:|---:|---|---|\n")
	for _, k := range kinds {
		var probes []float64
		cpu := make([][]float64, k.nodes)
		probing := make([][]float64, k.nodes)
		for _, s := range samples[k.key] {
			probes = append(probes, s.probes)
			for i := range s.cpu {
				cpu[i] = append(cpu[i], s.cpu[i])
			}
			for i := range s.probing {
				probing[i] = append(probing[i], float64(s.probing[i]))
			}
		}
		var cpus, probed []string
		for i := range cpu {
			cpus = append(cpus, fmt.Sprintf("%.1f", median(cpu[i])))
			if len(probing[i]) > 0 {
				probed = append(probed, fmt.Sprintf("%.0f", median(probing[i])))
			}
		}
		budget := float64(k.nodes * n)
		if k.fleet {
			budget = float64(fleetProbers * n)
		}
		p := median(probes)
		b.printf("| %s | %.0f | %.2f | %.2f× | %s | %s |\n", k.name, p, p/float64(n), p/budget, strings.Join(cpus, ", "), orDefault(strings.Join(probed, ", "), "all"))
	}
	b.printf("\n")
	return nil
}

// fleetNodeConfig is one node's Caddy config: an app of the instances at
// addrs:backendPort checked every second and, with fleet, the fleet app on
// the etcd at endpoint under prefix, named node.
func fleetNodeConfig(adminPort, port int, addrs []string, backendPort int, fleet bool, endpoint, node, prefix string) string {
	config := manyInstancesConfig(adminPort, port, addrs, backendPort, true, "1s", "5s")
	if !fleet {
		return config
	}
	global := globalOptions(adminPort)
	withFleet := strings.TrimSuffix(global, "}\n") + fmt.Sprintf("\tload_balancer_fleet {\n\t\tendpoints %s\n\t\tprefix %s\n\t\tnode %s\n\t\tprobers %d\n\t}\n}\n",
		endpoint, prefix, node, fleetProbers)
	return withFleet + strings.TrimPrefix(config, global)
}

// fleetProbing reads a node's report and counts the instances it probes.
func fleetProbing(adminPort int) (int, error) {
	var rep struct {
		Apps []struct {
			Instances []struct {
				Fleet *struct {
					ProbedHere bool `json:"probed_here"`
				} `json:"fleet"`
			} `json:"instances"`
		} `json:"apps"`
	}
	if err := getJSON(fmt.Sprintf("http://127.0.0.1:%d/api/v1/loadBalancers/report", adminPort), &rep); err != nil {
		return 0, err
	}
	n := 0
	for _, app := range rep.Apps {
		for _, in := range app.Instances {
			if in.Fleet != nil && in.Fleet.ProbedHere {
				n++
			}
		}
	}
	return n, nil
}

// joinFloats formats vs with one decimal, comma-separated.
func joinFloats(vs []float64) string {
	var s []string
	for _, v := range vs {
		s = append(s, fmt.Sprintf("%.1f", v))
	}
	return strings.Join(s, ", ")
}
