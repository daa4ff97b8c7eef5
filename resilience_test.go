package caddylb_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/golb/caddy-lb/report"
)

// kill stops b the hard way: no new connections, and those open (requests
// in flight included) are cut.
func kill(b *backend) {
	_ = b.Listener.Close()
	b.CloseClientConnections()
}

// TestKillBackendUnderLoad kills one of three backends while clients send
// GETs: no request fails (those that hit the dead backend are retried on
// another), and passive checks eject it.
func TestKillBackendUnderLoad(t *testing.T) {
	b1, b2, b3 := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app kill.test {
			instances %s %s %s
		}
	}
}`, b1.URL, b2.URL, b3.URL))
	var once sync.Once
	lr := runLoad(s, load{host: "kill.test", workers: 4, perWorker: 250, progress: func(answered int64) {
		if answered == 200 {
			once.Do(func() { kill(b3) })
		}
	}})
	t.Logf("%d requests answered 200 (by backend: %v), %d failed", lr.ok, lr.by, len(lr.failed)+lr.resets)
	if lr.resets != 0 {
		t.Fatalf("%d connections to Caddy closed without an answer after killing a backend", lr.resets)
	}
	if len(lr.failed) != 0 {
		t.Fatalf("%d requests failed after killing a backend: %v", len(lr.failed), lr.failed[:min(5, len(lr.failed))])
	}
	if lr.ok != 1000 {
		t.Errorf("%d requests answered, want 1000", lr.ok)
	}
	in := instanceOf(t, fetchReport(t), "kill.test", b3.URL)
	if in.State != "ejected" || in.EjectedUntil == nil || !strings.Contains(in.Reason, "consecutive failures") {
		t.Errorf("killed backend: state %q, reason %q, ejected until %v; want ejected for consecutive failures", in.State, in.Reason, in.EjectedUntil)
	}
	// The requests it failed were retried: counted as its retries, and
	// none as the others'.
	m := scrape(t)
	if got := value(t, m, "caddy_load_balancer_retries_total", "instance", b3.URL); got < 1 || got > float64(in.Failures) {
		t.Errorf("retries_total of the killed backend = %v, want 1 to its %d failures", got, in.Failures)
	}
	for _, b := range []*backend{b1, b2} {
		if got := value(t, m, "caddy_load_balancer_retries_total", "instance", b.URL); got != 0 {
			t.Errorf("retries_total of %s = %v, want 0", b.name, got)
		}
	}
}

// hang makes b's requests wait until the client (the load balancer) gives
// up.
func hang(b *backend) {
	b.handle(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
}

// TestHangingBackendEjected: requests to a backend that does not answer
// time out to 504 (or, retried, succeed elsewhere) until max_fails of them
// have failed; then it is ejected and the rest go to the other.
func TestHangingBackendEjected(t *testing.T) {
	tests := []struct {
		name     string
		retries  string
		want504  int
		wantHung int64 // requests the hung backend gets
	}{
		{"without retries: max_fails requests fail", "retries 0", 3, 3},
		{"with retries: none fails", "", 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good, hung := newBackend(t, "good"), newBackend(t, "hung")
			hang(hung)
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app hang.test {
			timeout 200ms
			max_fails 3
			fail_duration 1m
			%s
			instances %s %s
		}
	}
}`, tt.retries, good.URL, hung.URL))
			got504 := 0
			for range 20 {
				switch status, body := s.get("hang.test", "/"); {
				case status == http.StatusGatewayTimeout:
					got504++
				case status != http.StatusOK || body != "good":
					t.Fatalf("got %d %q, want 200 from good or 504", status, body)
				}
			}
			if got504 != tt.want504 {
				t.Errorf("%d requests got 504, want %d", got504, tt.want504)
			}
			if n := hung.requests.Load(); n != tt.wantHung {
				t.Errorf("hung backend got %d requests, want %d (max_fails)", n, tt.wantHung)
			}
			if in := instanceOf(t, fetchReport(t), "hang.test", hung.URL); in.State != "ejected" {
				t.Errorf("hung backend: state %q (%s), want ejected", in.State, in.Reason)
			}
		})
	}
}

