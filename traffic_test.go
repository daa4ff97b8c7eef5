package caddylb_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/golb/caddy-lb/report"
)

// poolOf returns the report entry of the pool named name.
func poolOf(t testing.TB, rep report.Report, name string) report.App {
	t.Helper()
	return reportEntry(t, rep, fmt.Sprintf("pool %q", name), func(app report.App) bool { return app.Pool == name })
}

// splitConfig is a site whose app shop.test splits between the pools
// stable (a, b, checked) and canary (c) with the weights given.
func splitConfig(stable, canary int, a, b, c *backend) string {
	return fmt.Sprintf(`http://:{port} {
	load_balancer {
		app shop.test {
			split stable %d canary %d
			split_header X-Lb-Pool
			split_cookie lb_pool
		}
		pool stable {
			instances %s %s
			health_uri /health
			health_check_cooldown 100ms
			health_fails 1
		}
		pool canary {
			instances %s
			sticky_cookie lb_canary
		}
	}
}`, stable, canary, a.URL, b.URL, c.URL)
}

// countBy sends n GETs for shop.test from 8 clients and counts the answers
// by body (the backend's name); any other outcome fails the test.
func countBy(t *testing.T, s *site, n int, header http.Header) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
				req.Host = "shop.test"
				for k, v := range header {
					req.Header[k] = v
				}
				resp, err := client.Do(req)
				if err != nil {
					failed.Store(err.Error())
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Store(fmt.Sprintf("status %d: %s", resp.StatusCode, body))
					return
				}
				mu.Lock()
				counts[string(body)]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		t.Fatalf("request failed: %v", f)
	}
	return counts
}

// TestSplit checks a split between two pools through a real Caddy: the
// share of each over 10,000 requests, pinning by header and by cookie, a
// client of the canary kept there by its sticky cookie, and a reload that
// shifts the weights from 5% to 50% without losing the pools' health.
func TestSplit(t *testing.T) {
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	s := newSite(t)
	s.load(splitConfig(95, 5, a, b, c))

	const n = 10_000
	counts := countBy(t, s, n, nil)
	canary := 100 * float64(counts["c"]) / n
	if canary < 5-1.5 || canary > 5+1.5 || counts["a"]+counts["b"]+counts["c"] != n {
		t.Fatalf("95/5 split: %v (canary %.2f%%), want 5%% ± 1.5", counts, canary)
	}
	if counts["a"] == 0 || counts["b"] == 0 {
		t.Errorf("stable's instances not both used: %v", counts)
	}

	// Pinned: every request to the pool named, whatever the weights.
	if got := countBy(t, s, 50, http.Header{"X-Lb-Pool": {"canary"}}); got["c"] != 50 {
		t.Errorf("split_header canary: %v, want all 50 on c", got)
	}
	if got := countBy(t, s, 50, http.Header{"Cookie": {"lb_pool=canary"}}); got["c"] != 50 {
		t.Errorf("split_cookie canary: %v, want all 50 on c", got)
	}
	if got := countBy(t, s, 50, http.Header{"X-Lb-Pool": {"nosuchpool"}}); got["c"] > 10 {
		t.Errorf("a pin that names no pool is ignored: %v, want the split's 5%%", got)
	}

	// A client that landed on the canary has its sticky cookie: it stays.
	req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
	req.Host = "shop.test"
	req.Header.Set("X-Lb-Pool", "canary")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var sticky string
	for _, ck := range resp.Cookies() {
		if ck.Name == "lb_canary" {
			sticky = ck.Name + "=" + ck.Value
		}
	}
	if sticky == "" {
		t.Fatalf("the canary set no sticky cookie: %v", resp.Header)
	}
	if got := countBy(t, s, 100, http.Header{"Cookie": {sticky}}); got["c"] != 100 {
		t.Errorf("a client with the canary's sticky cookie: %v, want all 100 on c", got)
	}

	rep := fetchReport(t)
	front := appOf(t, rep, "shop.test")
	if len(front.Split) != 2 || front.Split[0].Pool != "stable" || front.Split[0].Percent != 95 || front.Split[1].Requests == 0 {
		t.Errorf("report split: %+v", front.Split)
	}
	if len(poolOf(t, rep, "stable").Instances) != 2 {
		t.Errorf("report of pool stable: %+v", poolOf(t, rep, "stable"))
	}
	samples := scrape(t)
	if v := find(samples, "caddy_load_balancer_split_requests_total", "app", "shop.test", "pool", "canary"); len(v) != 1 || v[0] < n*0.035 {
		t.Errorf("split_requests_total of the canary: %v", v)
	}

	// b fails its checks: out of the stable pool. Then a reload shifts
	// the split to 50/50: b is still out at once (its state is kept), and
	// the split follows the new weights.
	b.health.Store(http.StatusServiceUnavailable)
	waitFor(t, "b unhealthy", func() bool { return !instanceOfPool(t, fetchReport(t), "stable", b.URL).Healthy })
	s.load(splitConfig(50, 50, a, b, c))
	if in := instanceOfPool(t, fetchReport(t), "stable", b.URL); in.Healthy {
		t.Fatalf("b healthy again right after the reload: %+v", in)
	}
	before := b.requests.Load()
	counts = countBy(t, s, 2000, nil)
	if got := b.requests.Load() - before; got != 0 {
		t.Errorf("b, unhealthy before the reload, got %d requests after it", got)
	}
	if share := 100 * float64(counts["c"]) / 2000; share < 50-1.5 || share > 50+1.5 {
		t.Errorf("50/50 split after the reload: %v (canary %.2f%%)", counts, share)
	}
}

