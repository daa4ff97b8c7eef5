package caddylb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/golb/caddy-lb/report"
)

// node is a Caddy process of a fleet: this test binary run as caddy.
type node struct {
	t      *testing.T
	name   string
	port   int    // its site
	admin  string // its admin endpoint
	out    *syncBuffer
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has ended
}

// startNode runs Caddy with caddyfile ({port} and {admin} filled in) until
// the test ends.
func startNode(t *testing.T, name, caddyfile string) *node {
	t.Helper()
	n := &node{t: t, name: name, port: freePort(), admin: fmt.Sprintf("localhost:%d", freePort()), out: new(syncBuffer)}
	cfg := strings.NewReplacer("{port}", fmt.Sprint(n.port), "{admin}", n.admin).Replace(caddyfile)
	cmd := caddyCmd(t, "run", "--config", writeFile(t, "Caddyfile", cfg), "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = n.out, n.out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	n.cmd, n.exited = cmd, exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy %s output:\n%s", name, n.out.String())
		}
	})
	waitFor(t, "caddy "+name+" to serve its report", func() bool {
		select {
		case <-exited:
			t.Fatalf("caddy %s exited:\n%s", name, n.out.String())
		default:
		}
		_, err := n.report()
		return err == nil
	})
	return n
}

// kill kills the node's process (SIGKILL: no goodbye), and waits until
// it has ended.
func (n *node) kill() {
	_ = n.cmd.Process.Kill()
	recv(n.t, n.exited, "caddy "+n.name+" to end")
}

// report reads the node's load balancer report.
func (n *node) report() (report.Report, error) {
	var rep report.Report
	resp, err := adminClient.Get("http://" + n.admin + report.Path)
	if err != nil {
		return rep, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return rep, fmt.Errorf("status %d", resp.StatusCode)
	}
	return rep, json.NewDecoder(resp.Body).Decode(&rep)
}

