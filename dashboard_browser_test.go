package caddylb_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// artifactsEnv names the directory where tests leave files for a human to
// look at, such as the dashboard's screenshot. Default: caddylb-artifacts
// in the system's temporary directory.
const artifactsEnv = "CADDYLB_ARTIFACTS"

// artifactsDir returns the artifacts directory, created if need be.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(artifactsEnv)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "caddylb-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// findExecutable returns the first of names found as a file or in PATH.
func findExecutable(names ...string) string {
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser is a headless Chromium driven through chromedriver's WebDriver
// HTTP API, all on loopback.
type browser struct {
	t     *testing.T
	base  string // the session's URL on chromedriver
	httpc *http.Client
}

// webDriverElement is the key of an element reference in WebDriver.
const webDriverElement = "element-6066-11e4-a52e-4f735466cecf"

// requireBrowserEnv, set to 1, turns the browser test's skip (no Chromium
// or chromedriver) into a failure: CI sets it, so that it cannot pass
// without running the test.
const requireBrowserEnv = "CADDYLB_REQUIRE_BROWSER"

// startBrowser starts chromedriver and a headless Chromium session, or
// skips the test if either is not installed (fails it, with
// CADDYLB_REQUIRE_BROWSER=1).
func startBrowser(t *testing.T) *browser {
	t.Helper()
	chromium := findExecutable("/usr/bin/chromium", "chromium", "chromium-browser")
	driver := findExecutable("/usr/bin/chromedriver", "chromedriver")
	if chromium == "" || driver == "" {
		msg := fmt.Sprintf("browser test: needs Chromium and chromedriver (found chromium=%q chromedriver=%q); "+
			"on Debian: apt-get install chromium chromium-driver", chromium, driver)
		if os.Getenv(requireBrowserEnv) == "1" {
			t.Fatal(msg + "; " + requireBrowserEnv + "=1 requires them")
		}
		t.Skip(msg)
	}
	// Not t.TempDir: Chromium may still be writing to it when the test
	// ends, and a failed removal would fail the test.
	profile, err := os.MkdirTemp("", "caddylb-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(profile) })

	port := freePort()
	cmd := exec.Command(driver, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1",
		"--log-path="+filepath.Join(profile, "chromedriver.log"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromedriver: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	b := &browser{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), httpc: &http.Client{Timeout: 60 * time.Second}}
	waitFor(t, "chromedriver to listen", func() bool {
		resp, err := b.httpc.Get(b.base + "/status")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	var created struct {
		SessionID string `json:"sessionId"`
	}
	b.call("POST", "/session", map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": chromium,
			"args": []string{
				"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1200,640",
				"--force-prefers-color-scheme=light", "--lang=en-US",
				"--user-data-dir=" + filepath.Join(profile, "profile"),
			},
		},
	}}}, &created)
	if created.SessionID == "" {
		t.Fatal("chromedriver gave no session id")
	}
	b.base += "/session/" + created.SessionID
	t.Cleanup(func() { b.call("DELETE", "", nil, nil) })
	return b
}

// call sends a WebDriver command and decodes its "value" into out.
func (b *browser) call(method, path string, in, out any) {
	b.t.Helper()
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			b.t.Fatal(err)
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.httpc.Do(req)
	if err != nil {
		b.t.Fatalf("WebDriver %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("WebDriver %s %s: %v", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("WebDriver %s %s: status %d: %.500s", method, path, resp.StatusCode, raw)
	}
	var reply struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &reply); err != nil {
		b.t.Fatalf("WebDriver %s %s: %v: %.500s", method, path, err, raw)
	}
	if out != nil {
		if err := json.Unmarshal(reply.Value, out); err != nil {
			b.t.Fatalf("WebDriver %s %s: value: %v: %.500s", method, path, err, reply.Value)
		}
	}
}

// cdp runs a Chrome DevTools Protocol command.
func (b *browser) cdp(cmd string, params map[string]any) {
	b.t.Helper()
	b.call("POST", "/goog/cdp/execute", map[string]any{"cmd": cmd, "params": params}, nil)
}

// navigate opens url.
func (b *browser) navigate(url string) {
	b.t.Helper()
	b.call("POST", "/url", map[string]any{"url": url}, nil)
}

// eval runs a script (a function body) in the page and decodes what it
// returns into out.
func (b *browser) eval(script string, out any) {
	b.t.Helper()
	b.call("POST", "/execute/sync", map[string]any{"script": script, "args": []any{}}, out)
}

// click clicks the element that a CSS selector finds, as a user would.
func (b *browser) click(selector string) {
	b.t.Helper()
	var el map[string]string
	b.call("POST", "/element", map[string]any{"using": "css selector", "value": selector}, &el)
	b.call("POST", "/element/"+el[webDriverElement]+"/click", map[string]any{}, nil)
}

// screenshot saves a PNG of the page to path.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	var encoded string
	b.call("GET", "/screenshot", nil, &encoded)
	png, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// dashRow is an instance's row as the page shows it.
type dashRow struct {
	Host, URL, State, Class, Badge, Button string
	Cells                                  []string
}

// dashView is what the page shows.
type dashView struct {
	Apps      []string // each app's heading
	Rows      []dashRow
	Refreshed string
	Status    string // refresh errors
	Action    string // drain errors
	Fleet     string // the fleet line of the header
}

// readDashboard reads the page's content from the DOM.
func (b *browser) readDashboard() dashView {
	b.t.Helper()
	var v dashView
	b.eval(`
		const text = (e) => e ? e.textContent.trim() : "";
		const v = {Apps: [], Rows: [], Refreshed: text(document.getElementById("refreshed")),
			Status: text(document.getElementById("status")), Action: text(document.getElementById("action")),
			Fleet: text(document.getElementById("fleet"))};
		for (const sec of document.querySelectorAll("section")) {
			v.Apps.push(text(sec.querySelector("h2")));
			for (const tr of sec.querySelectorAll("tbody tr")) {
				const badge = tr.querySelector(".state");
				v.Rows.push({Host: sec.dataset.host, URL: tr.dataset.url || "", State: tr.dataset.state || "",
					Class: tr.className, Badge: badge ? getComputedStyle(badge).backgroundColor : "",
					Button: text(tr.querySelector("button")),
					Cells: Array.from(tr.children, text)});
			}
		}
		return v;`, &v)
	return v
}

// row returns the row of the instance url, if shown.
func (v dashView) row(url string) (dashRow, bool) {
	for _, r := range v.Rows {
		if r.URL == url {
			return r, true
		}
	}
	return dashRow{}, false
}

// The colours of the state badges (light scheme).
const (
	dashGreenBadge = "rgb(218, 251, 225)"
	dashRedBadge   = "rgb(207, 34, 46)"
)

// TestDashboardInBrowser loads the dashboard in headless Chromium through
// basic_auth, checks it shows every app and instance, that a backend taken
// down turns red without reloading the page, and that a drain button
// drains the instance; it saves a screenshot as a test artifact.
func TestDashboardInBrowser(t *testing.T) {
	br := startBrowser(t)

	one, two, three := newBackend(t, "one"), newBackend(t, "two"), newBackend(t, "three")
	primary, backup := newBackend(t, "primary"), newBackend(t, "backup")
	standIn := newBackend(t, "stand-in")
	standIn.handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, dashStandInReport)
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`:{port} {
	handle /fake/report.json {
		reverse_proxy %s
	}
	handle /fake/* {
		load_balancer_dashboard
	}
	handle /lb/* {
		basic_auth {
			%s %s
		}
		load_balancer_dashboard {
			allow_drain
		}
	}
	load_balancer {
		app api.example.com {
			strategy round_robin
			health_uri /health
			health_check_cooldown 100ms
			instances %s %s
		}
		app payments.example.com {
			strategy least_connections
			health_uri /health
			health_check_cooldown 100ms
			max_requests 4
			instances %s
		}
		app tiers.example.com {
			health_uri /health
			health_check_cooldown 100ms
			instance %s
			instance %s priority 1
		}
	}
}`, standIn.URL, dashUser, dashHash(), one.URL, two.URL, three.URL, primary.URL, backup.URL))
	for i := range 6 {
		s.get("api.example.com", "/x")
		if i%2 == 0 {
			s.get("payments.example.com", "/pay")
		}
	}

	// The browser sends the credentials with every request, the page's
	// fetches included, as it would once the user has typed them.
	br.cdp("Network.enable", map[string]any{})
	auth := base64.StdEncoding.EncodeToString([]byte(dashUser + ":" + dashPassword))
	br.cdp("Network.setExtraHTTPHeaders", map[string]any{"headers": map[string]string{"Authorization": "Basic " + auth}})
	br.navigate(s.url("/lb/"))

	var v dashView
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the page showed: %+v", v)
			br.screenshot(filepath.Join(artifactsDir(t), "dashboard-failed.png"))
		}
	})
	waitFor(t, "the page to show 5 healthy instances", func() bool {
		v = br.readDashboard()
		healthy := 0
		for _, r := range v.Rows {
			if r.State == "healthy" {
				healthy++
			}
		}
		return healthy == 5
	})
	if want := []string{"api.example.comround_robin", "payments.example.comleast_connections· queued 0 · rejected 0",
		"tiers.example.comround_robin· serving tier 0"}; strings.Join(v.Apps, "|") != strings.Join(want, "|") {
		t.Errorf("apps shown: %q, want %q (the queue of the app with max_requests, the tier of the app with a backup)", v.Apps, want)
	}
	if rb, _ := v.row(backup.URL); len(rb.Cells) == 0 || rb.Cells[0] != backup.URL+"tier 1" {
		t.Errorf("row of the backup: %q, want its URL tagged tier 1", rb.Cells)
	}
	if r3, _ := v.row(three.URL); len(r3.Cells) < 3 || r3.Cells[2] != "0 / 4" {
		t.Errorf("row of %s (max_requests 4): %q, want in flight \"0 / 4\"", three.URL, r3.Cells)
	}
	r1, _ := v.row(one.URL)
	if r1.Class != "ok" || r1.Badge != dashGreenBadge {
		t.Errorf("healthy row: class %q, badge colour %s; want ok, %s", r1.Class, r1.Badge, dashGreenBadge)
	}
	// Instance, state, in flight, requests, failures, then the rates and
	// latencies, "–" where the report does not have them.
	in := instanceOf(t, fetchReport(t), "api.example.com", one.URL)
	if got, want := strings.Join(r1.Cells[:5], "|"), fmt.Sprintf("%s|healthy|%d|%d|%d", one.URL, in.ActiveConnections, in.TotalRequests, in.Failures); got != want {
		t.Errorf("row of %s: %s, want %s", one.URL, got, want)
	}
	for i, f := range []*float64{in.RequestRate, in.ErrorRate, in.LatencyP50Ms, in.LatencyP99Ms} {
		if shown := r1.Cells[5+i]; (f == nil) != (shown == "–") {
			t.Errorf("row of %s, column %d: %q for %v", one.URL, 5+i, shown, f)
		}
	}
	if !strings.HasPrefix(v.Refreshed, "Refreshed at ") || v.Status != "" {
		t.Errorf("header: %q, status %q; want a refresh time and no error", v.Refreshed, v.Status)
	}

	// Take a backend down: the open page turns its row red on a refresh.
	two.health.Store(http.StatusServiceUnavailable)
	waitFor(t, "the row of the backend taken down to turn red", func() bool {
		v = br.readDashboard()
		r, _ := v.row(two.URL)
		return r.State == "unhealthy"
	})
	r2, _ := v.row(two.URL)
	if r2.Class != "bad" || r2.Badge != dashRedBadge {
		t.Errorf("unhealthy row: class %q, badge colour %s; want bad, %s", r2.Class, r2.Badge, dashRedBadge)
	}
	if !strings.Contains(r2.Cells[9], "503") {
		t.Errorf("unhealthy row's last check %q does not show the error", r2.Cells[9])
	}
	if r, _ := v.row(one.URL); r.State != "healthy" {
		t.Errorf("the other instance: %+v", r)
	}
	// The tiers app's primary down: the page shows the backup tier serving.
	primary.health.Store(http.StatusServiceUnavailable)
	waitFor(t, "the page to show the tiers app on its backup tier", func() bool {
		v = br.readDashboard()
		return len(v.Apps) == 3 && v.Apps[2] == "tiers.example.comround_robin· serving tier 1"
	})

	// Drain buttons, since allow_drain is on and there is a drainer: a
	// click is a same-origin POST through basic_auth.
	if r1, _ = v.row(one.URL); r1.Button != "Drain" {
		t.Fatalf("row of %s has button %q, want Drain", one.URL, r1.Button)
	}
	br.click(fmt.Sprintf(`tr[data-url=%q] button`, one.URL))
	waitFor(t, "the drain click to drain the instance", func() bool {
		return instanceOf(t, fetchReport(t), "api.example.com", one.URL).State == "draining"
	})
	waitFor(t, "the page to show it draining", func() bool {
		v = br.readDashboard()
		r, _ := v.row(one.URL)
		return r.State == "draining" && r.Button == "Undrain"
	})
	if v.Action != "" || v.Status != "" {
		t.Errorf("errors shown after the drain: %q %q", v.Status, v.Action)
	}
	// Its app's other instance is down: nothing is left for new requests.
	if status, body := s.get("api.example.com", "/x"); status != http.StatusServiceUnavailable {
		t.Errorf("a request after the drain: %d %q, want 503", status, body)
	}

	shot := filepath.Join(artifactsDir(t), "dashboard.png")
	br.screenshot(shot)
	t.Logf("screenshot of the dashboard: %s", shot)

	// States and figures the load balancer does not report yet: the page
	// under /fake/ reads a report.json that a stand-in serves.
	br.navigate(s.url("/fake/"))
	waitFor(t, "the page to show the stand-in's report", func() bool {
		v = br.readDashboard()
		return len(v.Rows) == 3
	})
	if len(v.Apps) != 1 || !strings.Contains(v.Apps[0], "instances from etcd") {
		t.Errorf("the stand-in's app shows %q, want its source named", v.Apps)
	}
	if r, _ := v.row("http://draining.test"); !strings.HasSuffix(r.Cells[0], "dynamic") {
		t.Errorf("a dynamic instance's row header is %q, want it marked dynamic", r.Cells[0])
	}
	tests := []struct {
		url, state, class, button, cells string
	}{
		{"http://draining.test", "draining", "warn", "Undrain", "12.50|1.00 %|3.5|120"},
		{"http://ejected.test", "ejected", "bad", "Drain", "0.00|25.0 %|–|–"},
		{"http://starting.test", "starting", "warn", "Drain", "–|–|–|–"},
	}
	for _, tt := range tests {
		r, ok := v.row(tt.url)
		if !ok {
			t.Errorf("no row for %s", tt.url)
			continue
		}
		if got := strings.Join(r.Cells[5:9], "|"); r.State != tt.state || r.Class != tt.class || r.Button != tt.button || got != tt.cells {
			t.Errorf("row of %s: state %q, class %q, button %q, cells %s; want %q, %q, %q, %s",
				tt.url, r.State, r.Class, r.Button, got, tt.state, tt.class, tt.button, tt.cells)
		}
	}
	br.screenshot(filepath.Join(artifactsDir(t), "dashboard-states.png"))
}