// instanceOfPool returns the report entry of the instance url of pool.
func instanceOfPool(t testing.TB, rep report.Report, pool, url string) report.Instance {
	t.Helper()
	for _, in := range poolOf(t, rep, pool).Instances {
		if in.URL == url {
			return in
		}
	}
	t.Fatalf("pool %q has no instance %s", pool, url)
	return report.Instance{}
}

// shadow is a mirror's backend: it records what the copies carried, and
// may hold each copy until released.
type shadow struct {
	*backend
	mu     sync.Mutex
	bodies [][]byte
	hosts  []string
	marks  []string
	hold   *gate
}

func newShadow(t *testing.T) *shadow {
	sh := &shadow{backend: newBackend(t, "shadow")}
	sh.handle(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sh.mu.Lock()
		sh.bodies = append(sh.bodies, body)
		sh.hosts = append(sh.hosts, r.Host)
		sh.marks = append(sh.marks, r.Header.Get("X-Lb-Mirror"))
		hold := sh.hold
		sh.mu.Unlock()
		if hold != nil {
			_ = hold.wait(r.Context())
		}
		_, _ = io.WriteString(w, "from the shadow")
	})
	return sh
}

func (sh *shadow) copies() int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.bodies)
}

// post sends a POST with body to shop.test and returns status and answer.
func post(t *testing.T, s *site, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.url("/upload"), bytes.NewReader(body))
	req.Host = "shop.test"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer)
}

