package caddylb_test

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// sample is one sample of a Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape reads the samples of the load balancer's metrics from the admin
// endpoint's /metrics.
func scrape(t testing.TB) []sample {
	t.Helper()
	resp, err := adminGet("/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, error %v: %s", resp.StatusCode, err, body)
	}
	var samples []sample
	for line := range strings.SplitSeq(string(body), "\n") {
		m := sampleLine.FindStringSubmatch(line)
		if m == nil || !strings.HasPrefix(m[1], "caddy_load_balancer_") {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("bad sample %q: %v", line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		samples = append(samples, s)
	}
	return samples
}

// find returns the values of the samples named name whose labels include
// labels (pairs of name and value).
func find(samples []sample, name string, labels ...string) []float64 {
	var vals []float64
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		vals = append(vals, s.value)
	}
	return vals
}

// value returns the value of the one sample named name with labels, or -1
// if there is none; more than one fails the test.
func value(t testing.TB, samples []sample, name string, labels ...string) float64 {
	t.Helper()
	vals := find(samples, name, labels...)
	switch len(vals) {
	case 0:
		return -1
	case 1:
		return vals[0]
	}
	t.Fatalf("%d samples of %s%v, want 1", len(vals), name, labels)
	return 0
}

// statusBackend answers every request with the status in its "status"
// query parameter, 200 by default.
func statusBackend(t testing.TB, name string) *backend {
	b := newBackend(t, name)
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		code := 200
		if s := r.URL.Query().Get("status"); s != "" {
			code, _ = strconv.Atoi(s)
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, name)
	})
	return b
}

