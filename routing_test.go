package caddylb_test

import (
	"fmt"
	"strings"
	"testing"
)

func TestRoutingByHost(t *testing.T) {
	exact, wild, deep, any := newBackend(t, "exact"), newBackend(t, "wild"), newBackend(t, "deep"), newBackend(t, "any")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.example.com {
			instances %s
		}
		app *.example.com {
			instances %s
		}
		app *.b.example.com {
			instances %s
		}
		app * {
			instances %s
		}
	}
}`, exact.URL, wild.URL, deep.URL, any.URL))

	tests := []struct {
		host string
		want string
	}{
		{"api.example.com", "exact"},
		{"API.Example.COM", "exact"},
		{"api.example.com:8443", "exact"},
		{"api.example.com.", "exact"},
		{"web.example.com", "wild"},
		{"WEB.example.com:80", "wild"},
		{"x.b.example.com", "deep"},
		{"a.x.example.com", "any"}, // a wildcard stands for one label only
		{"example.com", "any"},
		{"other.test", "any"},
		{"127.0.0.1", "any"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			status, body := s.get(tt.host, "/")
			if status != 200 || body != tt.want {
				t.Errorf("Host %q: got %d %q, want 200 %q", tt.host, status, body, tt.want)
			}
		})
	}
}

func TestNoMatchingAppIs404ForHandleErrors(t *testing.T) {
	b := newBackend(t, "api")
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app api.example.com {
			instances %s
		}
	}
	handle_errors {
		respond "error {err.status_code}: {err.message}"
	}
}`, b.URL))

	status, body := s.get("nope.example.com", "/")
	if status != 404 || !strings.Contains(body, "error 404") || !strings.Contains(body, `no app for host "nope.example.com"`) {
		t.Fatalf("got %d %q, want 404 rendered by handle_errors naming the host", status, body)
	}
	if b.requests.Load() != 0 {
		t.Fatalf("backend got %d requests, want 0", b.requests.Load())
	}
}

func TestRoundRobinIsExactOverHealthyInstances(t *testing.T) {
	tests := []struct {
		name string
		down []int // indexes of instances whose health check fails
	}{
		{"all healthy", nil},
		{"first down", []int{0}},
		{"middle down", []int{1}},
		{"last down", []int{3}},
		{"two down", []int{0, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backends := make([]*backend, 4)
			urls := make([]string, 4)
			for i := range backends {
				backends[i] = newBackend(t, fmt.Sprintf("b%d", i))
				urls[i] = backends[i].URL
			}
			for _, i := range tt.down {
				backends[i].health.Store(503)
			}
			s := newSite(t)
			s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer %s {
		health_uri /health
		health_check_cooldown 1h
	}
}`, strings.Join(urls, " ")))
			for _, i := range tt.down {
				waitFor(t, "instance "+urls[i]+" to be reported unhealthy", func() bool {
					return !instanceOf(t, fetchReport(t), "", urls[i]).Healthy
				})
			}

			const k = 25
			healthy := len(backends) - len(tt.down)
			for range k * healthy {
				if status, body := s.get("any.test", "/"); status != 200 {
					t.Fatalf("got %d %q", status, body)
				}
			}
			for i, b := range backends {
				want := int64(k)
				if containsInt(tt.down, i) {
					want = 0
				}
				if got := b.requests.Load(); got != want {
					t.Errorf("%s served %d requests, want %d", b.name, got, want)
				}
			}
		})
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
