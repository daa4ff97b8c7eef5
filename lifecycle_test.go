package caddylb_test

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	caddylb "github.com/golb/caddy-lb"
)

func TestHealthChangesLoggedOncePerChange(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.test {
			health_uri /health
			health_check_cooldown 20ms
			instances %s
		}
	}
}`, b.URL))
	healthChanges := func() []map[string]any {
		return logLines(t, s, func(l map[string]any) bool {
			msg, _ := l["msg"].(string)
			return strings.HasPrefix(msg, "instance ") && l["app"] == "api.test"
		})
	}
	// Flip health twice, waiting each time for several more probes so
	// that a repeated log line would show.
	for _, step := range []struct {
		status int32
		msg    string
	}{{503, "instance unhealthy"}, {0, "instance healthy"}} {
		b.health.Store(step.status)
		waitFor(t, step.msg, func() bool {
			lines := healthChanges()
			return len(lines) > 0 && lines[len(lines)-1]["msg"] == step.msg
		})
		probes := b.probes.Load()
		waitFor(t, "three more probes", func() bool { return b.probes.Load() >= probes+3 })
	}
	lines := healthChanges()
	if len(lines) != 2 {
		t.Fatalf("got %d health log lines, want 2: %v", len(lines), lines)
	}
	if lines[0]["instance"] != b.URL || lines[0]["reason"] != "status 503" || lines[0]["level"] != "warn" {
		t.Errorf("unhealthy line: %v", lines[0])
	}
	if lines[1]["instance"] != b.URL || lines[1]["level"] != "info" {
		t.Errorf("healthy line: %v", lines[1])
	}
	// Nothing is logged per request at info.
	for range 5 {
		s.get("api.test", "/")
	}
	if n := len(logLines(t, s, func(l map[string]any) bool {
		return l["logger"] == "http.handlers.load_balancer" && l["level"] != "debug"
	})); n != 2 {
		t.Fatalf("load_balancer logged %d lines above debug, want the 2 health changes", n)
	}
}

func TestReport(t *testing.T) {
	a1, a2 := newBackend(t, "a1"), newBackend(t, "a2")
	a2.health.Store(503)
	p1 := newBackend(t, "p1")
	secretURL := strings.Replace(p1.URL, "http://", "http://user:hunter2@", 1)
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.test {
			health_uri /health
			health_check_cooldown 1h
			instances %s %s
		}
		app pay.test {
			strategy least_connections
			instance %s weight 3
		}
	}
}`, a1.URL, a2.URL, secretURL))
	waitFor(t, "a2 unhealthy", func() bool { return !instanceOf(t, fetchReport(t), "api.test", a2.URL).Healthy })
	// Probes are spread out: a1's first may come later than a2's.
	waitFor(t, "a1 checked", func() bool { return instanceOf(t, fetchReport(t), "api.test", a1.URL).LastChecked != nil })
	for range 3 {
		s.get("api.test", "/")
	}

	rep := fetchReport(t)
	if len(rep.Apps) != 2 || rep.Apps[0].Host != "api.test" || rep.Apps[1].Host != "pay.test" {
		t.Fatalf("apps not in config order: %+v", rep.Apps)
	}
	if rep.Apps[0].Strategy != "round_robin" || rep.Apps[1].Strategy != "least_connections" {
		t.Errorf("strategies: %q %q", rep.Apps[0].Strategy, rep.Apps[1].Strategy)
	}
	got1 := instanceOf(t, rep, "api.test", a1.URL)
	if !got1.Healthy || got1.TotalRequests != 3 || got1.LastChecked == nil || got1.LastError != "" || got1.Failures != 0 {
		t.Errorf("a1: %+v", got1)
	}
	got2 := instanceOf(t, rep, "api.test", a2.URL)
	if got2.Healthy || got2.TotalRequests != 0 || got2.LastChecked == nil || got2.LastError != "status 503" {
		t.Errorf("a2: %+v", got2)
	}
	p := rep.Apps[1].Instances[0]
	if strings.Contains(p.URL, "hunter2") || strings.Contains(p.URL, "user") || p.LastChecked != nil {
		t.Errorf("pay instance: %+v (userinfo must be redacted; never checked)", p)
	}
	if p.Weight != 3 || p.EffectiveWeight != 3 || p.State != "healthy" || p.Reason != "added" || p.Since == nil || p.Since.After(time.Now()) {
		t.Errorf("pay instance: weight %d, effective %v, state %q (%s) since %v; want 3, 3, healthy (added) since its start",
			p.Weight, p.EffectiveWeight, p.State, p.Reason, p.Since)
	}
	if got2.State != "unhealthy" || got2.Reason != "status 503" || got2.Since == nil || got2.Since.Before(*p.Since) {
		t.Errorf("a2: state %q (%s) since %v; want unhealthy (status 503) since after it was added", got2.State, got2.Reason, got2.Since)
	}

	t.Run("raw JSON keeps the original field names", func(t *testing.T) {
		resp, err := adminGet("/api/v1/loadBalancers/report")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw struct {
			Apps []map[string]any `json:"apps"`
		}
		if err := jsonDecode(resp, &raw); err != nil {
			t.Fatal(err)
		}
		in := raw.Apps[1]["instances"].([]any)[0].(map[string]any)
		for _, k := range []string{"url", "healthy", "active_connections", "total_requests", "failures", "last_checked", "last_error"} {
			if _, ok := in[k]; !ok {
				t.Errorf("instance has no %q: %v", k, in)
			}
		}
		if in["last_checked"] != nil {
			t.Errorf("last_checked of an unchecked instance = %v, want null", in["last_checked"])
		}
	})

	t.Run("other methods get 405", func(t *testing.T) {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			req, _ := http.NewRequest(m, "http://"+adminAddr+"/api/v1/loadBalancers/report", nil)
			resp, err := adminDo(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s: status %d, want 405", m, resp.StatusCode)
			}
		}
	})

	t.Run("admin host check applies", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+adminAddr+"/api/v1/loadBalancers/report", nil)
		req.Host = "evil.example"
		resp, err := adminDo(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("foreign Host: status %d, want 403", resp.StatusCode)
		}
	})

	t.Run("reflects a reload at once", func(t *testing.T) {
		s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app new.test {
			instances %s
		}
	}
}`, a1.URL))
		rep := fetchReport(t)
		if len(rep.Apps) != 1 || rep.Apps[0].Host != "new.test" {
			t.Fatalf("after reload: %+v", rep.Apps)
		}
	})

	t.Run("empty without load balancers", func(t *testing.T) {
		s.load(`