func TestMetrics(t *testing.T) {
	a := statusBackend(t, "a")
	ok, sick := newBackend(t, "ok"), newBackend(t, "sick")
	sick.health.Store(503)
	down := closedURL()
	secret := strings.Replace(a.URL, "http://", "http://user:hunter2@", 1)
	redacted := strings.Replace(a.URL, "http://", "http://xxxxx@", 1)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.test {
			strategy first
			instances %s
		}
		app checked.test {
			health_uri /health
			health_check_cooldown 1h
			instances %s %s
		}
		app down.test {
			instances %s
		}
	}
}`, secret, ok.URL, sick.URL, down))

	// A known sequence: 3 × 200 and 2 × 502 from the backend, one 404
	// from it, one 502 of ours (connection refused), and one round of
	// health checks, in which "sick" fails and so turns unhealthy.
	for _, q := range []string{"", "", "", "?status=502", "?status=502", "?status=404"} {
		s.get("api.test", "/"+q)
	}
	if code, _ := s.get("down.test", "/"); code != http.StatusBadGateway {
		t.Fatalf("down.test: status %d, want 502", code)
	}
	waitFor(t, "one health check of each instance", func() bool {
		m := scrape(t)
		return value(t, m, "caddy_load_balancer_health_checks_total", "instance", ok.URL, "result", "passed") == 1 &&
			value(t, m, "caddy_load_balancer_health_checks_total", "instance", sick.URL, "result", "failed") == 1
	})
	m := scrape(t)

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"caddy_load_balancer_requests_total", []string{"app", "api.test", "instance", redacted, "code_class", "2xx"}, 3},
		{"caddy_load_balancer_requests_total", []string{"app", "api.test", "instance", redacted, "code_class", "4xx"}, 1},
		{"caddy_load_balancer_requests_total", []string{"app", "api.test", "instance", redacted, "code_class", "5xx"}, 2},
		{"caddy_load_balancer_requests_total", []string{"app", "api.test", "instance", redacted, "code_class", "1xx"}, 0},
		{"caddy_load_balancer_requests_total", []string{"app", "down.test", "instance", down, "code_class", "5xx"}, 1},
		{"caddy_load_balancer_requests_total", []string{"app", "checked.test", "instance", ok.URL, "code_class", "2xx"}, 0},
		{"caddy_load_balancer_response_header_seconds_count", []string{"app", "api.test", "instance", redacted}, 6},
		{"caddy_load_balancer_response_header_seconds_bucket", []string{"app", "api.test", "instance", redacted, "le", "+Inf"}, 6},
		{"caddy_load_balancer_response_header_seconds_count", []string{"app", "down.test", "instance", down}, 0},
		{"caddy_load_balancer_instance_in_flight", []string{"app", "api.test", "instance", redacted}, 0},
		{"caddy_load_balancer_instance_weight", []string{"app", "api.test", "instance", redacted}, 1},
		{"caddy_load_balancer_instance_healthy", []string{"app", "api.test", "instance", redacted}, 1},
		{"caddy_load_balancer_instance_healthy", []string{"app", "checked.test", "instance", ok.URL}, 1},
		{"caddy_load_balancer_instance_healthy", []string{"app", "checked.test", "instance", sick.URL}, 0},
		{"caddy_load_balancer_instance_state", []string{"instance", sick.URL, "state", "unhealthy"}, 1},
		{"caddy_load_balancer_instance_state", []string{"instance", sick.URL, "state", "healthy"}, 0},
		{"caddy_load_balancer_instance_state", []string{"instance", ok.URL, "state", "healthy"}, 1},
		{"caddy_load_balancer_instance_state", []string{"instance", ok.URL, "state", "unhealthy"}, 0},
		{"caddy_load_balancer_health_checks_total", []string{"instance", ok.URL, "result", "failed"}, 0},
		{"caddy_load_balancer_health_checks_total", []string{"instance", sick.URL, "result", "passed"}, 0},
		{"caddy_load_balancer_health_check_seconds_count", []string{"instance", ok.URL}, 1},
		{"caddy_load_balancer_health_check_seconds_count", []string{"instance", sick.URL}, 1},
		{"caddy_load_balancer_retries_total", []string{"instance", redacted}, 0},
		{"caddy_load_balancer_ejections_total", []string{"instance", sick.URL}, 0},
		// Apps without health checks have no health check series.
		{"caddy_load_balancer_health_checks_total", []string{"instance", redacted, "result", "passed"}, -1},
		{"caddy_load_balancer_health_check_seconds_count", []string{"instance", down}, -1},
	} {
		if got := value(t, m, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if sum := value(t, m, "caddy_load_balancer_response_header_seconds_sum", "instance", redacted); sum <= 0 {
		t.Errorf("response_header_seconds_sum = %v, want > 0", sum)
	}
	for _, smp := range m {
		if strings.Contains(smp.labels["instance"], "hunter2") {
			t.Errorf("userinfo not redacted: %v", smp)
		}
	}

	t.Run("in flight is current at scrape time", func(t *testing.T) {
		g := newGate()
		defer g.open()
		a.handle(func(w http.ResponseWriter, r *http.Request) {
			_ = g.wait(r.Context())
			_, _ = io.WriteString(w, "a")
		})
		done := s.getAsync("api.test", "/")
		waitFor(t, "the request in flight", func() bool {
			return value(t, scrape(t), "caddy_load_balancer_instance_in_flight", "instance", redacted) == 1
		})
		g.open()
		if a := recv(t, done, "the answer"); a.err != nil || a.status != 200 {
			t.Errorf("status %d, %v", a.status, a.err)
		}
		if got := value(t, scrape(t), "caddy_load_balancer_instance_in_flight", "instance", redacted); got != 0 {
			t.Errorf("in flight after the request: %v, want 0", got)
		}
	})

	t.Run("a reload drops the series of removed instances", func(t *testing.T) {
		s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.test {
			strategy first
			instances %s
		}
	}
}`, secret))
		m := scrape(t)
		for _, gone := range []string{ok.URL, sick.URL, down} {
			if vals := find(m, "caddy_load_balancer_instance_healthy", "instance", gone); len(vals) != 0 {
				t.Errorf("instance %s removed by the reload still has series", gone)
			}
		}
		if got := value(t, m, "caddy_load_balancer_instance_healthy", "app", "api.test", "instance", redacted); got != 1 {
			t.Errorf("kept instance: healthy = %v, want 1", got)
		}
		apps := map[string]bool{}
		for _, smp := range m {
			apps[smp.labels["app"]] = true
		}
		if got := slices.Sorted(maps.Keys(apps)); !slices.Equal(got, []string{"api.test"}) {
			t.Errorf("apps with series after the reload: %v", got)
		}
	})
}

