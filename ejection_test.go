package caddylb_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/golb/caddy-lb/report"
)

// appOf returns the report entry of the app of host.
func appOf(t testing.TB, rep report.Report, host string) report.App {
	t.Helper()
	return reportEntry(t, rep, fmt.Sprintf("app %q", host), func(app report.App) bool { return app.Host == host })
}

// reportEntry returns the report's entry for which is returns true; what
// names it in the failure if there is none.
func reportEntry(t testing.TB, rep report.Report, what string, is func(report.App) bool) report.App {
	t.Helper()
	for _, app := range rep.Apps {
		if is(app) {
			return app
		}
	}
	t.Fatalf("report has no %s: %+v", what, rep)
	return report.App{}
}

// TestMaxEjectedPercent checks that passive checks eject at most
// max_ejected_percent of an app's instances (at least one): failing
// instances beyond it stay in and keep getting requests.
func TestMaxEjectedPercent(t *testing.T) {
	tests := []struct {
		name        string
		option      string
		wantEjected int
	}{
		{"50 percent", "max_ejected_percent 50", 2},
		{"default (50)", "", 2},
		{"0 percent: still one", "max_ejected_percent 0", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := newBackend(t, "good")
			var failing []*backend
			for i := range 3 {
				b := newBackend(t, fmt.Sprintf("bad%d", i))
				b.handle(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusInternalServerError)
				})
				failing = append(failing, b)
			}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app ej.test {
			unhealthy_status 5xx
			max_fails 1
			retries 0
			fail_duration 1m
			%s
			instances %s %s %s %s
		}
	}
}`, tt.option, good.URL, failing[0].URL, failing[1].URL, failing[2].URL))

			// ejected returns the failing instances ejected and those
			// still in.
			ejected := func() (out, in []*backend, rep report.Report) {
				rep = fetchReport(t)
				for _, b := range failing {
					if instanceOf(t, rep, "ej.test", b.URL).State == "ejected" {
						out = append(out, b)
					} else {
						in = append(in, b)
					}
				}
				return out, in, rep
			}

			// Each failing instance is ejected by its first failure,
			// while there is room.
			out, _, _ := ejected()
			for i := 0; i < 40 && len(out) < tt.wantEjected; i++ {
				s.status("ej.test", "/")
				out, _, _ = ejected()
			}
			if len(out) != tt.wantEjected {
				t.Fatalf("%d instances ejected, want %d", len(out), tt.wantEjected)
			}
			_, stayed, _ := ejected()
			before := make([]int64, len(stayed))
			for i, b := range stayed {
				before[i] = b.requests.Load()
			}

			// Beyond the limit, the failing ones stay in.
			codes := map[int]int{}
			for i := 0; i < 12; i++ {
				codes[s.status("ej.test", "/")]++
			}
			out, in, rep := ejected()
			if len(out) != tt.wantEjected {
				t.Fatalf("after more failures: %d instances ejected, want still %d", len(out), tt.wantEjected)
			}
			for i, b := range in {
				ri := instanceOf(t, rep, "ej.test", b.URL)
				if ri.State != "healthy" || ri.ConsecutiveFailures == 0 {
					t.Errorf("%s: state %q, consecutive_failures %d; want healthy with failures counted (reason %q)",
						b.name, ri.State, ri.ConsecutiveFailures, ri.Reason)
				}
				if got := b.requests.Load() - before[i]; got == 0 {
					t.Errorf("%s: no request since the limit was reached, want some", b.name)
				}
			}
			if st := instanceOf(t, rep, "ej.test", good.URL).State; st != "healthy" {
				t.Errorf("good instance: state %q, want healthy", st)
			}
			if codes[http.StatusOK] == 0 || codes[http.StatusInternalServerError] == 0 {
				t.Errorf("statuses %v: want both the good instance's 200s and the failing ones' 500s", codes)
			}
		})
	}
}

// TestPanicThreshold checks panic_threshold: with too few instances
// passing their health checks, requests are balanced over all of them and
// the report says the app panics; without it, only the healthy one gets
// requests.
func TestPanicThreshold(t *testing.T) {
	tests := []struct {
		name      string
		option    string
		wantPanic bool
	}{
		{"panic_threshold 50", "panic_threshold 50", true},
		{"no panic_threshold", "", false},
		// One of three available is 33%: not below 30.
		{"panic_threshold 30", "panic_threshold 30", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, sick1, sick2 := newBackend(t, "ok"), newBackend(t, "sick1"), newBackend(t, "sick2")
			sick1.health.Store(http.StatusServiceUnavailable)
			sick2.health.Store(http.StatusServiceUnavailable)
			all := []*backend{ok, sick1, sick2}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app panic.test {
			health_uri /health
			health_check_cooldown 50ms
			%s
			instances %s %s %s
		}
	}
}`, tt.option, ok.URL, sick1.URL, sick2.URL))
			waitFor(t, "the sick instances to fail their checks", func() bool {
				rep := fetchReport(t)
				return instanceOf(t, rep, "panic.test", sick1.URL).State == "unhealthy" &&
					instanceOf(t, rep, "panic.test", sick2.URL).State == "unhealthy" &&
					instanceOf(t, rep, "panic.test", ok.URL).ConsecutivePasses > 0
			})
			if got := appOf(t, fetchReport(t), "panic.test").Panic; got != tt.wantPanic {
				t.Fatalf("report: panic = %v, want %v", got, tt.wantPanic)
			}

			for i := 0; i < 30; i++ {
				if code := s.status("panic.test", "/"); code != http.StatusOK {
					t.Fatalf("request %d: status %d, want 200", i+1, code)
				}
			}
			counts := map[string]int64{}
			for _, b := range all {
				counts[b.name] = b.requests.Load()
			}
			if tt.wantPanic {
				for _, b := range all {
					if counts[b.name] == 0 {
						t.Errorf("in panic, %s got no request: %v", b.name, counts)
					}
				}
			} else if counts["ok"] != 30 || counts["sick1"] != 0 || counts["sick2"] != 0 {
				t.Errorf("requests %v, want all 30 on ok", counts)
			}
			if got := appOf(t, fetchReport(t), "panic.test").Panic; got != tt.wantPanic {
				t.Errorf("report after the requests: panic = %v, want %v", got, tt.wantPanic)
			}
		})
	}
}