// TestUnhealthyStatusEjectsThenRecovers: a backend answering 500 with
// unhealthy_status 5xx is ejected after max_fails answers; once it
// recovers, a trial request after fail_duration brings it back.
func TestUnhealthyStatusEjectsThenRecovers(t *testing.T) {
	good, flaky := newBackend(t, "good"), newBackend(t, "flaky")
	var failing atomic.Bool
	failing.Store(true)
	flaky.handle(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "flaky")
	})
	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.instance_ejected", "load_balancer.instance_healthy")
	s.global = global
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app status.test {
			unhealthy_status 5xx
			max_fails 2
			fail_duration 300ms
			instances %s %s
		}
	}
}`, good.URL, flaky.URL))

	got500 := 0
	for i := 0; i < 50 && flaky.requests.Load() < 2; i++ {
		if status, _ := s.get("status.test", "/"); status == http.StatusInternalServerError {
			got500++
		}
	}
	if got500 != 2 {
		t.Fatalf("%d answers were 500, want max_fails = 2", got500)
	}
	e := events.nextEvent(t)
	if e.Name() != "load_balancer.instance_ejected" || e.Data["instance"] != flaky.URL || e.Data["until"] == nil {
		t.Fatalf("event %s %v, want load_balancer.instance_ejected of %s with until", e.Name(), e.Data, flaky.URL)
	}
	in := instanceOf(t, fetchReport(t), "status.test", flaky.URL)
	if in.State != "ejected" || in.EjectedUntil == nil || !strings.Contains(in.Reason, "status 500") {
		t.Fatalf("flaky backend: state %q, reason %q, until %v; want ejected for status 500", in.State, in.Reason, in.EjectedUntil)
	}
	m := scrape(t)
	if got := value(t, m, "caddy_load_balancer_ejections_total", "instance", flaky.URL); got != 1 {
		t.Errorf("ejections_total of the flaky backend = %v, want 1", got)
	}
	if got := value(t, m, "caddy_load_balancer_ejections_total", "instance", good.URL); got != 0 {
		t.Errorf("ejections_total of the good backend = %v, want 0", got)
	}

	failing.Store(false)
	// The trial request after fail_duration decides: requests flow until
	// it has, and none fails meanwhile.
	waitFor(t, "the flaky backend back in", func() bool {
		if status, body := s.get("status.test", "/"); status != http.StatusOK {
			t.Fatalf("after recovery: %d %q", status, body)
		}
		return instanceOf(t, fetchReport(t), "status.test", flaky.URL).State == "healthy"
	})
	e = events.nextEvent(t)
	if e.Name() != "load_balancer.instance_healthy" || e.Data["reason"] != "trial request succeeded" {
		t.Fatalf("event %s %v, want load_balancer.instance_healthy after the trial", e.Name(), e.Data)
	}
	before := flaky.requests.Load()
	for range 10 {
		s.get("status.test", "/")
	}
	if n := flaky.requests.Load() - before; n != 5 {
		t.Errorf("recovered backend got %d of 10 round-robin requests, want 5", n)
	}
}

// TestRetryKeepsBody: a POST whose instance refused the connection is
// sent to another with its body intact; one whose instance read it and
// then failed is not sent again (a PUT, idempotent and small, is).
func TestRetryKeepsBody(t *testing.T) {
	echo := newBackend(t, "echo")
	echo.handle(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	})
	// reader reads the whole request, then drops the connection.
	reader := newBackend(t, "reader")
	reader.handle(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		panic(http.ErrAbortHandler)
	})
	body := strings.Repeat("payload ", 1000)
	tests := []struct {
		name       string
		first      string // the instance strategy first tries
		method     string
		wantStatus int
		wantEcho   int64 // requests the echo backend gets
	}{
		{"POST after a refused connection", closedURL(), http.MethodPost, 200, 1},
		{"POST after the instance read it", reader.URL, http.MethodPost, 502, 0},
		{"PUT after the instance read it", reader.URL, http.MethodPut, 200, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app body.test {
			strategy first
			max_fails 0
			instances %s %s
		}
	}
}`, tt.first, echo.URL))
			before := echo.requests.Load()
			req, _ := http.NewRequest(tt.method, s.url("/"), strings.NewReader(body))
			req.Host = "body.test"
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, got, tt.wantStatus)
			}
			if tt.wantStatus == 200 && string(got) != tt.method+" "+body {
				t.Errorf("echoed body of %d bytes, want the %d sent", len(got)-len(tt.method)-1, len(body))
			}
			if n := echo.requests.Load() - before; n != tt.wantEcho {
				t.Errorf("second instance got %d requests, want %d", n, tt.wantEcho)
			}
		})
	}
}