// TestMirror checks mirroring through a real Caddy: copies carry the
// client's Host, the mark and bodies byte-exact up to mirror_max_body;
// mirror_percent copies that share of the requests; and a shadow that is
// down, or holds every copy, changes neither the status nor the answer of
// the clients' requests, which never wait for it: copies beyond the
// mirror's concurrency and queue are dropped and counted.
func TestMirror(t *testing.T) {
	primary := newBackend(t, "primary")
	var primaryBodies sync.Map // body → true, as the primary got them
	primary.handle(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		primaryBodies.Store(string(body), true)
		_, _ = io.WriteString(w, "primary")
	})
	sh := newShadow(t)
	s := newSite(t)
	config := func(shadowURL, options string) string {
		return fmt.Sprintf(`http://:{port} {
	load_balancer {
		app shop.test {
			instances %s
			mirror shadow
			mirror_max_body 1024
			%s
		}
		pool shadow {
			instances %s
			retries 0
		}
	}
}`, primary.URL, options, shadowURL)
	}
	s.load(config(sh.URL, ""))

	// Bodies up to the limit, byte-exact (every byte value), and one over
	// it, which goes to the primary whole but is not copied.
	small := make([]byte, 1024)
	for i := range small {
		small[i] = byte(i)
	}
	large := bytes.Repeat([]byte("L"), 1025)
	for _, body := range [][]byte{small, []byte("x"), large} {
		if status, answer := post(t, s, body); status != http.StatusOK || answer != "primary" {
			t.Fatalf("POST of %d bytes: %d %q", len(body), status, answer)
		}
		if _, ok := primaryBodies.Load(string(body)); !ok {
			t.Errorf("the primary did not get the body of %d bytes whole", len(body))
		}
	}
	if status, _ := s.get("shop.test", "/get"); status != http.StatusOK {
		t.Fatalf("GET: %d", status)
	}
	waitFor(t, "3 copies", func() bool { return sh.copies() == 3 })
	sh.mu.Lock()
	// The copies go out from several workers: in any order.
	got := map[string]int{}
	for _, b := range sh.bodies {
		got[string(b)]++
	}
	if len(got) != 3 || got[string(small)] != 1 || got["x"] != 1 || got[""] != 1 {
		var lens []int
		for _, b := range sh.bodies {
			lens = append(lens, len(b))
		}
		t.Errorf("copies' bodies of %v bytes; want the 1024 bytes sent, \"x\" and none (the GET), once each", lens)
	}
	for i := range sh.hosts {
		if sh.hosts[i] != "shop.test" || sh.marks[i] != "1" {
			t.Errorf("copy %d: Host %q, X-Lb-Mirror %q; want shop.test, 1", i, sh.hosts[i], sh.marks[i])
		}
	}
	sh.mu.Unlock()
	if m := appOf(t, fetchReport(t), "shop.test").Mirror; m == nil || m.Mirrored != 3 || m.Dropped != 1 || m.Failures != 0 {
		t.Errorf("report mirror: %+v, want 3 mirrored, 1 dropped (the large body)", m)
	}

	// A tenth of 1,000 requests: exactly 100 copies, spread evenly.
	s.load(config(sh.URL, "mirror_percent 10"))
	before := sh.copies()
	if got := countBy(t, s, 1000, nil); got["primary"] != 1000 {
		t.Fatalf("answers: %v", got)
	}
	waitFor(t, "100 copies", func() bool { return sh.copies()-before == 100 })
	if m := appOf(t, fetchReport(t), "shop.test").Mirror; m == nil || m.Mirrored != 100 || m.Percent != 10 {
		t.Errorf("report mirror at 10%%: %+v", m)
	}

	// The shadow down: every client request answered by the primary, the
	// copies counted as failures.
	s.load(config(closedURL(), ""))
	if got := countBy(t, s, 200, nil); got["primary"] != 200 {
		t.Fatalf("answers with the shadow down: %v", got)
	}
	waitFor(t, "200 failed copies", func() bool {
		m := appOf(t, fetchReport(t), "shop.test").Mirror
		return m != nil && m.Failures == 200
	})
	if v := find(scrape(t), "caddy_load_balancer_mirror_failures_total", "app", "shop.test"); len(v) != 1 || v[0] != 200 {
		t.Errorf("mirror_failures_total: %v, want 200", v)
	}

	// The shadow holds every copy until the test ends: 2 in flight, 3
	// queued, the rest dropped; the clients never wait for any of it (if
	// they did, countBy would block on the held copies).
	hold := newGate()
	t.Cleanup(hold.open)
	sh.mu.Lock()
	sh.hold = hold
	sh.mu.Unlock()
	s.load(config(sh.URL, "mirror_concurrency 2\n\t\t\tmirror_queue 3"))
	before = sh.copies()
	const sent = 50
	for range sent {
		if status, answer := s.get("shop.test", "/"); status != http.StatusOK || answer != "primary" {
			t.Fatalf("answer with the shadow holding copies: %d %q", status, answer)
		}
	}
	waitFor(t, "2 copies held", func() bool { return sh.copies()-before == 2 })
	m := appOf(t, fetchReport(t), "shop.test").Mirror
	if m == nil || m.Mirrored != 2 || m.Queued != 3 || m.Dropped != sent-5 {
		t.Errorf("report mirror with the shadow holding: %+v, want 2 mirrored, 3 queued, %d dropped", m, sent-5)
	}
	if v := find(scrape(t), "caddy_load_balancer_mirror_dropped_total", "app", "shop.test"); len(v) != 1 || v[0] != sent-5 {
		t.Errorf("mirror_dropped_total: %v, want %d", v, sent-5)
	}
	hold.open()
}

