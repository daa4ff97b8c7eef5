package caddylb_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	caddylb "github.com/golb/caddy-lb"
	"github.com/golb/caddy-lb/report"
)

// hostPort returns the port of a backend's URL.
func hostPort(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// dynamicApp returns the report entry of the app of host, failing the
// test if it has no dynamic source.
func dynamicApp(t testing.TB, host string) report.App {
	t.Helper()
	for _, app := range fetchReport(t).Apps {
		if app.Host == host {
			if app.Dynamic == nil {
				t.Fatalf("app %s has no dynamic source in the report: %+v", host, app)
			}
			return app
		}
	}
	t.Fatalf("no app %s in the report", host)
	return report.App{}
}

// urlsOf returns the URLs of an app's instances, by source.
func urlsOf(app report.App) (config, dynamic []string) {
	for _, in := range app.Instances {
		if in.Source == "dynamic" {
			dynamic = append(dynamic, in.URL)
		} else {
			config = append(config, in.URL)
		}
	}
	return config, dynamic
}

// TestDynamicSRV: an app whose instances come from DNS SRV records (and
// one from the config), resolved through the source's own resolver (a DNS
// server of the test: the machine's resolver knows none of the names).
// Instances come and go with the records; a new one gets traffic after its
// first passing health check; a failing DNS server keeps the last set.
func TestDynamicSRV(t *testing.T) {
	dnsSrv := newDNSServer(t)
	static := newBackend(t, "static")
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	for _, b := range []*backend{b1, b2, b3} {
		dnsSrv.setA(b.name+".svc.lbtest", "127.0.0.1")
	}
	const srvName = "_api._tcp.srv1.lbtest"
	dnsSrv.setSRV(srvName, "b1.svc.lbtest:"+hostPort(t, b1.URL), "b2.svc.lbtest:"+hostPort(t, b2.URL))
	url1 := "http://b1.svc.lbtest:" + hostPort(t, b1.URL)
	url2 := "http://b2.svc.lbtest:" + hostPort(t, b2.URL)
	url3 := "http://b3.svc.lbtest:" + hostPort(t, b3.URL)

	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.instance_added", "load_balancer.instance_removed")
	s.global = global
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app dyn.test {
			instances %s
			dynamic srv %s {
				resolvers %s
				refresh 1ms
			}
			dynamic_refresh 20ms
			health_uri /health
			health_check_cooldown 20ms
		}
	}
}`, static.URL, srvName, dnsSrv.addr))

	waitFor(t, "both SRV targets in the report", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "dyn.test"))
		return strings.Join(dyn, " ") == url1+" "+url2
	})
	app := dynamicApp(t, "dyn.test")
	if d := app.Dynamic; d.Source != "srv" || d.Instances != 2 || d.Updated == nil || d.LastError != "" {
		t.Errorf("report's dynamic: %+v, want source srv, 2 instances, updated, no error", *d)
	}
	if cfg, _ := urlsOf(app); strings.Join(cfg, " ") != static.URL {
		t.Errorf("configured instances %v, want %s", cfg, static.URL)
	}
	// New instances wait for their first passing check.
	waitFor(t, "the discovered instances healthy", func() bool {
		app := dynamicApp(t, "dyn.test")
		return instanceOf(t, fetchReport(t), "dyn.test", url1).State == "healthy" &&
			instanceOf(t, fetchReport(t), "dyn.test", url2).State == "healthy" && len(app.Instances) == 3
	})
	seen := map[string]int{}
	for range 30 {
		_, body := s.get("dyn.test", "/")
		seen[body]++
	}
	if seen["static"] != 10 || seen["b1"] != 10 || seen["b2"] != 10 {
		t.Errorf("30 round-robin requests: %v, want 10 each", seen)
	}

	// b2 leaves, b3 comes: b3 after its first passing check.
	b3.health.Store(http.StatusServiceUnavailable)
	dnsSrv.setSRV(srvName, "b1.svc.lbtest:"+hostPort(t, b1.URL), "b3.svc.lbtest:"+hostPort(t, b3.URL))
	waitFor(t, "b3 discovered and b2 gone", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "dyn.test"))
		return strings.Join(dyn, " ") == url1+" "+url3
	})
	before := b3.requests.Load()
	waitFor(t, "b3 checked and found unhealthy", func() bool {
		return instanceOf(t, fetchReport(t), "dyn.test", url3).LastChecked != nil
	})
	for range 10 {
		if _, body := s.get("dyn.test", "/"); body == "b2" || body == "b3" {
			t.Fatalf("a request went to %s: b2 left, b3 has not passed a check", body)
		}
	}
	if b3.requests.Load() != before {
		t.Fatal("b3 got requests before passing a check")
	}
	b3.health.Store(0)
	waitFor(t, "b3 healthy", func() bool {
		return instanceOf(t, fetchReport(t), "dyn.test", url3).State == "healthy"
	})
	clear(seen)
	for range 30 {
		_, body := s.get("dyn.test", "/")
		seen[body]++
	}
	if seen["b3"] != 10 || seen["b2"] != 0 {
		t.Errorf("30 requests after the change: %v, want b3 10, b2 none", seen)
	}
	var added, removed []string
	for _, e := range events.all() {
		switch e.Name() {
		case "load_balancer.instance_added":
			added = append(added, e.Data["instance"].(string))
		case "load_balancer.instance_removed":
			removed = append(removed, e.Data["instance"].(string))
		}
	}
	if strings.Join(added, " ") != url1+" "+url2+" "+url3 || strings.Join(removed, " ") != url2 {
		t.Errorf("events: added %v, removed %v; want added b1 b2 b3, removed b2", added, removed)
	}

	// The DNS server fails: the last set stays, the error shows.
	dnsSrv.fail(true)
	waitFor(t, "the failure in the report", func() bool {
		return dynamicApp(t, "dyn.test").Dynamic.LastError != ""
	})
	if _, dyn := urlsOf(dynamicApp(t, "dyn.test")); strings.Join(dyn, " ") != url1+" "+url3 {
		t.Errorf("instances while the source fails: %v, want the last set", dyn)
	}
	for range 6 {
		if status, _ := s.get("dyn.test", "/"); status != 200 {
			t.Fatalf("status %d while the source fails", status)
		}
	}
	dnsSrv.fail(false)
	waitFor(t, "the source back", func() bool {
		return dynamicApp(t, "dyn.test").Dynamic.LastError == ""
	})
}

// TestDynamicConfigErrors: a source config that cannot work is refused at
// load, with the app and the field named; the running config serves on.
func TestDynamicConfigErrors(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	good := fmt.Sprintf("http://:{port} {\n\tload_balancer %s\n}", b.URL)
	s.load(good)
	tests := []struct {
		name, app, want string
	}{
		{"unknown source", "dynamic nosuch x", `app "x.test": dynamic: getting module named 'http.reverse_proxy.upstreams.nosuch'`},
		{"bad scheme", "dynamic a x.lbtest 80\n\t\t\tdynamic_scheme ftp", `app "x.test": dynamic_scheme: scheme must be http, https or h2c, got "ftp"`},
		{"scheme without a source", "instances " + b.URL + "\n\t\t\tdynamic_scheme h2c", `app "x.test": dynamic_scheme: option does not apply`},
		{"zero refresh", "dynamic a x.lbtest 80\n\t\t\tdynamic_refresh 0s", `app "x.test": dynamic_refresh: duration must be positive`},
		{"etcd without a prefix", "dynamic etcd", `app "x.test": dynamic: `},
		{"etcd with a bad endpoint", "dynamic etcd /svc/ {\n\t\t\t\tendpoints 127.0.0.1:2379\n\t\t\t}", `app "x.test": dynamic_upstreams: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.tryLoadErr(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			%s
		}
	}
}`, tt.app))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("load error %v, want one with %q", err, tt.want)
			}
			if status, body := s.get("x.test", "/"); status != 200 || body != "b" {
				t.Fatalf("the running config stopped serving: %d %q", status, body)
			}
		})
	}
}

// backendAt starts a backend answering name on ip:port (port 0: any), and
// returns its port.
func backendAt(t testing.TB, name, ip string, port int) (int, bool) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return 0, false
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			io.WriteString(w, name)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, true
}

// TestDynamicMulti: a multi source of an A source (two addresses, one
// port) and an SRV source, each resolving through its own resolver.
func TestDynamicMulti(t *testing.T) {
	dnsSrv := newDNSServer(t)
	var port int
	for range 20 { // a port free on both 127.0.0.2 and 127.0.0.3
		p, ok := backendAt(t, "a2", "127.0.0.2", 0)
		if !ok {
			continue
		}
		if _, ok := backendAt(t, "a3", "127.0.0.3", p); ok {
			port = p
			break
		}
	}
	if port == 0 {
		t.Fatal("no port free on both 127.0.0.2 and 127.0.0.3")
	}
	dnsSrv.setA("multi.lbtest", "127.0.0.2", "127.0.0.3")
	b := newBackend(t, "srv")
	dnsSrv.setA("srv.svc2.lbtest", "127.0.0.1")
	dnsSrv.setSRV("_x._tcp.svc2.lbtest", "srv.svc2.lbtest:"+hostPort(t, b.URL))
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app multi.test {
			dynamic multi {
				a multi.lbtest %d {
					resolvers %[2]s
					refresh 1ms
				}
				srv _x._tcp.svc2.lbtest {
					resolvers %[2]s
					refresh 1ms
				}
			}
			dynamic_refresh 20ms
		}
	}
}`, port, dnsSrv.addr))
	want := fmt.Sprintf("http://127.0.0.2:%d http://127.0.0.3:%d http://srv.svc2.lbtest:%s", port, port, hostPort(t, b.URL))
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last seen: %q %+v", last, *dynamicApp(t, "multi.test").Dynamic)
		}
	})
	waitFor(t, "the instances of both sources", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "multi.test"))
		last = strings.Join(dyn, " ")
		return last == want
	})
	if src := dynamicApp(t, "multi.test").Dynamic.Source; src != "multi" {
		t.Errorf("source %q, want multi", src)
	}
	seen := map[string]int{}
	for range 9 {
		_, body := s.get("multi.test", "/")
		seen[body]++
	}
	if seen["a2"] != 3 || seen["a3"] != 3 || seen["srv"] != 3 {
		t.Errorf("9 requests: %v, want 3 each", seen)
	}
}