http://:{port} {
	respond "no lb"
}`)
		if rep := fetchReport(t); rep.Apps == nil || len(rep.Apps) != 0 {
			t.Fatalf("got %+v, want an empty apps list", rep)
		}
	})
}

// TestReloadKeepsInFlightRequest starts a request, reloads the config
// while it is in flight, and checks the old config finishes it.
func TestReloadKeepsInFlightRequest(t *testing.T) {
	b := newBackend(t, "old")
	release := newGate()
	arrived := make(chan struct{})
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		_ = release.wait(r.Context())
		fmt.Fprint(w, "finished")
	})
	other := newBackend(t, "new")
	s := newSite(t)
	cfg := `
http://:{port} {
	load_balancer {
		app x.test {
			health_uri /health
			instances %s
		}
	}
}`
	s.load(fmt.Sprintf(cfg, b.URL))

	done := s.getAsync("x.test", "/")
	recv(t, arrived, "the request at the backend")
	s.load(fmt.Sprintf(cfg, other.URL)) // the old handler is cleaned up here
	if status, body := s.get("x.test", "/"); status != 200 || body != "new" {
		t.Fatalf("new config: %d %q", status, body)
	}
	release.open()
	if r := recv(t, done, "the in-flight request's answer"); r.err != nil || r.status != 200 || r.body != "finished" {
		t.Fatalf("in-flight request across reload: %d %q %v", r.status, r.body, r.err)
	}
}

// TestReloadsUnderLoad reloads 20 times while clients send requests: the
// load balancer must answer every request that reaches it with a success,
// and no health checker may outlive its config.
//
// Connection-level errors are counted apart: on Linux, Caddy opens a new
// SO_REUSEPORT listener for each config and closes the old one, which
// resets connections still queued on it and closes idle keep-alive
// connections as a client reuses them. That happens to every Caddy handler
// (a plain `respond` site loses as many), before any handler runs; the
// net.ipv4.tcp_migrate_req sysctl removes the resets.
func TestReloadsUnderLoad(t *testing.T) {
	b1, b2, down := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "down")
	down.health.Store(503)
	s := newSite(t)
	cfg := func(i int) string {
		strategy := []string{"round_robin", "least_connections"}[i%2]
		return fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			strategy %s
			health_uri /health
			health_check_cooldown %dms
			instances %s %s %s
		}
	}
}`, strategy, 50+i, b1.URL, b2.URL, down.URL)
	}
	s.load(cfg(0))
	waitFor(t, "the down backend found unhealthy", func() bool {
		return instanceOf(t, fetchReport(t), "x.test", down.URL).State == "unhealthy"
	})
	downBefore := down.requests.Load()
	s.get("x.test", "/")
	client.CloseIdleConnections()
	baseAll := goroutinesSettled()

	const workers, reloads = 4, 20
	var stop atomic.Bool
	results := make(chan *loadResult, 1)
	go func() { results <- runLoad(s, load{host: "x.test", workers: workers, perWorker: 2000, stop: &stop}) }()
	for i := 1; i <= reloads; i++ {
		s.load(cfg(i))
	}
	stop.Store(true) // each worker ends after its request under way
	lr := recv(t, results, "the load to end")
	ok, connErrs := lr.ok, lr.resets
	t.Logf("%d reloads: %d requests answered 200 (%v), %d connection errors at Caddy's listener", reloads, ok, lr.by, connErrs)
	if len(lr.failed) != 0 {
		t.Fatalf("%d requests failed across %d reloads: %v", len(lr.failed), reloads, lr.failed[:min(len(lr.failed), 5)])
	}
	if ok == 0 || lr.by["b1"]+lr.by["b2"] != ok {
		t.Fatalf("answers %v: want all from b1 and b2", lr.by)
	}
	// A reload resets at most the connection each client has under way
	// and one it opens on the closing listener; more would be a load
	// balancer hanging up.
	if connErrs > 2*workers*reloads {
		t.Errorf("%d connections reset or closed without an answer across %d reloads, want at most %d", connErrs, reloads, 2*workers*reloads)
	}
	// The instances' states were kept, not rebuilt: one health monitor
	// each, however many reloads; the down backend stayed out; every
	// request that reached an instance is in its counts, and was answered:
	// a request the load balancer took and then hung up on would show.
	if got := checkers(b1.URL, b2.URL, down.URL); got != "3 monitors, 3 instance states" {
		t.Errorf("after %d reloads: %s, want 3 of each", reloads, got)
	}
	if n := down.requests.Load() - downBefore; n != 0 {
		t.Errorf("the unhealthy backend got %d requests across %d reloads", n, reloads)
	}
	rep := fetchReport(t)
	counted := instanceOf(t, rep, "x.test", b1.URL).TotalRequests + instanceOf(t, rep, "x.test", b2.URL).TotalRequests
	served := uint64(b1.requests.Load() + b2.requests.Load())
	if answered := uint64(ok + 1); counted != served || served != answered {
		t.Errorf("the report counts %d requests, the backends served %d, the clients got %d answers", counted, served, answered)
	}
	// The last config that uses an instance takes its state and health
	// checks with it.
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			instances %s
		}
	}
}`, b1.URL))
	if got := checkers(b1.URL, b2.URL, down.URL); got != "0 monitors, 1 instance states" {
		t.Errorf("after a config without health checks: %s, want 0 monitors, 1 state", got)
	}
	// Nothing else may be left behind either: backend connections of
	// unloaded configs are closed, including those given back by requests
	// that finished after their config's Cleanup.
	client.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseAll && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseAll {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after 20 reloads, %d before:\n%s", n, baseAll, buf[:runtime.Stack(buf, true)])
	}
}

// goroutinesSettled returns the goroutine count once it has not changed
// for a moment, so a baseline is not taken while connections close.
func goroutinesSettled() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(10 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			return n
		} else {
			n = m
		}
	}
	return n
}

// TestBadConfigRefused loads bad configs: each is refused with an error
// that names the app and the field, and the running config keeps serving.
func TestBadConfigRefused(t *testing.T) {
	b := newBackend(t, "good")
	s := newSite(t)
	good := fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app x.test {
			instances %s
		}
	}
}`, b.URL)
	s.load(good)

	tests := []struct {
		name string
		json string // the load_balancer handler
		want []string
		is   error
	}{
		{"no apps", `{"handler":"load_balancer"}`, []string{"apps"}, caddylb.ErrNoApps},
		{"no instances", `{"handler":"load_balancer","apps":[{"host":"a.test"}]}`, []string{`app "a.test"`, "instances"}, caddylb.ErrNoInstances},
		{"bad scheme", `{"handler":"load_balancer","apps":[{"host":"a.test","instances":[{"url":"ftp://127.0.0.1:21"}]}]}`, []string{`app "a.test"`, "instances[0].url", "ftp"}, caddylb.ErrInvalidScheme},
		{"URL without host", `{"handler":"load_balancer","apps":[{"host":"a.test","instances":[{"url":"http://127.0.0.1:1"},{"url":"http:///path"}]}]}`, []string{`app "a.test"`, "instances[1].url"}, caddylb.ErrMissingHost},
		{"unknown strategy", `{"handler":"load_balancer","apps":[{"host":"a.test","strategy":"fastest","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "a.test"`, "strategy", "fastest", "round_robin"}, caddylb.ErrUnknownStrategy},
		{"zero timeout", `{"handler":"load_balancer","apps":[{"host":"a.test","timeout":0,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "a.test"`, "timeout"}, caddylb.ErrInvalidDuration},
		{"negative cooldown", `{"handler":"load_balancer","apps":[{"host":"a.test","health_check_cooldown":"-5s","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "a.test"`, "health_check_cooldown"}, caddylb.ErrInvalidDuration},
		{"health_uri without slash", `{"handler":"load_balancer","apps":[{"host":"a.test","health_uri":"health","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "a.test"`, "health_uri"}, caddylb.ErrInvalidHealthURI},
		{"duplicate hosts", `{"handler":"load_balancer","apps":[{"host":"A.test","instances":[{"url":"127.0.0.1:1"}]},{"host":"a.test","instances":[{"url":"127.0.0.1:2"}]}]}`, []string{`app "a.test"`, "host"}, caddylb.ErrDuplicateHost},
		{"two catch-alls", `{"handler":"load_balancer","apps":[{"instances":[{"url":"127.0.0.1:1"}]},{"host":"*","instances":[{"url":"127.0.0.1:2"}]}]}`, []string{`app "*"`, "host"}, caddylb.ErrDuplicateHost},
		{"host with port", `{"handler":"load_balancer","apps":[{"host":"a.test:80","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "a.test:80"`, "host"}, caddylb.ErrInvalidHost},
		{"unparsable duration", `{"handler":"load_balancer","apps":[{"host":"a.test","timeout":"soon","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{"soon"}, nil},
		{"second handler bad after first started checks", `{"handler":"load_balancer","apps":[{"host":"ok.test","health_uri":"/health","instances":[{"url":"127.0.0.1:1"}]}]},{"handler":"load_balancer","apps":[{"host":"b.test","instances":[{"url":"gopher://h"}]}]}`, []string{`app "b.test"`, "instances[0].url", "scheme"}, nil},
		{"unknown field", `{"handler":"load_balancer","apps":[{"host":"a.test","weight":3,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{"weight"}, nil},
		{"negative weight", `{"handler":"load_balancer","apps":[{"host":"x","instances":[{"url":"127.0.0.1:1"},{"url":"127.0.0.1:2"},{"url":"127.0.0.1:3","weight":-1}]}]}`, []string{`app "x": instances[2].weight: invalid weight: want an integer from 0 to 1000000, got -1`}, caddylb.ErrInvalidWeight},
		{"weight too large", `{"handler":"load_balancer","apps":[{"host":"x","instances":[{"url":"127.0.0.1:1","weight":1000001}]}]}`, []string{`app "x": instances[0].weight`, "1000001"}, caddylb.ErrInvalidWeight},
		{"negative priority", `{"handler":"load_balancer","apps":[{"host":"shop.example.com","instances":[{"url":"127.0.0.1:1"},{"url":"127.0.0.1:2"},{"url":"127.0.0.1:3","priority":-1}]}]}`, []string{`app "shop.example.com": instances[2].priority: invalid priority: want an integer from 0 to 65535, got -1`}, caddylb.ErrInvalidPriority},
		{"priority too large", `{"handler":"load_balancer","apps":[{"host":"x","instances":[{"url":"127.0.0.1:1","priority":70000}]}]}`, []string{`app "x": instances[0].priority`, "70000"}, caddylb.ErrInvalidPriority},
		{"failover_threshold 0", `{"handler":"load_balancer","apps":[{"host":"x","failover_threshold":0,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": failover_threshold: invalid percentage: want 1 to 100, got 0`}, caddylb.ErrInvalidPercent},
		{"failover_threshold above 100", `{"handler":"load_balancer","apps":[{"host":"x","failover_threshold":150,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": failover_threshold: invalid percentage: want 1 to 100, got 150`}, caddylb.ErrInvalidPercent},
		{"hash_balance 1", `{"handler":"load_balancer","apps":[{"host":"x","strategy":"hash","hash_balance":1,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hash_balance: invalid option: want more than 1.0, got 1`}, caddylb.ErrInvalidOption},
		{"hash_balance without strategy hash", `{"handler":"load_balancer","apps":[{"host":"x","strategy":"p2c","hash_balance":1.25,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hash_balance: option does not apply: strategy p2c does not use it (only hash does)`}, caddylb.ErrInapplicableOption},
		{"hash_key without strategy hash", `{"handler":"load_balancer","apps":[{"host":"x","hash_key":"uri","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hash_key: option does not apply: strategy round_robin does not use it (only hash does)`}, caddylb.ErrInapplicableOption},
		{"bad hash_key", `{"handler":"load_balancer","apps":[{"host":"x","strategy":"hash","hash_key":"cookie:","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hash_key: invalid hash_key "cookie:"`}, caddylb.ErrInvalidHashKey},
		{"latency_decay without least_latency", `{"handler":"load_balancer","apps":[{"host":"x","strategy":"p2c","latency_decay":"1s","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": latency_decay: option does not apply`}, caddylb.ErrInapplicableOption},
		{"zero latency_decay", `{"handler":"load_balancer","apps":[{"host":"x","strategy":"least_latency","latency_decay":0,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": latency_decay: duration must be positive`}, caddylb.ErrInvalidDuration},
		{"health_grpc with health_uri", `{"handler":"load_balancer","apps":[{"host":"x","health_uri":"/h","health_grpc":{},"instances":[{"url":"h2c://127.0.0.1:1"}]}]}`, []string{`app "x": health_grpc: option does not apply: with health_uri`}, caddylb.ErrInapplicableOption},
		{"health_grpc with health_body", `{"handler":"load_balancer","apps":[{"host":"x","health_grpc":{"service":"s"},"health_body":"ok","instances":[{"url":"h2c://127.0.0.1:1"}]}]}`, []string{`app "x": health_body: option does not apply: it configures HTTP health checks`}, caddylb.ErrInapplicableOption},
		{"health_grpc to an HTTP/1.1 instance", `{"handler":"load_balancer","apps":[{"host":"x","health_grpc":{},"instances":[{"url":"h2c://127.0.0.1:1"},{"url":"http://127.0.0.1:2"}]}]}`, []string{`app "x": instances[1].url: option does not apply: health_grpc needs instances that speak HTTP/2`}, caddylb.ErrInapplicableOption},
		{"health_grpc to HTTP/1.1 dynamic instances", `{"handler":"load_balancer","apps":[{"host":"x","health_grpc":{},"dynamic_upstreams":{"source":"a","name":"svc.test","port":"80"}}]}`, []string{`app "x": dynamic_scheme: option does not apply: health_grpc needs`}, caddylb.ErrInapplicableOption},
		{"bad trust pool file", `{"handler":"load_balancer","apps":[{"host":"x","tls":{"root_ca_pem_files":["/nonexistent/ca.pem"]},"instances":[{"url":"https://127.0.0.1:1"}]}]}`, []string{`app "x": tls:`, "ca.pem"}, nil},
		{"max_queue without max_requests", `{"handler":"load_balancer","apps":[{"host":"x","max_queue":10,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": max_queue: option does not apply: requests queue for instances at max_requests, which is not set`}, caddylb.ErrInapplicableOption},
		{"queue_timeout without max_queue", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":4,"queue_timeout":"2s","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": queue_timeout: option does not apply`}, caddylb.ErrInapplicableOption},
		{"negative max_requests", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":-1,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": max_requests:`, "-1"}, nil},
		{"zero queue_timeout", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":4,"max_queue":4,"queue_timeout":0,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": queue_timeout: duration must be positive`}, caddylb.ErrInvalidDuration},
		{"retry_status without retries", `{"handler":"load_balancer","apps":[{"host":"x","retries":0,"retry_status":["503"],"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": retry_status: option does not apply: it retries, and retries is 0`}, caddylb.ErrInapplicableOption},
		{"bad retry_status", `{"handler":"load_balancer","apps":[{"host":"x","retry_status":["6xx"],"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": retry_status:`, "6xx"}, nil},
		{"max_requests_min without auto", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":8,"max_requests_min":2,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": max_requests_min: option does not apply: it bounds max_requests auto`}, caddylb.ErrInapplicableOption},
		{"max_requests_max below min", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":"auto","max_requests_min":8,"max_requests_max":4,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": max_requests_max:`, "at least max_requests_min (8), got 4"}, caddylb.ErrInvalidCount},
		{"max_requests neither number nor auto", `{"handler":"load_balancer","apps":[{"host":"x","max_requests":"fast","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{"max_requests", `want an integer or "auto"`}, nil},
		{"negative success_rate_stdev_factor", `{"handler":"load_balancer","apps":[{"host":"x","success_rate_stdev_factor":-1,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": success_rate_stdev_factor:`, "-1"}, caddylb.ErrInvalidCount},
		{"outlier_interval alone", `{"handler":"load_balancer","apps":[{"host":"x","outlier_interval":"5s","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": outlier_interval: option does not apply`}, caddylb.ErrInapplicableOption},
		{"failure_percent_threshold over 100", `{"handler":"load_balancer","apps":[{"host":"x","failure_percent_threshold":101,"instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": failure_percent_threshold:`, "101"}, caddylb.ErrInvalidCount},
		{"bad hedge_after", `{"handler":"load_balancer","apps":[{"host":"x","hedge_after":"p101","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hedge_after:`, "p101"}, caddylb.ErrInvalidDuration},
		{"hedge_after not a duration", `{"handler":"load_balancer","apps":[{"host":"x","hedge_after":"soon","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": hedge_after:`, "soon"}, caddylb.ErrInvalidDuration},
		{"bad sticky_cookie", `{"handler":"load_balancer","apps":[{"host":"x","sticky_cookie":"a;b","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": sticky_cookie: invalid cookie name "a;b"`}, caddylb.ErrInvalidCookieName},
		{"sticky_cookie_secret alone", `{"handler":"load_balancer","apps":[{"host":"x","sticky_cookie_secret":"s","instances":[{"url":"127.0.0.1:1"}]}]}`, []string{`app "x": sticky_cookie_secret: option does not apply`}, caddylb.ErrInapplicableOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urls := []string{b.URL, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"}
			before := checkers(urls...)
			cfg := fmt.Sprintf(`{"admin":{"listen":%q},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:%d"],"routes":[{"handle":[%s]}]}}}}}`,
				adminAddr, s.port, tt.json)
			err := caddyLoad([]byte(cfg))
			if err == nil {
				t.Fatal("bad config loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.is != nil {
				// Caddy's load error keeps the message but not the chain:
				// provision the handler alone to check the sentinel.
				first := tt.json
				var handlers []json.RawMessage
				if json.Unmarshal([]byte("["+tt.json+"]"), &handlers) == nil {
					first = string(handlers[0])
				}
				if _, err := provision(t, first); !errors.Is(err, tt.is) {
					t.Errorf("provisioning %s: error %v is not %v", tt.json, err, tt.is)
				}
			}
			if status, body := s.get("x.test", "/"); status != 200 || body != "good" {
				t.Fatalf("running config stopped serving: %d %q", status, body)
			}
			if after := checkers(urls...); after != before {
				t.Fatalf("before the failed load: %s; after: %s", before, after)
			}
		})
	}
}

