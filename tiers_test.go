package caddylb_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/golb/caddy-lb/report"
)

// reportApp returns the report's entry of the app of host.
func reportApp(t testing.TB, host string) report.App {
	t.Helper()
	for _, app := range fetchReport(t).Apps {
		if app.Host == host {
			return app
		}
	}
	t.Fatalf("no app %s in the report", host)
	return report.App{}
}

// waitTier waits until the report says app host serves from tier.
func waitTier(t testing.TB, host string, tier int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("app %s on tier %d", host, tier), func() bool { return reportApp(t, host).ActiveTier == tier })
}

// waitState waits until the report shows each instance at urls in state.
func waitState(t testing.TB, host, state string, urls ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v %s in app %s", urls, state, host), func() bool {
		states := map[string]string{}
		for _, in := range reportApp(t, host).Instances {
			states[in.URL] = in.State
		}
		for _, u := range urls {
			if states[u] != state {
				return false
			}
		}
		return true
	})
}

// spread sends n sequential requests to host and counts the answers by
// body.
func spread(t testing.TB, s *site, host string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		status, body := s.get(host, "/")
		if status != http.StatusOK {
			t.Fatalf("GET %s: status %d (%s)", host, status, body)
		}
		seen[body]++
	}
	return seen
}

// TestFailoverTiers: a backup tier gets nothing while the first tier is
// healthy, everything when the first tier's health checks fail, and
// nothing again once it recovers; each change is logged once and emitted
// as load_balancer.tier_changed; the report and the metrics show the
// priorities and the active tier.
func TestFailoverTiers(t *testing.T) {
	p1, p2, backup := newBackend(t, "p1"), newBackend(t, "p2"), newBackend(t, "backup")
	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.tier_changed")
	s.global = global
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app tiers.test {
			instances %s %s
			instance %s priority 1
			health_uri /health
			health_check_cooldown 20ms
		}
	}
}`, p1.URL, p2.URL, backup.URL))

	app := reportApp(t, "tiers.test")
	if app.ActiveTier != 0 {
		t.Errorf("active_tier %d at start, want 0", app.ActiveTier)
	}
	if in := instanceOf(t, fetchReport(t), "tiers.test", backup.URL); in.Priority != 1 {
		t.Errorf("the backup's priority in the report: %d, want 1", in.Priority)
	}
	if seen := spread(t, s, "tiers.test", 40); seen["p1"] != 20 || seen["p2"] != 20 || backup.requests.Load() != 0 {
		t.Fatalf("40 requests with the first tier healthy: %v (backup served %d), want 20 each on p1 and p2, none on the backup",
			seen, backup.requests.Load())
	}

	p1.health.Store(http.StatusServiceUnavailable)
	p2.health.Store(http.StatusServiceUnavailable)
	waitTier(t, "tiers.test", 1)
	if e := events.nextEvent(t); e.Data["app"] != "tiers.test" || e.Data["from"] != 0 || e.Data["to"] != 1 {
		t.Errorf("event %s %v, want tier_changed of tiers.test from 0 to 1", e.Name(), e.Data)
	}
	before1, before2 := p1.requests.Load(), p2.requests.Load()
	if seen := spread(t, s, "tiers.test", 20); seen["backup"] != 20 {
		t.Fatalf("20 requests with the first tier failing: %v, want all 20 on the backup", seen)
	}
	if p1.requests.Load() != before1 || p2.requests.Load() != before2 {
		t.Error("a failing instance of the first tier got requests")
	}

	p1.health.Store(0)
	waitTier(t, "tiers.test", 0)
	if e := events.nextEvent(t); e.Data["from"] != 1 || e.Data["to"] != 0 {
		t.Errorf("event %s %v, want tier_changed from 1 to 0", e.Name(), e.Data)
	}
	backupBefore := backup.requests.Load()
	if seen := spread(t, s, "tiers.test", 20); seen["p1"] != 20 || backup.requests.Load() != backupBefore {
		t.Fatalf("20 requests with p1 back: %v, want all 20 on p1, none on the backup", seen)
	}

	lines := logLines(t, s, func(l map[string]any) bool { return l["msg"] == "active tier changed" })
	if len(lines) != 2 || lines[0]["to"] != 1.0 || lines[1]["to"] != 0.0 || lines[0]["level"] != "info" || lines[0]["app"] != "tiers.test" {
		t.Errorf("tier change log lines: %v, want two at info (to 1, then to 0)", lines)
	}
	if v, ok := metricValue(t, `caddy_load_balancer_active_tier{app="tiers.test"}`); !ok || v != 0 {
		t.Errorf("active_tier gauge: %v (found %v), want 0", v, ok)
	}
}

// metricValue returns the value of the series named series (name and
// labels, as the exposition format writes them) on the admin endpoint's
// /metrics.
func metricValue(t testing.TB, series string) (float64, bool) {
	t.Helper()
	resp, err := adminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

// TestFailoverThreshold: with failover_threshold 50, a tier with 2 of its
// 4 instances available keeps serving (50% is not below 50%) and one with
// 1 of 4 hands over to the backup tier; without it (another app on the
// same backends) the last instance of the first tier takes everything.
func TestFailoverThreshold(t *testing.T) {
	var primaries []*backend
	var urls []string
	for i := range 4 {
		b := newBackend(t, fmt.Sprintf("p%d", i))
		primaries = append(primaries, b)
		urls = append(urls, b.URL)
	}
	backup := newBackend(t, "backup")
	s := newSite(t)
	app := func(host, extra string) string {
		return fmt.Sprintf(`
		app %s {
			instances %s
			instance %s priority 1
			health_uri /health
			health_check_cooldown 20ms
			%s
		}`, host, strings.Join(urls, " "), backup.URL, extra)
	}
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {%s%s
	}
}`, app("thr.test", "failover_threshold 50"), app("def.test", "")))

	primaries[0].health.Store(http.StatusServiceUnavailable)
	primaries[1].health.Store(http.StatusServiceUnavailable)
	waitState(t, "thr.test", "unhealthy", urls[0], urls[1])
	waitState(t, "def.test", "unhealthy", urls[0], urls[1])
	for _, host := range []string{"thr.test", "def.test"} {
		if seen := spread(t, s, host, 20); seen["p2"] != 10 || seen["p3"] != 10 {
			t.Fatalf("%s, 2 of 4 primaries available: %v, want 10 each on p2 and p3", host, seen)
		}
	}
	if n := backup.requests.Load(); n != 0 {
		t.Fatalf("the backup served %d requests with half the primaries available, want 0", n)
	}

	primaries[2].health.Store(http.StatusServiceUnavailable)
	waitState(t, "thr.test", "unhealthy", urls[2])
	waitState(t, "def.test", "unhealthy", urls[2])
	waitTier(t, "thr.test", 1)
	if seen := spread(t, s, "thr.test", 20); seen["backup"] != 20 {
		t.Fatalf("thr.test, 1 of 4 primaries available, failover_threshold 50: %v, want all 20 on the backup", seen)
	}
	if tier := reportApp(t, "def.test").ActiveTier; tier != 0 {
		t.Fatalf("def.test without failover_threshold is on tier %d with a primary available, want 0", tier)
	}
	if seen := spread(t, s, "def.test", 20); seen["p3"] != 20 {
		t.Fatalf("def.test, 1 of 4 primaries available, no threshold: %v, want all 20 on p3", seen)
	}

	// Back as soon as the tier has its share again.
	primaries[0].health.Store(0)
	waitTier(t, "thr.test", 0)
	if seen := spread(t, s, "thr.test", 20); seen["p0"] != 10 || seen["p3"] != 10 {
		t.Fatalf("thr.test, 2 of 4 primaries again: %v, want 10 each on p0 and p3", seen)
	}
}

