package caddylb_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golb/caddy-lb/report"
)

// healthOptionsSite loads one app, opts.test, that checks instance with
// health_uri uri every 50ms and the given extra options.
func healthOptionsSite(t *testing.T, instance, uri, opts string) *site {
	t.Helper()
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app opts.test {
			health_uri %s
			health_check_cooldown 50ms
			%s
			instances %s
		}
	}
}`, uri, opts, instance))
	return s
}

// TestActiveCheckOptions checks what each option of the active health
// checks changes in the verdict of a check: the statuses and body that
// pass, the method, headers and port of the probe, redirects never
// followed, and the streaks (health_fails, health_passes) that change an
// instance's health.
func TestActiveCheckOptions(t *testing.T) {
	// Each row starts its instance (and any other server it needs) and
	// returns the instance's URL, the app's health_uri and options, and a
	// check to run once the verdict is in (nil: none).
	type setupFunc func(t *testing.T) (instance, uri, opts string, after func(t *testing.T))

	// redirecting returns an instance whose /hc redirects to target's
	// /health with a 302.
	redirecting := func(t *testing.T, target *backend) *backend {
		b := newBackend(t, "redirect")
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/health", http.StatusFound)
		})
		return b
	}
	// neverProbed checks that the redirect's target saw no request.
	neverProbed := func(target *backend) func(t *testing.T) {
		return func(t *testing.T) {
			if n, m := target.probes.Load(), target.requests.Load(); n != 0 || m != 0 {
				t.Errorf("redirect target got %d probes and %d other requests, want none: redirects must not be followed", n, m)
			}
		}
	}
	// answering returns an instance whose /hc answers with h.
	answering := func(t *testing.T, h http.HandlerFunc) *backend {
		b := newBackend(t, "instance")
		b.handle(h)
		return b
	}
	body := func(text string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, text) }
	}
	headOnly := func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodHead {
			w.Header().Set("Allow", http.MethodHead)
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}
	tokenChecked := func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "health.internal" || r.Header.Get("X-Token") != "s3cret" {
			w.WriteHeader(http.StatusForbidden)
		}
	}
	const tokenHeaders = `health_headers {
				Host health.internal
				X-Token s3cret
			}`

	tests := []struct {
		name   string
		setup  setupFunc
		want   string // the state once checked
		reason string // in the report's reason, if unhealthy
	}{
		{"health_status 204, answers 204", func(t *testing.T) (string, string, string, func(*testing.T)) {
			b := newBackend(t, "b")
			b.health.Store(http.StatusNoContent)
			return b.URL, "/health", "health_status 204", nil
		}, "healthy", ""},
		{"health_status 204, answers 200", func(t *testing.T) (string, string, string, func(*testing.T)) {
			b := newBackend(t, "b")
			return b.URL, "/health", "health_status 204", nil
		}, "unhealthy", "status 200"},
		{"default 2xx, answers a 302 redirect", func(t *testing.T) (string, string, string, func(*testing.T)) {
			target := newBackend(t, "target")
			return redirecting(t, target).URL, "/hc", "", neverProbed(target)
		}, "unhealthy", "status 302"},
		{"health_status 302, answers a 302 redirect", func(t *testing.T) (string, string, string, func(*testing.T)) {
			target := newBackend(t, "target")
			return redirecting(t, target).URL, "/hc", "health_status 302", neverProbed(target)
		}, "healthy", ""},
		{"health_body ^up$, body up", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, body("up")).URL, "/hc", "health_body ^up$", nil
		}, "healthy", ""},
		{"health_body ^up$, body down", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, body("down")).URL, "/hc", "health_body ^up$", nil
		}, "unhealthy", "body does not match"},
		{"health_method HEAD, HEAD only", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, headOnly).URL, "/hc", "health_method HEAD", nil
		}, "healthy", ""},
		{"default GET, HEAD only", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, headOnly).URL, "/hc", "", nil
		}, "unhealthy", "status 405"},
		{"health_headers Host and X-Token", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, tokenChecked).URL, "/hc", tokenHeaders, nil
		}, "healthy", ""},
		{"no health_headers, token required", func(t *testing.T) (string, string, string, func(*testing.T)) {
			return answering(t, tokenChecked).URL, "/hc", "", nil
		}, "unhealthy", "status 403"},
		{"health_port", func(t *testing.T) (string, string, string, func(*testing.T)) {
			in := newBackend(t, "instance")
			in.health.Store(http.StatusInternalServerError)
			side := newBackend(t, "side")
			u, err := url.Parse(side.URL)
			if err != nil {
				t.Fatal(err)
			}
			return in.URL, "/health", "health_port " + u.Port(), func(t *testing.T) {
				if n := in.probes.Load(); n != 0 {
					t.Errorf("the instance's own port got %d probes, want none", n)
				}
				if side.probes.Load() == 0 {
					t.Errorf("the health port got no probe")
				}
			}
		}, "healthy", ""},
		{"no health_port", func(t *testing.T) (string, string, string, func(*testing.T)) {
			in := newBackend(t, "instance")
			in.health.Store(http.StatusInternalServerError)
			return in.URL, "/health", "", nil
		}, "unhealthy", "status 500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			instance, uri, opts, after := tt.setup(t)
			healthOptionsSite(t, instance, uri, opts)
			// Three checks with the same verdict: the state it leads to
			// is in, and a redirect had three chances to be followed.
			var in report.Instance
			waitFor(t, "three checks", func() bool {
				in = instanceOf(t, fetchReport(t), "opts.test", instance)
				return in.ConsecutivePasses >= 3 || in.ConsecutiveFails >= 3
			})
			if in.State != tt.want {
				t.Fatalf("state %q (reason %q, last error %q), want %q", in.State, in.Reason, in.LastError, tt.want)
			}
			if tt.reason != "" && !strings.Contains(in.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", in.Reason, tt.reason)
			}
			if after != nil {
				after(t)
			}
		})
	}
}

// TestActiveCheckStreaks checks health_fails and health_passes (HAProxy's
// fall and rise): the state changes only once the streak of failing or
// passing checks is long enough. The test answers each probe itself, one
// at a time, so it knows the state after every check.
func TestActiveCheckOptionsStreaks(t *testing.T) {
	type step struct {
		status        int    // the probe's answer
		fails, passes int    // the streaks after it
		state         string // the state after it
	}
	tests := []struct {
		name  string
		opts  string
		steps []step
	}{
		{"health_fails 3", "health_fails 3", []step{
			{500, 1, 0, "healthy"},
			{500, 2, 0, "healthy"},
			{500, 3, 0, "unhealthy"},
			{500, 4, 0, "unhealthy"},
		}},
		{"health_fails 3, streak broken", "health_fails 3", []step{
			{500, 1, 0, "healthy"},
			{500, 2, 0, "healthy"},
			{200, 0, 1, "healthy"},
			{500, 1, 0, "healthy"},
		}},
		{"health_passes 2", "health_passes 2", []step{
			{500, 1, 0, "unhealthy"},
			{200, 0, 1, "unhealthy"},
			{200, 0, 2, "healthy"},
		}},
		{"health_passes 2, streak broken", "health_passes 2", []step{
			{500, 1, 0, "unhealthy"},
			{200, 0, 1, "unhealthy"},
			{500, 1, 0, "unhealthy"},
			{200, 0, 1, "unhealthy"},
			{200, 0, 2, "healthy"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answers := make(chan int)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case code := <-answers:
					w.WriteHeader(code)
				case <-r.Context().Done(): // the check was stopped
				}
			}))
			t.Cleanup(srv.Close)
			healthOptionsSite(t, srv.URL, "/health", tt.opts)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i, st := range tt.steps {
				select {
				case answers <- st.status:
				case <-ctx.Done():
					t.Fatalf("step %d: no probe came", i+1)
				}
				// The next probe waits for the next answer: the state
				// cannot change until then.
				var in report.Instance
				waitFor(t, fmt.Sprintf("step %d recorded", i+1), func() bool {
					in = instanceOf(t, fetchReport(t), "opts.test", srv.URL)
					return in.ConsecutiveFails == st.fails && in.ConsecutivePasses == st.passes
				})
				if in.State != st.state {
					t.Fatalf("step %d (answer %d, fails %d, passes %d): state %q (reason %q), want %q",
						i+1, st.status, in.ConsecutiveFails, in.ConsecutivePasses, in.State, in.Reason, st.state)
				}
			}
		})
	}
}