// adminPost posts a JSON body to the admin endpoint and returns the
// status and body of the answer.
func adminPost(t testing.TB, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+path, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminDo(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDrain drains an instance with requests in flight through the admin
// API: they finish, no new request reaches it, the report shows it
// draining with its requests in flight, the drain survives a reload, and
// undrain puts it back.
func TestDrain(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	release := newGate()
	t.Cleanup(release.open)
	arrived := make(chan struct{}, 3)
	b1.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			_ = release.wait(r.Context())
		}
		_, _ = io.WriteString(w, "b1")
	})
	s := newSite(t)
	events, global := newEventLog(t, "load_balancer.instance_draining", "load_balancer.instance_drained")
	s.global = global
	cfg := `
http://:{port} {
	load_balancer {
		app drain.test {
			strategy first
			timeout %s
			instances %s %s
		}
	}
}`
	s.load(fmt.Sprintf(cfg, "10s", b1.URL, b2.URL))

	// Three slow requests in flight on b1 (strategy first).
	var done []<-chan answer
	for range 3 {
		done = append(done, s.getAsync("drain.test", "/slow"))
	}
	for range 3 {
		recv(t, arrived, "a slow request at b1")
	}
	status, body := adminPost(t, report.DrainPath, fmt.Sprintf(`{"host":"drain.test","url":%q}`, b1.URL))
	if status != http.StatusOK {
		t.Fatalf("drain: %d %s", status, body)
	}
	if e := events.nextEvent(t); e.Name() != "load_balancer.instance_draining" {
		t.Fatalf("event %s %v, want load_balancer.instance_draining", e.Name(), e.Data)
	}
	in := instanceOf(t, fetchReport(t), "drain.test", b1.URL)
	if in.State != "draining" || in.ActiveConnections != 3 {
		t.Fatalf("drained instance: state %q, %d in flight; want draining, 3", in.State, in.ActiveConnections)
	}
	for range 5 {
		if status, body := s.get("drain.test", "/"); status != 200 || body != "b2" {
			t.Fatalf("new request while b1 drains: %d %q, want b2", status, body)
		}
	}
	// A reload keeps the drain.
	s.load(fmt.Sprintf(cfg, "9s", b1.URL, b2.URL))
	if in := instanceOf(t, fetchReport(t), "drain.test", b1.URL); in.State != "draining" || in.ActiveConnections != 3 {
		t.Fatalf("after a reload: state %q, %d in flight; want draining, 3", in.State, in.ActiveConnections)
	}
	if status, body := s.get("drain.test", "/"); status != 200 || body != "b2" {
		t.Fatalf("new request after the reload: %d %q, want b2", status, body)
	}

	release.open()
	for _, ch := range done {
		if a := recv(t, ch, "a slow request's answer"); a.err != nil || a.status != 200 || a.body != "b1" {
			t.Errorf("request in flight during the drain: %d %q %v, want 200 b1", a.status, a.body, a.err)
		}
	}
	if e := events.nextEvent(t); e.Name() != "load_balancer.instance_drained" {
		t.Fatalf("event %s, want load_balancer.instance_drained", e.Name())
	}
	if in := instanceOf(t, fetchReport(t), "drain.test", b1.URL); in.ActiveConnections != 0 {
		t.Errorf("after the requests ended: %d in flight", in.ActiveConnections)
	}

	if status, body := adminPost(t, report.UndrainPath, fmt.Sprintf(`{"host":"drain.test","url":%q}`, b1.URL)); status != http.StatusOK {
		t.Fatalf("undrain: %d %s", status, body)
	}
	if status, body := s.get("drain.test", "/"); status != 200 || body != "b1" {
		t.Fatalf("after undrain: %d %q, want b1", status, body)
	}
}

