package caddylb_test

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golb/caddy-lb/health"
	"github.com/golb/caddy-lb/report"
)

// fleetBackend is one server that plays many instances, each at a base
// path of its own (/i00, /i01...): it counts each instance's probes by
// the node that sent them (the probes' health.NodeHeader) and its real
// requests, and fails the health checks of the instances the test says.
type fleetBackend struct {
	*httptest.Server
	mu      sync.Mutex
	probes  map[string]map[string]int // by instance path, then node
	served  map[string]int            // real requests, by instance path
	failing map[string]bool
}

func newFleetBackend(t *testing.T) *fleetBackend {
	b := &fleetBackend{probes: map[string]map[string]int{}, served: map[string]int{}, failing: map[string]bool{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inst, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		b.mu.Lock()
		failing := b.failing[inst]
		if rest == "health" {
			node := r.Header.Get(health.NodeHeader)
			if b.probes[inst] == nil {
				b.probes[inst] = map[string]int{}
			}
			b.probes[inst][node]++
		} else {
			b.served[inst]++
		}
		b.mu.Unlock()
		if rest == "health" && failing {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, inst)
	}))
	t.Cleanup(b.Close)
	return b
}

// instanceURL is the URL of the instance at path inst.
func (b *fleetBackend) instanceURL(inst string) string { return b.URL + "/" + inst }

// setFailing makes the health checks of inst fail (503) or pass.
func (b *fleetBackend) setFailing(inst string, failing bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failing[inst] = failing
}

// resetProbes forgets the probes counted so far.
func (b *fleetBackend) resetProbes() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.probes)
}

// probers returns the nodes that probed inst since the last reset, with
// how many times each.
func (b *fleetBackend) probers(inst string) map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.probes[inst])
}

func (b *fleetBackend) servedBy(inst string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served[inst]
}

// fleetView is what one node's report says of the fleet's app: its
// instances' fleet entries, by instance path.
type fleetView struct {
	fleet     *report.Fleet
	instances map[string]report.Instance
}

func (n *node) fleetView(app string) (fleetView, error) {
	rep, err := n.report()
	if err != nil {
		return fleetView{}, err
	}
	fv := fleetView{fleet: rep.Fleet, instances: map[string]report.Instance{}}
	for _, a := range rep.Apps {
		if a.Host != app {
			continue
		}
		for _, in := range a.Instances {
			fv.instances[in.URL[strings.LastIndexByte(in.URL, '/')+1:]] = in
		}
	}
	return fv, nil
}