// TestMetricsMergeDuplicates checks that two handlers with the same app
// and instance give one series, not a scrape error.
func TestMetricsMergeDuplicates(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	handle /one/* {
		load_balancer %[1]s
	}
	handle {
		load_balancer %[1]s
	}
}`, b.URL))
	s.get("x.test", "/one/")
	s.get("x.test", "/two/")
	s.get("x.test", "/two/")
	m := scrape(t)
	if got := value(t, m, "caddy_load_balancer_requests_total", "app", "*", "instance", b.URL, "code_class", "2xx"); got != 3 {
		t.Errorf("requests_total = %v, want 3 (both handlers' counts)", got)
	}
	// Both handlers have the same app and instance: they share its state,
	// which is counted once.
	if got := value(t, m, "caddy_load_balancer_instance_weight", "instance", b.URL); got != 1 {
		t.Errorf("instance_weight = %v, want 1", got)
	}
}

func TestEvents(t *testing.T) {
	b := newBackend(t, "b")
	b.health.Store(503)
	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.instance_healthy", "load_balancer.instance_unhealthy", "load_balancer.instance_ejected")
	s.global = global
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app events.test {
			health_uri /health
			health_check_cooldown 20ms
			instances %s
		}
	}
}`, b.URL))

	for _, want := range []struct {
		name, reason string
		health       int32 // the backend's health status after the event; 0 = 200
	}{
		{"load_balancer.instance_unhealthy", "status 503", 0},
		{"load_balancer.instance_healthy", "health check passed", 503},
		{"load_balancer.instance_unhealthy", "status 503", 0},
	} {
		e := events.nextEvent(t)
		if e.Name() != want.name || e.Data["app"] != "events.test" || e.Data["instance"] != b.URL || e.Data["reason"] != want.reason {
			t.Fatalf("event %s %v, want %s with app events.test, instance %s, reason %q", e.Name(), e.Data, want.name, b.URL, want.reason)
		}
		if origin := e.Origin(); origin == nil || origin.CaddyModule().ID != "http.handlers.load_balancer" {
			t.Errorf("event origin %v, want the load_balancer handler", origin)
		}
		b.health.Store(want.health)
	}

	// Unloading the config while checks run and events flow: nothing may
	// be emitted by it on its way out (nor panic).
	s.load(`http://:{port} {
	respond ok
}`)
	for _, e := range events.all() {
		if e.late {
			t.Errorf("event %s %v emitted by a config being unloaded", e.Name(), e.Data)
		}
	}

	// A request of an unloaded config that fails its instance after the
	// unload: the ejection concerns no running config, so no event.
	failing := newBackend(t, "failing")
	arrived, release := make(chan struct{}), newGate()
	t.Cleanup(release.open)
	failing.handle(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		_ = release.wait(r.Context())
		w.WriteHeader(http.StatusInternalServerError)
	})
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app late.test {
			unhealthy_status 5xx
			max_fails 1
			instances %s
		}
	}
}`, failing.URL))
	seen := len(events.all())
	done := s.getAsync("late.test", "/")
	recv(t, arrived, "the request at the backend")
	s.load(`http://:{port} {
	respond ok
}`)
	release.open()
	if a := recv(t, done, "the answer"); a.err != nil || a.status != http.StatusInternalServerError {
		t.Fatalf("the request across the unload: %d %v, want the backend's 500", a.status, a.err)
	}
	// The ejection came before the answer was complete: any event of it
	// would be in the log by now.
	if got := events.all()[seen:]; len(got) != 0 {
		t.Errorf("events after the config was unloaded: %v", got)
	}
}

func TestAccessLogAndPlaceholders(t *testing.T) {
	b := newBackend(t, "b")
	secret := strings.Replace(b.URL, "http://", "http://user:hunter2@", 1)
	redacted := strings.Replace(b.URL, "http://", "http://xxxxx@", 1)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	log {
		output file %s
		format json
	}
	header {
		X-Served-By {http.load_balancer.instance}
		defer
	}
	header >X-App {http.load_balancer.app}
	log_append lb_app {http.load_balancer.app}
	log_append lb_instance {http.load_balancer.instance}
	log_append lb_duration {http.load_balancer.duration}
	log_append lb_retries {http.load_balancer.retries}
	load_balancer {
		app logged.test {
			instances %s
		}
		app empty.test {
			health_uri /health
			health_check_cooldown 1h
			instances %s
		}
		app retried.test {
			strategy first
			instances %s %s
		}
	}
}`, accessLog, secret, closedURL(), closedURL(), b.URL))

	req, _ := http.NewRequest(http.MethodGet, s.url("/logged"), nil)
	req.Host = "logged.test"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := resp.Header.Get("X-Served-By"); got != redacted {
		t.Errorf("X-Served-By = %q, want %q", got, redacted)
	}
	if got := resp.Header.Get("X-App"); got != "logged.test" {
		t.Errorf("X-App = %q, want logged.test", got)
	}

	// An app with no healthy instance: the app is known, no instance.
	waitFor(t, "empty.test's instance unhealthy", func() bool {
		code, _ := s.get("empty.test", "/none")
		return code == http.StatusServiceUnavailable
	})

	accessLines := func(uri string) []map[string]any {
		return logLines(t, &site{logFile: accessLog}, func(l map[string]any) bool {
			req, _ := l["request"].(map[string]any)
			return req != nil && req["uri"] == uri
		})
	}
	waitFor(t, "the access log lines", func() bool { return len(accessLines("/logged")) == 1 && len(accessLines("/none")) > 0 })
	l := accessLines("/logged")[0]
	for k, want := range map[string]any{
		"load_balancer_app":      "logged.test",
		"load_balancer_instance": redacted,
		"lb_app":                 "logged.test",
		"lb_instance":            redacted,
		"lb_retries":             float64(0),
	} {
		if l[k] != want {
			t.Errorf("access log %s = %v (%T), want %v", k, l[k], l[k], want)
		}
	}
	if d, ok := l["lb_duration"].(float64); !ok || d <= 0 {
		t.Errorf("access log lb_duration = %v (%T), want a positive number of seconds", l["lb_duration"], l["lb_duration"])
	}
	raw, _ := os.ReadFile(accessLog)
	if strings.Contains(string(raw), "hunter2") {
		t.Errorf("the access log shows the instance's password")
	}
	// A request retried once, after its first instance refused it.
	if status, body := s.get("retried.test", "/retried"); status != 200 || body != "b" {
		t.Fatalf("retried.test: %d %q", status, body)
	}
	waitFor(t, "the retried request's access log line", func() bool { return len(accessLines("/retried")) == 1 })
	if l := accessLines("/retried")[0]; l["lb_retries"] != float64(1) || l["lb_instance"] != b.URL || l["status"] != float64(200) {
		t.Errorf("retried request's access log line: retries %v, instance %v, status %v; want 1, %s, 200",
			l["lb_retries"], l["lb_instance"], l["status"], b.URL)
	}
	none := accessLines("/none")
	l = none[len(none)-1]
	if l["load_balancer_app"] != nil || l["lb_app"] != "empty.test" || l["lb_instance"] != nil {
		t.Errorf("503 access log line: app %v, lb_app %v, lb_instance %v; want no instance, lb_app empty.test",
			l["load_balancer_app"], l["lb_app"], l["lb_instance"])
	}
}

func TestReportStats(t *testing.T) {
	a := statusBackend(t, "a")
	idle := newBackend(t, "idle")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app stats.test {
			strategy first
			instances %s %s
		}
		app down.test {
			instances %s
		}
	}
}`, a.URL, idle.URL, closedURL()))
	// 3 × 200, 1 × 404, 2 × 502: 6 requests, 2 errors, in the last minute.
	for _, q := range []string{"", "", "", "?status=404", "?status=502", "?status=502"} {
		s.get("stats.test", "/"+q)
	}
	s.get("down.test", "/")

	rep := fetchReport(t)
	got := instanceOf(t, rep, "stats.test", a.URL)
	if got.RequestRate == nil || *got.RequestRate != 6.0/60 {
		t.Errorf("request_rate = %v, want %v", deref(got.RequestRate), 6.0/60)
	}
	if got.ErrorRate == nil || *got.ErrorRate != 2.0/6 {
		t.Errorf("error_rate = %v, want %v", deref(got.ErrorRate), 2.0/6)
	}
	if got.LatencyP50Ms == nil || got.LatencyP99Ms == nil || *got.LatencyP50Ms <= 0 || *got.LatencyP99Ms < *got.LatencyP50Ms {
		t.Errorf("latency p50 %v, p99 %v: want 0 < p50 <= p99", deref(got.LatencyP50Ms), deref(got.LatencyP99Ms))
	}

	idleGot := instanceOf(t, rep, "stats.test", idle.URL)
	if deref(idleGot.RequestRate) != 0 || deref(idleGot.ErrorRate) != 0 || idleGot.RequestRate == nil ||
		idleGot.LatencyP50Ms != nil || idleGot.LatencyP99Ms != nil {
		t.Errorf("idle instance: rate %v, errors %v, p50 %v, p99 %v; want 0, 0 and no latencies",
			idleGot.RequestRate, idleGot.ErrorRate, idleGot.LatencyP50Ms, idleGot.LatencyP99Ms)
	}

	// A proxy failure is an error, and has no latency.
	downGot := rep.Apps[1].Instances[0]
	if deref(downGot.RequestRate) != 1.0/60 || deref(downGot.ErrorRate) != 1 || downGot.LatencyP50Ms != nil {
		t.Errorf("down instance: rate %v, errors %v, p50 %v; want 1/60, 1, none",
			deref(downGot.RequestRate), deref(downGot.ErrorRate), downGot.LatencyP50Ms)
	}
}

func deref(p *float64) float64 {
	if p == nil {
		return -1
	}
	return *p
}
