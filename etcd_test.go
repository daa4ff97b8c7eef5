package caddylb_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdDo runs op until it succeeds, each try bounded: a request to a
// cluster a member of which was just stopped may fail until the client has
// moved to another, or a new leader is elected.
func etcdDo(t testing.TB, what string, op func(ctx context.Context) error) {
	t.Helper()
	var err error
	deadline := time.Now().Add(recvTimeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = op(ctx)
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// register puts key = value under a new lease of ttl and keeps the lease
// alive until the test ends; it returns the lease.
func register(t testing.TB, cl *clientv3.Client, key, value string, ttl int64) clientv3.LeaseID {
	t.Helper()
	var id clientv3.LeaseID
	etcdDo(t, "registering "+key, func(ctx context.Context) error {
		lease, err := cl.Grant(ctx, ttl)
		if err != nil {
			return err
		}
		id = lease.ID
		_, err = cl.Put(ctx, key, value, clientv3.WithLease(lease.ID))
		return err
	})
	kctx, kcancel := context.WithCancel(context.Background())
	t.Cleanup(kcancel)
	ka, err := cl.KeepAlive(kctx, id)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka { // the client renews the lease while this drains
		}
	}()
	return id
}

// put writes key = value in etcd.
func put(t testing.TB, cl *clientv3.Client, key, value string) {
	t.Helper()
	etcdDo(t, "putting "+key, func(ctx context.Context) error {
		_, err := cl.Put(ctx, key, value)
		return err
	})
}

// TestDynamicEtcd: an app whose instances are registered in etcd, watched:
// values as URLs or JSON (weights, drains), a malformed value skipped, a
// revoked lease removing its instance, an empty prefix emptying the pool,
// and etcd down keeping the last set until it is back.
func TestDynamicEtcd(t *testing.T) {
	cluster := newEtcdCluster(t, 1)
	cl := cluster.client()
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	const prefix = "/lbtest/etcd1/"
	register(t, cl, prefix+"b1", b1.URL, 30)
	lease2 := register(t, cl, prefix+"b2", fmt.Sprintf(`{"url": %q, "weight": 2}`, b2.URL), 30)
	register(t, cl, prefix+"bad", `{"url": "ftp://x:1"}`, 30)

	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.instance_added", "load_balancer.instance_removed")
	s.global = global
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app etcd.test {
			dynamic etcd %s {
				endpoints %s
				dial_timeout 1s
			}
		}
	}
	handle_errors {
		respond "{err.message}"
	}
}`, prefix, cluster.endpoints()[0]))

	waitFor(t, "the registered instances", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "etcd.test"))
		return strings.Join(dyn, " ") == b1.URL+" "+b2.URL
	})
	app := dynamicApp(t, "etcd.test")
	if d := app.Dynamic; d.Source != "etcd" || d.Instances != 2 || d.LastError != "" || d.Updated == nil {
		t.Errorf("report's dynamic: %+v, want etcd, 2 instances (the malformed value skipped)", *d)
	}
	if w := instanceOf(t, fetchReport(t), "etcd.test", b2.URL).Weight; w != 2 {
		t.Errorf("b2's weight %d, want 2 from its value", w)
	}
	waitFor(t, "one warning for the malformed value", func() bool {
		return len(logLines(t, s, func(l map[string]any) bool { return l["msg"] == "skipping a malformed value" })) == 1
	})
	seen := map[string]int{}
	for range 30 {
		_, body := s.get("etcd.test", "/")
		seen[body]++
	}
	if seen["b1"] != 10 || seen["b2"] != 20 {
		t.Errorf("30 requests: %v, want b1 10, b2 20 (weight 2)", seen)
	}
	m := scrape(t)
	if got := value(t, m, "caddy_load_balancer_dynamic_instances", "app", "etcd.test", "source", "etcd"); got != 2 {
		t.Errorf("dynamic_instances = %v, want 2", got)
	}
	if got := value(t, m, "caddy_load_balancer_dynamic_updates_total", "app", "etcd.test", "source", "etcd"); got < 1 {
		t.Errorf("dynamic_updates_total = %v, want at least 1", got)
	}

	// A reload keeps the discovered instances, their state and counts:
	// no gap while the new config's watch starts.
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app etcd.test {
			timeout 9s
			dynamic etcd %s {
				endpoints %s
				dial_timeout 1s
			}
		}
	}
	handle_errors {
		respond "{err.message}"
	}
}`, prefix, cluster.endpoints()[0]))
	if _, dyn := urlsOf(dynamicApp(t, "etcd.test")); strings.Join(dyn, " ") != b1.URL+" "+b2.URL {
		t.Fatalf("right after a reload: %v, want the instances kept", dyn)
	}
	if n := instanceOf(t, fetchReport(t), "etcd.test", b2.URL).TotalRequests; n != 20 {
		t.Errorf("b2's total after the reload: %d, want its 20 kept", n)
	}
	if status, _ := s.get("etcd.test", "/"); status != 200 {
		t.Fatalf("a request right after the reload: %d", status)
	}

	// A drain through etcd, a new instance, a revoked lease.
	put(t, cl, prefix+"b1", fmt.Sprintf(`{"url": %q, "draining": true}`, b1.URL))
	register(t, cl, prefix+"b3", b3.URL, 30)
	waitFor(t, "b1 draining and b3 added", func() bool {
		rep := fetchReport(t)
		return instanceOf(t, rep, "etcd.test", b1.URL).State == "draining" && len(dynamicApp(t, "etcd.test").Instances) == 3
	})
	etcdDo(t, "revoking b2's lease", func(ctx context.Context) error {
		_, err := cl.Revoke(ctx, lease2)
		return err
	})
	waitFor(t, "b2 gone with its lease", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "etcd.test"))
		return strings.Join(dyn, " ") == b1.URL+" "+b3.URL
	})
	before := b1.requests.Load()
	for range 6 {
		if status, body := s.get("etcd.test", "/"); status != 200 || body != "b3" {
			t.Fatalf("with b1 drained and b2 gone: %d %q, want b3", status, body)
		}
	}
	if b1.requests.Load() != before {
		t.Error("the instance drained through etcd got new requests")
	}
	var removed []string
	for _, e := range events.all() {
		if e.Name() == "load_balancer.instance_removed" {
			removed = append(removed, fmt.Sprint(e.Data["instance"], " ", e.Data["reason"]))
		}
	}
	if strings.Join(removed, "; ") != b2.URL+" gone from etcd" {
		t.Errorf("instance_removed events: %v, want b2's", removed)
	}

	// etcd stops: the last set serves on, the error shows; back, it
	// catches up.
	cluster.stop(cluster.members[0])
	waitFor(t, "the source's error in the report", func() bool {
		return dynamicApp(t, "etcd.test").Dynamic.LastError != ""
	})
	for range 4 {
		if status, body := s.get("etcd.test", "/"); status != 200 || body != "b3" {
			t.Fatalf("while etcd is down: %d %q", status, body)
		}
	}
	cluster.restart(cluster.members[0])
	cluster.waitHealthy(cluster.members[0])
	put(t, cl, prefix+"b1", b1.URL) // undrained
	waitFor(t, "the change made after etcd came back", func() bool {
		app := dynamicApp(t, "etcd.test")
		return app.Dynamic.LastError == "" && instanceOf(t, fetchReport(t), "etcd.test", b1.URL).State == "healthy"
	})

	// A validly empty answer empties the pool.
	etcdDo(t, "deleting the prefix", func(ctx context.Context) error {
		_, err := cl.Delete(ctx, prefix, clientv3.WithPrefix())
		return err
	})
	waitFor(t, "the pool empty", func() bool { return len(dynamicApp(t, "etcd.test").Instances) == 0 })
	status, body := s.get("etcd.test", "/")
	if status != http.StatusServiceUnavailable || body != `app "etcd.test": no instances: its source etcd has none` {
		t.Errorf("an empty source: %d %q, want 503 saying the source has none", status, body)
	}
}