// TestFleetHealth: three Caddy processes in a fleet on a real 3-member
// etcd share the health checks of 30 instances: each is probed by exactly
// its 2 probers (rendezvous hashing over the members), the third follows
// their verdicts; an instance that fails is out on every node; a prober
// killed with SIGKILL has its instances taken over; with etcd stopped,
// every node probes everything itself and serves on, then goes back to
// shared probing; a node joining moves about 1/N of the assignments, all
// to itself.
func TestFleetHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("the fleet health test starts etcd and three Caddy processes")
	}
	cluster := newEtcdCluster(t, 3)
	b := newFleetBackend(t)
	var insts, urls []string
	for i := range 30 {
		inst := fmt.Sprintf("i%02d", i)
		insts = append(insts, inst)
		urls = append(urls, b.instanceURL(inst))
	}
	const (
		app      = "fh.test"
		cooldown = 500 * time.Millisecond
	)
	caddyfile := func(name string) string {
		return fmt.Sprintf(`{
	admin {admin}
	persist_config off
	default_bind 127.0.0.1
	load_balancer_fleet {
		endpoints %s
		prefix /lbtest/fleethealth/
		node %s
		probers 2
		lease_ttl 2s
		heartbeat 100ms
		dial_timeout 1s
	}
}
http://:{port} {
	load_balancer {
		app %s {
			health_uri /health
			health_check_cooldown %v
			health_fails 2
			health_passes 2
			instances %s
		}
	}
}`, strings.Join(cluster.endpoints(), " "), name, app, cooldown, strings.Join(urls, " "))
	}
	nodes := map[string]*node{}
	start := func(name string) { nodes[name] = startNode(t, name, caddyfile(name)) }
	live := func() []*node {
		var out []*node
		for _, name := range slices.Sorted(maps.Keys(nodes)) {
			out = append(out, nodes[name])
		}
		return out
	}

	// converged waits until every live node is joined with the given
	// members, agrees on every instance's probers (2 of them), probes the
	// instances it is a prober of and follows verdicts for the others, and
	// returns the assignment: the probers of each instance.
	converged := func(what string, members ...string) map[string][]string {
		t.Helper()
		var assignment map[string][]string
		var last string
		waitFor(t, what, func() bool {
			assignment = map[string][]string{}
			for _, n := range live() {
				fv, err := n.fleetView(app)
				if err != nil || fv.fleet == nil || fv.fleet.State != "joined" || !slices.Equal(fv.fleet.Members, members) || len(fv.instances) != len(insts) {
					last = fmt.Sprintf("%s: %+v, %v", n.name, fv.fleet, err)
					return false
				}
				for inst, in := range fv.instances {
					f := in.Fleet
					if f == nil || len(f.Probers) != 2 || f.Prober != slices.Contains(f.Probers, n.name) || f.ProbedHere != f.Prober || (!f.Prober && f.VerdictBy == "") {
						last = fmt.Sprintf("%s: %s: %+v", n.name, inst, f)
						return false
					}
					if got, ok := assignment[inst]; ok && !slices.Equal(got, f.Probers) {
						last = fmt.Sprintf("%s: %s: probers %v, another node says %v", n.name, inst, f.Probers, got)
						return false
					}
					assignment[inst] = f.Probers
				}
			}
			return true
		})
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s: last seen: %s", what, last)
			}
		})
		return assignment
	}
	// probedOnlyBy waits until every instance has had 3 probes from each
	// of its probers since the counts were reset, and fails if any other
	// node probed it.
	probedOnlyBy := func(what string, assignment map[string][]string) {
		t.Helper()
		waitFor(t, what, func() bool {
			for _, inst := range insts {
				got := b.probers(inst)
				for _, p := range assignment[inst] {
					if got[p] < 3 {
						return false
					}
				}
			}
			return true
		})
		for _, inst := range insts {
			for node, n := range b.probers(inst) {
				if !slices.Contains(assignment[inst], node) {
					t.Errorf("%s: instance %s got %d probes from %q, which is not one of its probers %v", what, inst, n, node, assignment[inst])
				}
			}
		}
	}
	// served sends n requests to each live node and fails on any but 200;
	// it returns how many each instance served.
	serve := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for _, nd := range live() {
			for range n {
				inst, err := nd.get(app, "")
				if err != nil {
					t.Fatalf("node %s: %v", nd.name, err)
				}
				got[inst]++
			}
		}
		return got
	}

	// Two nodes, then a third joins: every slot that moves goes to it.
	start("n1")
	start("n2")
	two := converged("two nodes converged", "n1", "n2")
	start("n3")
	three := converged("three nodes converged", "n1", "n2", "n3")
	moved := 0
	for _, inst := range insts {
		for _, p := range two[inst] {
			if !slices.Contains(three[inst], p) {
				moved++
			}
		}
		for _, p := range three[inst] {
			if !slices.Contains(two[inst], p) && p != "n3" {
				t.Errorf("instance %s: probers %v with two nodes, %v with three: %s took a slot, not the newcomer", inst, two[inst], three[inst], p)
			}
		}
	}
	slots := 2 * len(insts)
	t.Logf("a third node joining moved %d of %d probe assignments (%.0f%%; 1/N is 33%%)", moved, slots, 100*float64(moved)/float64(slots))
	if moved < slots/6 || moved > slots*2/3 {
		t.Errorf("a third node moved %d of %d assignments, want about 1/3", moved, slots)
	}

	// Each instance is probed by exactly its 2 probers, and every node
	// routes to all of them.
	b.resetProbes()
	probedOnlyBy("shared probing with three nodes", three)
	if got := serve(30); len(got) != len(insts) {
		t.Errorf("90 round-robin requests reached %d instances, want all %d", len(got), len(insts))
	}

	// An instance that starts failing is out on all three nodes.
	failing := insts[7]
	b.setFailing(failing, true)
	began := time.Now()
	waitFor(t, "the failing instance out on every node", func() bool {
		for _, n := range live() {
			fv, err := n.fleetView(app)
			if err != nil || fv.instances[failing].State != "unhealthy" {
				return false
			}
		}
		return true
	})
	t.Logf("a failing instance was out on all 3 nodes %v after it began to fail (checks every %v, health_fails 2)", time.Since(began).Round(time.Millisecond), cooldown)
	before := b.servedBy(failing)
	serve(30)
	if got := b.servedBy(failing) - before; got != 0 {
		t.Errorf("the failing instance got %d requests after every node had it out", got)
	}
	b.setFailing(failing, false)
	converged("the instance back", "n1", "n2", "n3")

	// A prober killed: another node takes its instances over, and the
	// nodes left never route to an instance found failing meanwhile.
	var taken, failed string // instances n1 probes: one to watch taken over, one to fail
	for _, inst := range insts {
		if slices.Contains(three[inst], "n1") {
			if taken == "" {
				taken = inst
			} else if failed == "" {
				failed = inst
			}
		}
	}
	heir := "n2"
	if slices.Contains(three[taken], "n2") {
		heir = "n3"
	}
	killed := time.Now()
	nodes["n1"].kill()
	delete(nodes, "n1")
	b.resetProbes()
	b.setFailing(failed, true)
	waitFor(t, "the instance failing after the kill out on the nodes left", func() bool {
		for _, n := range live() {
			fv, err := n.fleetView(app)
			if err != nil || fv.instances[failed].State != "unhealthy" {
				return false
			}
		}
		return true
	})
	before = b.servedBy(failed)
	serve(30)
	if got := b.servedBy(failed) - before; got != 0 {
		t.Errorf("the failing instance got %d requests after the nodes left had it out", got)
	}
	waitFor(t, heir+" probing an instance of the killed node", func() bool { return b.probers(taken)[heir] > 0 })
	tookOver := time.Since(killed)
	converged("two nodes after the kill", "n2", "n3")
	t.Logf("after a prober's SIGKILL, %s probed one of its instances %v later, and the membership dropped it within %v (lease_ttl 2s, checks every %v)",
		heir, tookOver.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), cooldown)
	b.setFailing(failed, false)

	// The killed node comes back under its name.
	start("n1")
	three = converged("three nodes again", "n1", "n2", "n3")

	// etcd stopped entirely: every node probes every instance itself and
	// serves on; back, they share again.
	for _, m := range cluster.members {
		cluster.stop(m)
	}
	b.resetProbes()
	waitFor(t, "every node probing every instance with etcd down", func() bool {
		for _, inst := range insts {
			got := b.probers(inst)
			for _, n := range live() {
				if got[n.name] < 2 {
					return false
				}
			}
		}
		return true
	})
	if got := serve(30); len(got) != len(insts) {
		t.Errorf("with etcd down, 90 requests reached %d instances, want all %d", len(got), len(insts))
	}
	for _, n := range live() {
		if fv, err := n.fleetView(app); err != nil || fv.fleet == nil || fv.fleet.State == "joined" {
			t.Errorf("node %s with etcd down: fleet %+v, %v; want a state that says why it probes everything", n.name, fv.fleet, err)
		}
	}
	for _, m := range cluster.members {
		cluster.restart(m)
	}
	cluster.waitHealthy(cluster.members...)
	back := converged("shared again after etcd came back", "n1", "n2", "n3")
	b.resetProbes()
	probedOnlyBy("shared probing after etcd came back", back)
}