// TestTierRetries: a retry stays in the active tier while it has an
// instance not tried yet, and falls to the next tier only once every
// available instance of the active tier failed the request.
func TestTierRetries(t *testing.T) {
	good, backup, backup2 := newBackend(t, "good"), newBackend(t, "backup"), newBackend(t, "backup2")
	dead := closedURL()
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app two.test {
			instances %s %s
			instance %s priority 1
			retries 2
			retry_budget_percent 100
			max_fails 1000
		}
		app one.test {
			instance %s
			instance %s priority 1
			retries 1
			retry_budget_percent 100
			max_fails 1000
		}
	}
}`, dead, good.URL, backup.URL, dead, backup2.URL))

	// Half the first attempts go to the dead instance; their retries go
	// to the other instance of the tier.
	if seen := spread(t, s, "two.test", 20); seen["good"] != 20 || backup.requests.Load() != 0 {
		t.Fatalf("20 requests, one of two first-tier instances down: %v (backup %d), want all on good, none on the backup",
			seen, backup.requests.Load())
	}
	// A tier of one: its failure is retried on the next tier.
	if seen := spread(t, s, "one.test", 10); seen["backup2"] != 10 {
		t.Fatalf("10 requests, the only first-tier instance down: %v, want all retried on backup2", seen)
	}
	if tier := reportApp(t, "one.test").ActiveTier; tier != 0 {
		t.Errorf("one.test on tier %d: its dead instance is not ejected (max_fails 1000) and unchecked, want 0", tier)
	}
}

// TestSRVTiers: SRV records of two priorities through a real DNS server:
// only the priority-10 targets get traffic, in proportion to their
// weights 3:1 (exactly, as round robin is exact over sequential
// requests); when they fail their health checks, the priority-20 ones
// (one of weight 0, which counts as 1).
func TestSRVTiers(t *testing.T) {
	dnsSrv := newDNSServer(t)
	b1, b2, b3, b4 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3"), newBackend(t, "b4")
	for _, b := range []*backend{b1, b2, b3, b4} {
		dnsSrv.setA(b.name+".tiers.lbtest", "127.0.0.1")
	}
	target := func(b *backend) string { return b.name + ".tiers.lbtest:" + hostPort(t, b.URL) }
	url := func(b *backend) string { return "http://" + target(b) }
	const srvName = "_api._tcp.tiers.lbtest"
	dnsSrv.setSRVRecords(srvName,
		srvRecord{target: target(b1), priority: 10, weight: 3},
		srvRecord{target: target(b2), priority: 10, weight: 1},
		srvRecord{target: target(b3), priority: 20, weight: 1},
		srvRecord{target: target(b4), priority: 20, weight: 0})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app srv.test {
			dynamic srv %s {
				resolvers %s
				refresh 1ms
			}
			dynamic_refresh 20ms
			health_uri /health
			health_check_cooldown 20ms
		}
	}
}`, srvName, dnsSrv.addr))

	waitState(t, "srv.test", "healthy", url(b1), url(b2), url(b3), url(b4))
	rep := fetchReport(t)
	for _, want := range []struct {
		b                *backend
		weight, priority int
	}{{b1, 3, 0}, {b2, 1, 0}, {b3, 1, 1}, {b4, 1, 1}} {
		in := instanceOf(t, rep, "srv.test", url(want.b))
		if in.Weight != want.weight || in.Priority != want.priority {
			t.Errorf("%s: weight %d, priority %d; want %d and %d", want.b.name, in.Weight, in.Priority, want.weight, want.priority)
		}
	}
	if seen := spread(t, s, "srv.test", 400); seen["b1"] != 300 || seen["b2"] != 100 {
		t.Fatalf("400 requests: %v, want 300 on b1 and 100 on b2 (weights 3:1), none on the priority-20 targets", seen)
	}

	b1.health.Store(http.StatusServiceUnavailable)
	b2.health.Store(http.StatusServiceUnavailable)
	waitTier(t, "srv.test", 1)
	before1, before2 := b1.requests.Load(), b2.requests.Load()
	if seen := spread(t, s, "srv.test", 20); seen["b3"] != 10 || seen["b4"] != 10 {
		t.Fatalf("20 requests with the priority-10 targets failing: %v, want 10 each on b3 and b4", seen)
	}
	if b1.requests.Load() != before1 || b2.requests.Load() != before2 {
		t.Error("a failing priority-10 target got requests")
	}

	// A change of priorities in DNS moves the tiers: b3 alone first.
	b1.health.Store(0)
	b2.health.Store(0)
	dnsSrv.setSRVRecords(srvName,
		srvRecord{target: target(b1), priority: 30, weight: 3},
		srvRecord{target: target(b3), priority: 5, weight: 1})
	waitFor(t, "b3 first in DNS", func() bool {
		rep := fetchReport(t)
		app := reportApp(t, "srv.test")
		return len(app.Instances) == 2 && instanceOf(t, rep, "srv.test", url(b3)).Priority == 0 &&
			instanceOf(t, rep, "srv.test", url(b1)).Priority == 1
	})
	waitState(t, "srv.test", "healthy", url(b1))
	if seen := spread(t, s, "srv.test", 10); seen["b3"] != 10 {
		t.Fatalf("10 requests with b3 the only priority-5 target: %v, want all on b3", seen)
	}
}