// TestDynamicLeavingInFlight: an instance that leaves the set with a
// request in flight gets no new request; the one in flight finishes; its
// state is dropped once it has.
func TestDynamicLeavingInFlight(t *testing.T) {
	dnsSrv := newDNSServer(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	arrived, release := make(chan struct{}, 1), newGate()
	t.Cleanup(release.open)
	b1.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			_ = release.wait(r.Context())
		}
		io.WriteString(w, "b1")
	})
	for _, b := range []*backend{b1, b2} {
		dnsSrv.setA(b.name+".svc3.lbtest", "127.0.0.1")
	}
	const srvName = "_api._tcp.svc3.lbtest"
	dnsSrv.setSRV(srvName, "b1.svc3.lbtest:"+hostPort(t, b1.URL), "b2.svc3.lbtest:"+hostPort(t, b2.URL))
	url1 := "http://b1.svc3.lbtest:" + hostPort(t, b1.URL)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app leave.test {
			strategy first
			dynamic srv %s {
				resolvers %s
				refresh 1ms
			}
			dynamic_refresh 20ms
		}
	}
}`, srvName, dnsSrv.addr))
	waitFor(t, "both instances", func() bool { return len(dynamicApp(t, "leave.test").Instances) == 2 })
	done := s.getAsync("leave.test", "/slow") // to b1, the first
	recv(t, arrived, "the slow request at b1")
	dnsSrv.setSRV(srvName, "b2.svc3.lbtest:"+hostPort(t, b2.URL))
	waitFor(t, "b1 gone from the report", func() bool { return len(dynamicApp(t, "leave.test").Instances) == 1 })
	if states, _ := caddylb.InstanceStatesOf(url1); states != 1 {
		t.Errorf("%d states of b1 with its request in flight, want 1", states)
	}
	for range 4 {
		if status, body := s.get("leave.test", "/"); status != 200 || body != "b2" {
			t.Fatalf("a new request while b1 leaves: %d %q, want b2", status, body)
		}
	}
	release.open()
	if a := recv(t, done, "the request in flight"); a.err != nil || a.status != 200 || a.body != "b1" {
		t.Fatalf("the request in flight as b1 left: %d %q %v", a.status, a.body, a.err)
	}
	waitFor(t, "b1's state dropped", func() bool {
		states, _ := caddylb.InstanceStatesOf(url1)
		return states == 0
	})
}