// TestFleetInProcess: the fleet as one of its members sees it, in this
// process's Caddy: events and log lines when a member comes and goes, the
// report's fleet section and the fleet metrics.
func TestFleetInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and a Caddy process")
	}
	cluster := newEtcdCluster(t, 1)
	b := newFleetBackend(t)
	urls := []string{b.instanceURL("a"), b.instanceURL("b"), b.instanceURL("c")}
	fleetOption := fmt.Sprintf(`
	load_balancer_fleet {
		endpoints %s
		prefix /lbtest/inprocess/
		node %%s
		lease_ttl 2s
		heartbeat 100ms
	}`, cluster.endpoints()[0])
	site := fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app ip.test {
			health_uri /health
			health_check_cooldown 200ms
			instances %s
		}
	}
}`, strings.Join(urls, " "))

	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.fleet_member_joined", "load_balancer.fleet_member_left")
	s.global = fmt.Sprintf(fleetOption, "here") + global
	s.load(site)
	waitFor(t, "this node joined", func() bool {
		rep := fetchReport(t)
		return rep.Fleet != nil && rep.Fleet.State == "joined" && slices.Equal(rep.Fleet.Members, []string{"here"})
	})
	// Alone, it probes everything.
	waitFor(t, "every instance probed here", func() bool {
		for _, u := range urls {
			if in := instanceOf(t, fetchReport(t), "ip.test", u); in.Fleet == nil || !in.Fleet.ProbedHere || !in.Fleet.Prober {
				return false
			}
		}
		return true
	})

	there := startNode(t, "there", fmt.Sprintf("{\n\tadmin {admin}\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n%s\n}\n%s", fmt.Sprintf(fleetOption, "there"), site))
	e := events.nextEvent(t)
	if e.Name() != "load_balancer.fleet_member_joined" || e.Data["member"] != "there" || e.Data["node"] != "here" {
		t.Errorf("event %s %v, want load_balancer.fleet_member_joined of there, seen by here", e.Name(), e.Data)
	}
	waitFor(t, "both members in the report", func() bool {
		rep := fetchReport(t)
		return rep.Fleet != nil && slices.Equal(rep.Fleet.Members, []string{"here", "there"}) && rep.Fleet.Instances == 3
	})
	rep := fetchReport(t)
	if f := rep.Fleet; f.Node != "here" || f.Probers != 2 || f.Prefix != "/lbtest/inprocess/" {
		t.Errorf("report's fleet: %+v", *f)
	}
	// Two members, two probers: both probe everything, each from its own
	// name.
	b.resetProbes()
	waitFor(t, "probes from both nodes", func() bool {
		for _, inst := range []string{"a", "b", "c"} {
			if p := b.probers(inst); p["here"] == 0 || p["there"] == 0 {
				return false
			}
		}
		return true
	})
	metrics := map[string]float64{}
	for _, m := range scrape(t) {
		metrics[m.name] = m.value
	}
	if metrics["caddy_load_balancer_fleet_members"] != 2 || metrics["caddy_load_balancer_fleet_instances"] != 3 ||
		metrics["caddy_load_balancer_fleet_joined"] != 1 || metrics["caddy_load_balancer_probes_sent_total"] == 0 ||
		metrics["caddy_load_balancer_fleet_verdicts_written_total"] == 0 {
		t.Errorf("fleet metrics: %v", metrics)
	}
	waitFor(t, "the other node's verdicts read", func() bool {
		for _, m := range scrape(t) {
			if m.name == "caddy_load_balancer_fleet_verdicts_received_total" && m.value > 0 {
				return true
			}
		}
		return false
	})

	there.kill()
	e = events.nextEvent(t)
	if e.Name() != "load_balancer.fleet_member_left" || e.Data["member"] != "there" {
		t.Errorf("event %s %v, want load_balancer.fleet_member_left of there", e.Name(), e.Data)
	}
	lines := logLines(t, s, func(l map[string]any) bool {
		return l["msg"] == "fleet member joined" || l["msg"] == "fleet member left"
	})
	if len(lines) != 2 {
		t.Errorf("log lines of membership changes: %v, want one joined and one left", lines)
	}
}

// TestFleetConfigErrors: a fleet config that cannot work is refused, with
// the option named, at adapt time for the Caddyfile and at load for JSON;
// the running config keeps serving.
func TestFleetConfigErrors(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	good := fmt.Sprintf("http://:{port} {\n\tload_balancer %s\n}", b.URL)
	s.load(good)
	for _, tt := range []struct{ option, want string }{
		{"probers 17", "load_balancer_fleet: probers: invalid fleet option: want an integer from 0 to 16, got 17"},
		{"probers two", `probers: want an integer, got "two"`},
		{"lease_ttl 1500ms", "load_balancer_fleet: lease_ttl: invalid fleet option: want whole seconds, at least 2s"},
		{"heartbeat 10s", "load_balancer_fleet: heartbeat: invalid fleet option: must be shorter than lease_ttl"},
		{"node a/b", `load_balancer_fleet: node: invalid fleet option: want letters, digits and .-_: only, got "a/b"`},
		{"prefix fleet/", "load_balancer_fleet: prefix: invalid fleet option"},
		{"endpoints 127.0.0.1:2379", ""}, // refused at load: the client's URL check
		{"color blue", `unrecognized load_balancer_fleet option "color"`},
	} {
		s.global = "\tload_balancer_fleet {\n\t\t" + tt.option + "\n\t}"
		err := s.tryLoadErr(good)
		if err == nil {
			t.Errorf("%s: loaded", tt.option)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want it to say %q", tt.option, err, tt.want)
		}
	}
	s.global = ""
	if status, body := s.get("", "/"); status != 200 || body != "b" {
		t.Errorf("the running config after the refusals: %d %q", status, body)
	}
	cfg := fmt.Sprintf(`{"admin":{"listen":%q},"apps":{"load_balancer_fleet":{"probers":-1},"http":{"servers":{"s":{"listen":["127.0.0.1:%d"],"routes":[{"handle":[{"handler":"load_balancer","apps":[{"instances":[{"url":%q}]}]}]}]}}}}}`,
		adminAddr, s.port, b.URL)
	if err := caddyLoad([]byte(cfg)); err == nil || !strings.Contains(err.Error(), "load_balancer_fleet: probers: invalid fleet option: want an integer from 0 to 16, got -1") {
		t.Errorf("JSON with probers -1: %v", err)
	}
	if status, body := s.get("", "/"); status != 200 || body != "b" {
		t.Errorf("the running config after the JSON refusal: %d %q", status, body)
	}
}