// TestStickyWithinTheActiveTier: a client pinned to a backup instance
// during a failover goes back to the first tier once it recovers, with a
// new cookie; while the backup tier serves, a cookie naming a first-tier
// instance that is still healthy but out of the active tier is not
// honoured either.
func TestStickyWithinTheActiveTier(t *testing.T) {
	p1, p2, backup := newBackend(t, "p1"), newBackend(t, "p2"), newBackend(t, "backup")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app sticky.test {
			instances %s %s
			instance %s priority 1
			failover_threshold 100
			sticky_cookie lb
			health_uri /health
			health_check_cooldown 20ms
		}
	}
}`, p1.URL, p2.URL, backup.URL))
	get := func(cookie string) (body, value string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, s.url("/"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "sticky.test"
		if cookie != "" {
			req.Header.Set("Cookie", "lb="+cookie)
		}
		resp, err := retryReset(client, req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if set := resp.Header.Get("Set-Cookie"); set != "" {
			c, err := http.ParseSetCookie(set)
			if err != nil {
				t.Fatal(err)
			}
			value = c.Value
		}
		return string(b), value
	}
	_, p1Cookie := get("")
	if body, _ := get(p1Cookie); body != "p1" && body != "p2" {
		t.Fatalf("first tier healthy: %s answered", body)
	}

	// p2 fails: with failover_threshold 100, the backup tier serves,
	// although p1 is healthy.
	p2.health.Store(http.StatusServiceUnavailable)
	waitTier(t, "sticky.test", 1)
	body, backupCookie := get(p1Cookie)
	if body != "backup" || backupCookie == "" {
		t.Fatalf("backup tier active, a cookie for a first-tier instance: %s answered (new cookie %q), want the backup with a new cookie", body, backupCookie)
	}
	if body, set := get(backupCookie); body != "backup" || set != "" {
		t.Fatalf("pinned to the backup: %s answered (Set-Cookie %q)", body, set)
	}

	p2.health.Store(0)
	waitTier(t, "sticky.test", 0)
	before := backup.requests.Load()
	for range 5 {
		if body, set := get(backupCookie); (body != "p1" && body != "p2") || set == "" {
			t.Fatalf("first tier back, pinned to the backup: %s answered (Set-Cookie %q), want a first-tier instance and a new cookie", body, set)
		}
	}
	if backup.requests.Load() != before {
		t.Error("the backup got requests after the first tier recovered")
	}
}
