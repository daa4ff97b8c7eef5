package caddylb_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestSlowStart: an instance that comes in (back from failing its checks,
// or added by a reload to an app that serves) starts at a tenth of its
// weight and ramps up to all of it over slow_start; the instances of a
// config that starts from nothing start at full weight.
func TestSlowStart(t *testing.T) {
	steady, cold, added := newBackend(t, "steady"), newBackend(t, "cold"), newBackend(t, "added")
	cold.health.Store(503)
	s := newSite(t)
	cfg := func(slowStart string, instances ...string) string {
		return fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app ramp.test {
			health_uri /health
			health_check_cooldown 20ms
			slow_start %s
			instances %s
		}
	}
}`, slowStart, strings.Join(instances, " "))
	}
	// A long ramp, so that its first step (a tenth) lasts: round robin
	// then gives the cold instance exactly 1 request in 11.
	s.load(cfg("1h", steady.URL, cold.URL))
	waitFor(t, "the cold backend unhealthy", func() bool {
		return instanceOf(t, fetchReport(t), "ramp.test", cold.URL).State == "unhealthy"
	})
	if in := instanceOf(t, fetchReport(t), "ramp.test", steady.URL); in.State != "healthy" || in.EffectiveWeight != 1 || in.Weight != 1 {
		t.Fatalf("an instance of a new config: %q, weight %d, effective %v; want healthy at full weight", in.State, in.Weight, in.EffectiveWeight)
	}
	cold.health.Store(0)
	waitFor(t, "the cold backend starting", func() bool {
		return instanceOf(t, fetchReport(t), "ramp.test", cold.URL).State == "starting"
	})
	in := instanceOf(t, fetchReport(t), "ramp.test", cold.URL)
	if in.EffectiveWeight != 0.1 || in.Weight != 1 || in.Since == nil || time.Since(*in.Since) < 0 {
		t.Fatalf("the instance back in: weight %d, effective %v, since %v; want 1, 0.1 and a time", in.Weight, in.EffectiveWeight, in.Since)
	}
	counts := map[string]int{}
	for range 110 {
		_, body := s.get("ramp.test", "/")
		counts[body]++
	}
	if counts["cold"] != 10 || counts["steady"] != 100 {
		t.Errorf("110 round-robin requests at a tenth of the weight: %v, want cold 10, steady 100", counts)
	}

	// A reload that adds an instance to the app: it ramps too.
	// (Its settings apply once the config runs, a moment after the load.)
	s.load(cfg("1h", steady.URL, cold.URL, added.URL))
	waitFor(t, "the added instance starting at a tenth of its weight", func() bool {
		in := instanceOf(t, fetchReport(t), "ramp.test", added.URL)
		return in.State == "starting" && in.EffectiveWeight == 0.1
	})

	// A reload to a short ramp: the ramp follows it to its end, at full
	// weight, healthy, with an even share.
	s.load(cfg("500ms", steady.URL, cold.URL))
	waitFor(t, "the ramp to end", func() bool {
		in := instanceOf(t, fetchReport(t), "ramp.test", cold.URL)
		return in.State == "healthy" && in.EffectiveWeight == 1
	})
	clear(counts)
	for range 50 {
		_, body := s.get("ramp.test", "/")
		counts[body]++
	}
	if counts["cold"] != 25 {
		t.Errorf("after the ramp: %v of 50 round-robin requests, want 25 each", counts)
	}
}

// TestSlowStartOfAddedInstances: an instance a reload adds to an app that
// serves already, and one its source discovers while the app serves, ramp
// up from a tenth of their weight: round robin gives each exactly 1
// request in 11 beside an instance at full weight. The instances of an
// app that starts from nothing (a new config, a new app, the first set a
// source gives) start at full weight.
func TestSlowStartOfAddedInstances(t *testing.T) {
	steady, added := newBackend(t, "steady"), newBackend(t, "added")
	s := newSite(t)
	app := func(host string, instances ...string) string {
		return fmt.Sprintf(`
		app %s {
			slow_start 1h
			instances %s
		}`, host, strings.Join(instances, " "))
	}
	cfg := func(apps ...string) string {
		return "http://:{port} {\n\tload_balancer {" + strings.Join(apps, "") + "\n\t}\n}"
	}
	// share sends 110 requests to host and returns how many each backend
	// answered.
	share := func(host string) map[string]int {
		t.Helper()
		counts := map[string]int{}
		for range 110 {
			status, body := s.get(host, "/")
			if status != 200 {
				t.Fatalf("%s: status %d %q", host, status, body)
			}
			counts[body]++
		}
		return counts
	}
	state := func(host, url string) string {
		in := instanceOf(t, fetchReport(t), host, url)
		return fmt.Sprintf("%s at %v", in.State, in.EffectiveWeight)
	}

	s.load(cfg(app("ramp.test", steady.URL)))
	waitFor(t, "the first instance serving", func() bool { return s.status("ramp.test", "/") == 200 })
	if got := state("ramp.test", steady.URL); got != "healthy at 1" {
		t.Fatalf("the instance of a new config: %s, want healthy at 1", got)
	}

	// A reload adds an instance to ramp.test, which serves, and a new app
	// with the same backend: only the first ramps.
	s.load(cfg(app("ramp.test", steady.URL, added.URL), app("fresh.test", added.URL, steady.URL)))
	waitFor(t, "the added instance starting", func() bool { return state("ramp.test", added.URL) == "starting at 0.1" })
	if got := share("ramp.test"); got["added"] != 10 || got["steady"] != 100 {
		t.Errorf("ramp.test, 110 round-robin requests: %v, want added 10, steady 100", got)
	}
	for _, u := range []string{added.URL, steady.URL} {
		if got := state("fresh.test", u); got != "healthy at 1" {
			t.Errorf("fresh.test (a new app): %s is %s, want healthy at 1", u, got)
		}
	}
	if got := share("fresh.test"); got["added"] != 55 || got["steady"] != 55 {
		t.Errorf("fresh.test, 110 round-robin requests: %v, want 55 each", got)
	}

	// Discovered instances: the first set starts at full weight, a
	// newcomer while the app serves ramps.
	dnsSrv := newDNSServer(t)
	const srvName = "_api._tcp.ramp.lbtest"
	dnsSrv.setA("steady.ramp.lbtest", "127.0.0.1")
	dnsSrv.setA("added.ramp.lbtest", "127.0.0.1")
	steadyURL := "http://steady.ramp.lbtest:" + hostPort(t, steady.URL)
	addedURL := "http://added.ramp.lbtest:" + hostPort(t, added.URL)
	dnsSrv.setSRV(srvName, "steady.ramp.lbtest:"+hostPort(t, steady.URL))
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app dyn.test {
			slow_start 1h
			dynamic srv %s {
				resolvers %s
				refresh 1ms
			}
			dynamic_refresh 20ms
		}
	}
}`, srvName, dnsSrv.addr))
	waitFor(t, "the first discovered instance", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "dyn.test"))
		return len(dyn) == 1
	})
	if got := state("dyn.test", steadyURL); got != "healthy at 1" {
		t.Fatalf("the first discovered instance: %s, want healthy at 1", got)
	}
	dnsSrv.setSRV(srvName, "steady.ramp.lbtest:"+hostPort(t, steady.URL), "added.ramp.lbtest:"+hostPort(t, added.URL))
	waitFor(t, "the second discovered instance", func() bool {
		_, dyn := urlsOf(dynamicApp(t, "dyn.test"))
		return len(dyn) == 2
	})
	if got := state("dyn.test", addedURL); got != "starting at 0.1" {
		t.Fatalf("an instance discovered while the app serves: %s, want starting at 0.1", got)
	}
	if got := share("dyn.test"); got["added"] != 10 || got["steady"] != 100 {
		t.Errorf("dyn.test, 110 round-robin requests: %v, want added 10, steady 100", got)
	}
}