// TestTrafficConfigErrors checks that bad splits and mirrors are refused
// at load, naming the app (or pool) and the field, while the running
// config keeps serving.
func TestTrafficConfigErrors(t *testing.T) {
	good := newBackend(t, "good")
	s := newSite(t)
	running := fmt.Sprintf("http://:{port} {\n\tload_balancer %s\n}", good.URL)
	s.load(running)
	pool := func(name string) string { return fmt.Sprintf("pool %s {\n\t\t\tinstances %s\n\t\t}", name, good.URL) }
	for _, tc := range []struct {
		name, body, want string
	}{
		{"split to no pool", "app shop.test {\n\t\t\tsplit stable 1 nosuch 1\n\t\t}\n\t\t" + pool("stable"),
			`app "shop.test": split[1].pool: unknown pool "nosuch"`},
		{"mirror to no pool", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\tmirror nosuch\n\t\t}", good.URL),
			`app "shop.test": mirror: unknown pool "nosuch"`},
		{"split with instances", fmt.Sprintf("app shop.test {\n\t\t\tsplit stable 1\n\t\t\tinstances %s\n\t\t}\n\t\t", good.URL) + pool("stable"),
			`app "shop.test": instances: option does not apply: an app that splits has no instances of its own`},
		{"negative weight", "app shop.test {\n\t\t\tsplit stable -1\n\t\t}\n\t\t" + pool("stable"),
			`app "shop.test": split[0].weight: invalid weight`},
		{"all weights 0", "app shop.test {\n\t\t\tsplit stable 0\n\t\t}\n\t\t" + pool("stable"),
			`app "shop.test": split: invalid weight: every pool has weight 0`},
		{"weights too fine", "app shop.test {\n\t\t\tsplit stable 9999 canary 2\n\t\t}\n\t\t" + pool("stable") + "\n\t\t" + pool("canary"),
			`app "shop.test": split: invalid weight: the weights over their greatest common divisor add up to 10001`},
		{"odd split line", "app shop.test {\n\t\t\tsplit stable\n\t\t}\n\t\t" + pool("stable"),
			`app "shop.test": split: want pool names each followed by a weight`},
		{"split_header alone", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\tsplit_header X-Pool\n\t\t}", good.URL),
			`app "shop.test": split_header: option does not apply`},
		{"mirror_percent 0", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\tmirror shadow\n\t\t\tmirror_percent 0\n\t\t}\n\t\t", good.URL) + pool("shadow"),
			`app "shop.test": mirror_percent: invalid percentage`},
		{"mirror option without mirror", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\tmirror_queue 5\n\t\t}", good.URL),
			`app "shop.test": mirror_queue: option does not apply`},
		{"duplicate pool", pool("p") + "\n\t\t" + pool("p") + fmt.Sprintf("\n\t\tapp * {\n\t\t\tinstances %s\n\t\t}", good.URL),
			`pool "p": name: duplicate pool`},
		{"pool without instances", "pool empty {\n\t\t\tretries 1\n\t\t}\n\t\tapp * {\n\t\t\tsplit empty 1\n\t\t}",
			`pool "empty": instances: no instances`},
		{"hash_balance without hash", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\thash_balance 1.25\n\t\t}", good.URL),
			`app "shop.test": hash_balance: option does not apply: strategy round_robin does not use it`},
		{"hash_balance 1", fmt.Sprintf("app shop.test {\n\t\t\tinstances %s\n\t\t\tstrategy hash\n\t\t\thash_balance 1\n\t\t}", good.URL),
			`app "shop.test": hash_balance: invalid option: want more than 1.0`},
		{"pool that splits", "app shop.test {\n\t\t\tsplit inner 1\n\t\t}\n\t\tpool inner {\n\t\t\tsplit stable 1\n\t\t}\n\t\t" + pool("stable"),
			`app "shop.test": split[0].pool: invalid split: pool "inner" splits its requests itself`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.tryLoadErr(fmt.Sprintf("http://:{port} {\n\tload_balancer {\n\t\t%s\n\t}\n}", tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if status, body := s.get("any.test", "/"); status != http.StatusOK || body != "good" {
				t.Fatalf("running config after the refused one: %d %q", status, body)
			}
		})
	}

	// JSON too: a pool with a host, and the references checked at
	// provisioning.
	for _, tc := range []struct{ json, want string }{
		{fmt.Sprintf(`{"apps":[{"host":"a.test","name":"p","instances":[{"url":%q}]}]}`, good.URL),
			`pool "p": name: option does not apply: an app has a host or, as a pool, a name, not both`},
		{fmt.Sprintf(`{"apps":[{"host":"a.test","split":[{"pool":"p","weight":1}]}, {"name":"q","instances":[{"url":%q}]}]}`, good.URL),
			`app "a.test": split[0].pool: unknown pool "p"`},
		{fmt.Sprintf(`{"apps":[{"host":"a.test","instances":[{"url":%q}],"mirror":"a.test"}]}`, good.URL),
			`app "a.test": mirror: unknown pool "a.test"`},
	} {
		if _, err := provision(t, tc.json); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.json, err, tc.want)
		}
	}
}