// TestEtcdUnderReverseProxy: the etcd source is an upstream source like
// any other: reverse_proxy's dynamic upstreams take it.
func TestEtcdUnderReverseProxy(t *testing.T) {
	cluster := newEtcdCluster(t, 1)
	cl := cluster.client()
	b := newBackend(t, "b")
	const prefix = "/lbtest/rp/"
	register(t, cl, prefix+"b", b.URL, 30)
	register(t, cl, prefix+"drained", `{"url": "http://127.0.0.1:1", "draining": true}`, 30)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	reverse_proxy {
		dynamic etcd %s {
			endpoints %s
		}
	}
}`, prefix, cluster.endpoints()[0]))
	for range 5 {
		if status, body := s.get("x.test", "/"); status != 200 || body != "b" {
			t.Fatalf("through reverse_proxy: %d %q, want b (the draining instance left out)", status, body)
		}
	}
}

// TestEtcdExample runs examples/etcd.Caddyfile against a real etcd, on
// free ports, as its comments say to (with a short slow_start: the
// distribution it shows is the one after the ramp).
func TestEtcdExample(t *testing.T) {
	cluster := newEtcdCluster(t, 1)
	raw, err := os.ReadFile("examples/etcd.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	s := newSite(t)
	one, two := freePort(), freePort()
	cfg := strings.NewReplacer(
		"admin localhost:2019", "admin "+adminAddr+"\n\tpersist_config off",
		"http://127.0.0.1:2379", cluster.endpoints()[0],
		":8080", fmt.Sprintf(":%d", s.port),
		":9101", fmt.Sprintf(":%d", one),
		":9102", fmt.Sprintf(":%d", two),
		"slow_start 10s", "slow_start 100ms",
	).Replace(string(raw))
	if err := caddyLoad(adapt(t, cfg)); err != nil {
		t.Fatal(err)
	}
	cl := cluster.client()
	// In one transaction: both join the app together (one after the
	// other, the second would ramp up with slow_start).
	etcdDo(t, "registering the backends", func(ctx context.Context) error {
		lease, err := cl.Grant(ctx, 30)
		if err != nil {
			return err
		}
		_, err = cl.Txn(ctx).Then(
			clientv3.OpPut("/services/api/one", fmt.Sprintf("http://127.0.0.1:%d", one), clientv3.WithLease(lease.ID)),
			clientv3.OpPut("/services/api/two", fmt.Sprintf(`{"url": "http://127.0.0.1:%d", "weight": 2}`, two)),
		).Commit()
		return err
	})
	waitFor(t, "both instances healthy", func() bool {
		app := dynamicApp(t, "api.example.com")
		return len(app.Instances) == 2 && app.Instances[0].State == "healthy" && app.Instances[1].State == "healthy"
	})
	seen := map[string]int{}
	for range 6 {
		_, body := s.get("api.example.com", "/")
		seen[strings.TrimSpace(body)]++
	}
	if seen["one"] != 2 || seen["two"] != 4 {
		t.Errorf("6 requests: %v, want one 2, two 4 (weight 2)", seen)
	}
}

// TestEtcdDownAtStart: a config whose registry cannot be reached loads;
// its configured instances serve, and the discovered ones arrive when the
// registry answers.
func TestEtcdDownAtStart(t *testing.T) {
	cluster := newEtcdCluster(t, 1)
	cl := cluster.client()
	static, dyn := newBackend(t, "static"), newBackend(t, "dyn")
	const prefix = "/lbtest/down/"
	cluster.stop(cluster.members[0])
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app down.test {
			strategy first
			instances %s
			dynamic etcd %s {
				endpoints %s
				dial_timeout 500ms
			}
		}
	}
}`, static.URL, prefix, cluster.endpoints()[0]))
	if status, body := s.get("down.test", "/"); status != 200 || body != "static" {
		t.Fatalf("with etcd down: %d %q, want the configured instance", status, body)
	}
	waitFor(t, "the source's error in the report", func() bool {
		return dynamicApp(t, "down.test").Dynamic.LastError != ""
	})
	cluster.restart(cluster.members[0])
	cluster.waitHealthy(cluster.members[0])
	put(t, cl, prefix+"dyn", dyn.URL)
	waitFor(t, "the discovered instance", func() bool {
		_, d := urlsOf(dynamicApp(t, "down.test"))
		return len(d) == 1 && d[0] == dyn.URL
	})

}