// TestHealthProbeURL checks the probe goes to the instance URL's base path
// joined with health_uri, encoding and query kept, and that the instance
// counts as healthy only on 2xx (redirects are not followed).
func TestHealthProbeURL(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		wantHealthy bool
	}{
		{"2xx", 204, true},
		{"redirect", 302, false},
		{"5xx", 500, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probed := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case probed <- r.RequestURI:
				default:
				}
				if tt.status == 302 {
					http.Redirect(w, r, "/ok", tt.status)
					return
				}
				w.WriteHeader(tt.status)
			}))
			t.Cleanup(srv.Close)
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s/base/ {
		health_uri /status%%2Fall?full=1
		health_check_cooldown 1h
	}
}`, srv.URL))
			if got := recv(t, probed, "the probe"); got != "/base/status%2Fall?full=1" {
				t.Fatalf("probe asked for %q", got)
			}
			waitFor(t, "the check to be recorded", func() bool {
				return fetchReport(t).Apps[0].Instances[0].LastChecked != nil
			})
			if got := fetchReport(t).Apps[0].Instances[0].Healthy; got != tt.wantHealthy {
				t.Fatalf("healthy = %v, want %v", got, tt.wantHealthy)
			}
		})
	}
}

// TestReportOrderAcrossServers checks the order of load balancers of
// different Caddy servers, which Caddy provisions in random order (servers
// are a map): by server name, numbers as numbers (srv2 before srv10), and
// the same on every load.
func TestReportOrderAcrossServers(t *testing.T) {
	b := newBackend(t, "b")
	s := newSite(t)
	var body strings.Builder
	for i := range 12 {
		fmt.Fprintf(&body, "http://:%d {\n\tload_balancer {\n\t\tapp s%d.test {\n\t\t\tinstances %s\n\t\t}\n\t}\n}\n", freePort(), i, b.URL)
	}

	// The expected order, from the adapted config: each server's app.
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(adapt(t, s.caddyfile(body.String())), &cfg); err != nil {
		t.Fatal(err)
	}
	var names []string
	for name := range cfg.Apps.HTTP.Servers {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b)) // srvN names
	})
	var want []string
	for _, name := range names {
		host := regexp.MustCompile(`"host":"(s\d+\.test)"`).FindStringSubmatch(string(cfg.Apps.HTTP.Servers[name]))
		if host == nil {
			t.Fatalf("server %s has no app: %s", name, cfg.Apps.HTTP.Servers[name])
		}
		want = append(want, host[1])
	}

	for range 3 { // each load provisions the servers in a new random order
		s.load(body.String())
		var got []string
		for _, app := range fetchReport(t).Apps {
			got = append(got, app.Host)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("report order %v, want %v (servers %v)", got, want, names)
		}
	}
}