// TestDrainAPIErrors: the drain routes refuse what they cannot do, with a
// status and a message that say why.
func TestDrainAPIErrors(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.test {
			instances %s
		}
	}
}`, b.URL))
	tests := []struct {
		name   string
		path   string
		body   string
		status int
		want   string
	}{
		{"unknown host", report.DrainPath, `{"host":"nope.test","url":"` + b.URL + `"}`, 404, `no app serves host "nope.test"`},
		{"unknown instance", report.DrainPath, `{"host":"api.test","url":"http://127.0.0.1:1"}`, 404, `app "api.test" has no instance "http://127.0.0.1:1"`},
		{"undrain unknown instance", report.UndrainPath, `{"host":"api.test","url":"http://127.0.0.1:1"}`, 404, "no such instance"},
		{"no url", report.DrainPath, `{"host":"api.test"}`, 400, `"url" is missing`},
		{"not JSON", report.DrainPath, `host=api.test`, 400, "bad request body"},
		{"unknown field", report.DrainPath, `{"host":"api.test","url":"x","why":"y"}`, 400, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := adminPost(t, tt.path, tt.body)
			var answer struct{ Error string }
			if err := json.Unmarshal([]byte(body), &answer); err != nil {
				t.Fatalf("answer %q: %v", body, err)
			}
			if status != tt.status || !strings.Contains(answer.Error, tt.want) {
				t.Errorf("POST %s %s: %d %s; want %d with %q", tt.path, tt.body, status, body, tt.status, tt.want)
			}
		})
	}
	resp, err := adminGet(report.DrainPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET %s: %d, want 405", report.DrainPath, resp.StatusCode)
	}
	if status, body := s.get("api.test", "/"); status != 200 || body != "b" {
		t.Errorf("after refused drains: %d %q", status, body)
	}
}

// TestReloadKeepsHealth: an instance found unhealthy stays out of rotation
// across reloads that keep it: no request reaches it, and the report
// keeps its state and counts.
func TestReloadKeepsHealth(t *testing.T) {
	good, down := newBackend(t, "good"), newBackend(t, "down")
	down.health.Store(503)
	s := newSite(t)
	cfg := func(i int) string {
		return fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app keep.test {
			strategy least_connections
			health_uri /health
			health_check_cooldown %dms
			instances %s %s
		}
	}
}`, 1000+i, good.URL, down.URL)
	}
	s.load(cfg(0))
	waitFor(t, "the down backend found unhealthy", func() bool {
		return instanceOf(t, fetchReport(t), "keep.test", down.URL).State == "unhealthy"
	})
	for range 10 {
		s.get("keep.test", "/")
	}
	for i := 1; i <= 5; i++ {
		s.load(cfg(i))
		rep := fetchReport(t)
		if in := instanceOf(t, rep, "keep.test", down.URL); in.State != "unhealthy" {
			t.Fatalf("reload %d: down backend %q, want unhealthy kept", i, in.State)
		}
		if in := instanceOf(t, rep, "keep.test", good.URL); in.TotalRequests != uint64(10*i) {
			t.Fatalf("reload %d: good backend counts %d requests, want %d kept", i, in.TotalRequests, 10*i)
		}
		for range 10 {
			if status, body := s.get("keep.test", "/"); status != 200 || body != "good" {
				t.Fatalf("after reload %d: %d %q", i, status, body)
			}
		}
	}
	if n := down.requests.Load(); n != 0 {
		t.Errorf("the unhealthy backend got %d requests across reloads", n)
	}
}