// TestRetryBudget checks that retries stay within retry_budget_percent of
// the requests (above a floor of 10 per 10 seconds): 100 requests that fail
// on every instance would make 200 retries without a budget.
func TestRetryBudget(t *testing.T) {
	// Retries are allowed while fewer than max(10, requests × percent / 100)
	// were made in the window: the first 5 requests retry twice (the
	// floor), then one retry each time the budget grows by one.
	// The requests are sequential and take well under the 10 s window, so
	// the counts are exact.
	tests := []struct {
		name   string
		option string
		want   float64
	}{
		{"default (20 percent)", "", 20},
		{"retry_budget_percent 100", "retry_budget_percent 100", 100},
		{"retry_budget_percent 0", "retry_budget_percent 0", 10}, // the floor
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := fmt.Sprintf("budget%d.test", i)
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app %s {
			max_fails 0
			%s
			instances %s %s %s
		}
	}
}`, host, tt.option, closedURL(), closedURL(), closedURL()))
			const requests = 100
			for i := 0; i < requests; i++ {
				if code := s.status(host, "/"); code != http.StatusBadGateway {
					t.Fatalf("request %d: status %d, want 502", i+1, code)
				}
			}
			vals := find(scrape(t), "caddy_load_balancer_retries_total", "app", host)
			if len(vals) != 3 {
				t.Fatalf("%d retries_total series for %s, want 3", len(vals), host)
			}
			var retries float64
			for _, v := range vals {
				retries += v
			}
			t.Logf("%v retries for %d requests", retries, requests)
			if retries != tt.want {
				t.Errorf("%v retries for %d requests, want %v (without a budget: %d)", retries, requests, tt.want, 2*requests)
			}
		})
	}
}

// TestTryDuration checks that try_duration stops retries: once it has
// passed, a failed request is not retried on another instance.
func TestTryDuration(t *testing.T) {
	tests := []struct {
		name     string
		option   string
		want     int
		wantGood int64 // requests the good instance got
	}{
		{"try_duration 1ns", "try_duration 1ns", http.StatusBadGateway, 0},
		{"no try_duration", "", http.StatusOK, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := newBackend(t, "good")
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app try.test {
			strategy first
			%s
			instances %s %s
		}
	}
}`, tt.option, closedURL(), good.URL))
			if code := s.status("try.test", "/"); code != tt.want {
				t.Errorf("status %d, want %d", code, tt.want)
			}
			if got := good.requests.Load(); got != tt.wantGood {
				t.Errorf("good instance got %d requests, want %d", got, tt.wantGood)
			}
		})
	}
}