// members returns the node's instances of app by URL, with their states,
// sorted: "url state".
func (n *node) members(app string) string {
	rep, err := n.report()
	if err != nil {
		return "error: " + err.Error()
	}
	var out []string
	for _, a := range rep.Apps {
		if a.Host != app {
			continue
		}
		for _, in := range a.Instances {
			out = append(out, in.URL+" "+in.State)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// get sends a GET to the node with Host app and header X-Key key, and
// returns the backend that answered.
func (n *node) get(app, key string) (string, error) {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", n.port), nil)
	req.Host = app
	req.Header.Set("X-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return string(body), err
}

// TestFleet: two Caddy processes with the same config and one 3-member etcd
// cluster behave as one balancer without talking to each other: the same
// members, the same drains, the same hash mapping; they go on when a member
// or all of etcd is down, and catch up when it is back.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("the fleet test starts etcd and two Caddy processes")
	}
	cluster := newEtcdCluster(t, 3)
	cl := cluster.client()
	backends := []*backend{newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")}
	const prefix = "/lbtest/fleet/"
	leases := make([]clientv3.LeaseID, len(backends))
	for i, b := range backends {
		leases[i] = register(t, cl, prefix+b.name, b.URL, 30)
	}
	caddyfile := fmt.Sprintf(`{
	admin {admin}
	persist_config off
	default_bind 127.0.0.1
}
http://:{port} {
	load_balancer {
		app fleet.test {
			strategy hash
			hash_key header:X-Key
			dynamic etcd %s {
				endpoints %s
				dial_timeout 1s
			}
		}
	}
}`, prefix, strings.Join(cluster.endpoints(), " "))
	nodes := []*node{startNode(t, "n1", caddyfile), startNode(t, "n2", caddyfile)}

	// same waits until both nodes report want ("url state" pairs, in any
	// order) as the members of the app, and returns how long that took
	// after since.
	same := func(what, want string, since time.Time) time.Duration {
		t.Helper()
		pairs := strings.Split(want, ", ")
		slices.Sort(pairs)
		want = strings.Join(pairs, ", ")
		var got [2]string
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("last seen: n1 %q, n2 %q; want %q", got[0], got[1], want)
			}
		})
		waitFor(t, what+" on both nodes", func() bool {
			got = [2]string{nodes[0].members("fleet.test"), nodes[1].members("fleet.test")}
			return got[0] == want && got[1] == want
		})
		return time.Since(since)
	}
	all := fmt.Sprintf("%s healthy, %s healthy, %s healthy", backends[0].URL, backends[1].URL, backends[2].URL)
	same("all three backends", all, time.Now())

	// Both route to all three, and 1,000 keys map identically.
	for k := range 1000 {
		key := fmt.Sprintf("tenant-%d", k)
		a, err := nodes[0].get("fleet.test", key)
		if err != nil {
			t.Fatal(err)
		}
		b, err := nodes[1].get("fleet.test", key)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatalf("key %s: node n1 sends it to %s, n2 to %s", key, a, b)
		}
	}
	for _, b := range backends {
		if b.requests.Load() == 0 {
			t.Errorf("%s got none of the 2,000 requests", b.name)
		}
	}
	var latencies []time.Duration

	// A drain through etcd: neither node sends b1 new requests.
	start := time.Now()
	put(t, cl, prefix+"b1", fmt.Sprintf(`{"url": %q, "draining": true}`, backends[0].URL))
	latencies = append(latencies, same("b1 draining", fmt.Sprintf("%s draining, %s healthy, %s healthy",
		backends[0].URL, backends[1].URL, backends[2].URL), start))
	before := backends[0].requests.Load()
	for k := range 100 {
		for _, n := range nodes {
			if _, err := n.get("fleet.test", fmt.Sprintf("tenant-%d", k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := backends[0].requests.Load() - before; got != 0 {
		t.Errorf("the drained backend got %d new requests", got)
	}

	// A revoked lease: both drop b2.
	start = time.Now()
	etcdDo(t, "revoking b2's lease", func(ctx context.Context) error {
		_, err := cl.Revoke(ctx, leases[1])
		return err
	})
	latencies = append(latencies, same("b2 gone", fmt.Sprintf("%s draining, %s healthy", backends[0].URL, backends[2].URL), start))

	// One member down: changes still arrive.
	cluster.stop(cluster.members[0])
	start = time.Now()
	register(t, cl, prefix+"b2", backends[1].URL, 30)
	latencies = append(latencies, same("b2 back with a member down", fmt.Sprintf("%s draining, %s healthy, %s healthy",
		backends[0].URL, backends[1].URL, backends[2].URL), start))

	// All of etcd down: both keep serving the last set.
	cluster.stop(cluster.members[1])
	cluster.stop(cluster.members[2])
	for _, n := range nodes {
		waitFor(t, "node "+n.name+" to see etcd down", func() bool {
			rep, err := n.report()
			return err == nil && len(rep.Apps) == 1 && rep.Apps[0].Dynamic != nil && rep.Apps[0].Dynamic.LastError != ""
		})
		for k := range 20 {
			if _, err := n.get("fleet.test", fmt.Sprintf("tenant-%d", k)); err != nil {
				t.Fatalf("node %s with etcd down: %v", n.name, err)
			}
		}
	}

	// etcd back: both catch up with a change made since.
	for _, m := range cluster.members {
		cluster.restart(m)
	}
	cluster.waitHealthy(cluster.members...)
	start = time.Now()
	put(t, cl, prefix+"b1", backends[0].URL)
	latencies = append(latencies, same("b1 undrained after etcd came back", all, start))
	for _, n := range nodes {
		waitFor(t, "node "+n.name+" to clear its error", func() bool {
			rep, err := n.report()
			return err == nil && rep.Apps[0].Dynamic.LastError == ""
		})
	}
	t.Logf("a change in etcd was in effect on both nodes (reports polled every 5 ms) after %v", latencies)
}