// TestInitiallyUnhealthy: with initially_unhealthy, a new instance gets
// no traffic before its first passing health check.
func TestInitiallyUnhealthy(t *testing.T) {
	good, late := newBackend(t, "good"), newBackend(t, "late")
	late.health.Store(503)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app late.test {
			health_uri /health
			health_check_cooldown 50ms
			initially_unhealthy
			instances %s %s
		}
	}
}`, good.URL, late.URL))
	// Every new instance waits for its first check: the good one passes it.
	waitFor(t, "the good backend healthy", func() bool {
		return instanceOf(t, fetchReport(t), "late.test", good.URL).State == "healthy"
	})
	for range 10 {
		if status, body := s.get("late.test", "/"); status != 200 || body != "good" {
			t.Fatalf("before any passing check: %d %q, want good", status, body)
		}
	}
	if in := instanceOf(t, fetchReport(t), "late.test", late.URL); in.State != "unhealthy" {
		t.Fatalf("late backend: %q (%s), want unhealthy", in.State, in.Reason)
	}
	late.health.Store(0)
	waitFor(t, "the late backend healthy", func() bool {
		return instanceOf(t, fetchReport(t), "late.test", late.URL).State == "healthy"
	})
	seen := false
	for range 4 {
		if _, body := s.get("late.test", "/"); body == "late" {
			seen = true
		}
	}
	if !seen {
		t.Error("the late backend got no request once healthy")
	}
}

// TestSameBackendTwoApps: two apps with the same backend and different
// health URIs keep separate health.
func TestSameBackendTwoApps(t *testing.T) {
	b := newBackend(t, "b")
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "b")
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app one.test {
			health_uri /health
			health_check_cooldown 20ms
			instances %[1]s
		}
		app two.test {
			health_uri /broken
			health_check_cooldown 20ms
			instances %[1]s
		}
	}
}`, b.URL))
	waitFor(t, "both checked, two.test's instance unhealthy", func() bool {
		rep := fetchReport(t)
		return instanceOf(t, rep, "two.test", b.URL).State == "unhealthy" &&
			instanceOf(t, rep, "one.test", b.URL).ConsecutivePasses >= 2
	})
	if in := instanceOf(t, fetchReport(t), "one.test", b.URL); in.State != "healthy" {
		t.Errorf("one.test's instance: %q (%s), want healthy", in.State, in.Reason)
	}
	if status, body := s.get("one.test", "/"); status != 200 || body != "b" {
		t.Errorf("one.test: %d %q", status, body)
	}
	if status, _ := s.get("two.test", "/"); status != http.StatusServiceUnavailable {
		t.Errorf("two.test: %d, want 503", status)
	}
}

// TestNoRetryOnceAnswered: a response that has begun is never retried,
// even if the instance fails it midway (a GET, retried had it failed
// before): the client's response is cut short, and no other instance gets
// the request.
func TestNoRetryOnceAnswered(t *testing.T) {
	other := newBackend(t, "other")
	broken := newBackend(t, "broken")
	broken.handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app began.test {
			strategy first
			instances %s %s
		}
	}
}`, broken.URL, other.URL))
	req, _ := http.NewRequest(http.MethodGet, s.url("/"), nil)
	req.Host = "began.test"
	// The status line may not have left Caddy's buffer before the abort:
	// the client sees a response cut short or a connection closed.
	resp, err := client.Do(req)
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Errorf("got %d %q in full, want it cut short", resp.StatusCode, body)
		}
	}
	if n := broken.requests.Load(); n != 1 {
		t.Errorf("the broken instance got %d requests, want 1", n)
	}
	if n := other.requests.Load(); n != 0 {
		t.Errorf("the other instance got %d requests, want none", n)
	}
}