// dashStandInReport is a report with the fields our load balancer does
// not fill yet.
const dashStandInReport = `{"drain_available": true, "apps": [{"host": "static.example.com", "strategy": "first",
	"dynamic": {"source": "etcd", "instances": 1, "updated": "2026-12-06T10:00:00Z", "last_error": ""},
	"instances": [
		{"url": "http://draining.test", "source": "dynamic", "healthy": true, "state": "draining", "total_requests": 1200,
		 "request_rate": 12.5, "error_rate": 0.01, "latency_p50_ms": 3.5, "latency_p99_ms": 120.4},
		{"url": "http://ejected.test", "healthy": false, "state": "ejected", "request_rate": 0, "error_rate": 0.25},
		{"url": "http://starting.test", "healthy": true, "state": "starting"}]}]}`

// TestDashboardFleetInBrowser: with a fleet (this process's Caddy and
// another Caddy process on a real etcd, one prober per instance), the page
// shows the fleet in its header and, per instance, whether this node
// probes it or whose verdict it follows.
func TestDashboardFleetInBrowser(t *testing.T) {
	br := startBrowser(t)
	cluster := newEtcdCluster(t, 1)
	b := newFleetBackend(t)
	var urls []string
	for i := range 8 {
		urls = append(urls, b.instanceURL(fmt.Sprintf("i%d", i)))
	}
	fleetOption := fmt.Sprintf(`
	load_balancer_fleet {
		endpoints %s
		prefix /lbtest/dashboard/
		node %%s
		probers 1
		lease_ttl 2s
		heartbeat 100ms
	}`, cluster.endpoints()[0])
	site := fmt.Sprintf(`
	load_balancer {
		app fleet.example.com {
			health_uri /health
			health_check_cooldown 200ms
			instances %s
		}
	}`, strings.Join(urls, " "))
	s := newSite(t)
	s.global = fmt.Sprintf(fleetOption, "here")
	s.load(":{port} {\n\thandle /lb/* {\n\t\tload_balancer_dashboard\n\t}" + site + "\n}")
	startNode(t, "there", fmt.Sprintf("{\n\tadmin {admin}\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n%s\n}\nhttp://:{port} {%s\n}", fmt.Sprintf(fleetOption, "there"), site))

	// followed is an instance this node follows there's verdicts for,
	// probed is one it probes.
	var followed, probed string
	waitFor(t, "this node following there's verdicts for some instances and probing the others", func() bool {
		rep := fetchReport(t)
		if rep.Fleet == nil || len(rep.Fleet.Members) != 2 || len(rep.Apps) != 1 {
			return false
		}
		followed, probed = "", ""
		for _, in := range rep.Apps[0].Instances {
			switch f := in.Fleet; {
			case f == nil:
				return false
			case f.VerdictBy == "there" && !f.ProbedHere:
				followed = in.URL
			case f.Prober && f.ProbedHere:
				probed = in.URL
			}
		}
		return followed != "" && probed != ""
	})
	rep := fetchReport(t)
	br.navigate(s.url("/lb/"))
	var v dashView
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the page showed: %+v", v)
			br.screenshot(filepath.Join(artifactsDir(t), "dashboard-fleet-failed.png"))
		}
	})
	var want string
	waitFor(t, "the page to show the fleet as the report does", func() bool {
		v = br.readDashboard()
		rep = fetchReport(t)
		want = fmt.Sprintf("Fleet: node here of here, there · probing %d of 8 instances here", rep.Fleet.ProbedHere)
		return len(v.Rows) == 8 && v.Fleet == want
	})
	if r, _ := v.row(followed); !strings.HasSuffix(r.Cells[9], "by there (probers there)") {
		t.Errorf("the last check of an instance followed: %q, want it to name there", r.Cells[9])
	}
	if r, _ := v.row(probed); !strings.HasSuffix(r.Cells[9], "here, a prober (here)") {
		t.Errorf("the last check of an instance probed here: %q, want it to say so", r.Cells[9])
	}
	br.screenshot(filepath.Join(artifactsDir(t), "dashboard-fleet.png"))
}
