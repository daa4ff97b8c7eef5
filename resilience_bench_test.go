package caddylb_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
)

// BenchmarkFaults runs the fault-injection scenarios of the resilience
// tests against load_balancer and against Caddy's reverse_proxy configured
// as a new user would (the same backends, its defaults, a health_uri where
// the scenario has health checks), and reports how many requests failed
// per run: the numbers to compare, not a speed.
//
//	go test -run '^$' -bench Faults -benchtime 3x .
func BenchmarkFaults(b *testing.B) {
	scenarios := []struct {
		name string
		run  func(b *testing.B, handler func(urls ...string) string) int
	}{
		{"kill_one_of_three", faultKill},
		{"hung_backend", faultHang},
		{"reload_with_a_down_backend", faultReload},
	}
	handlers := []struct {
		name string
		// config returns the site's handler for the backends at urls,
		// with health checks if health is set.
		config func(health bool, urls ...string) string
	}{
		{"load_balancer", func(health bool, urls ...string) string {
			opts := "timeout 500ms"
			if health {
				opts += "\n\t\t\thealth_uri /health\n\t\t\thealth_check_cooldown 200ms"
			}
			return fmt.Sprintf("load_balancer {\n\t\tapp fault.test {\n\t\t\t%s\n\t\t\tinstances %s\n\t\t}\n\t}", opts, join(urls))
		}},
		{"reverse_proxy", func(health bool, urls ...string) string {
			opts := "transport http {\n\t\t\tresponse_header_timeout 500ms\n\t\t}"
			if health {
				opts += "\n\t\thealth_uri /health\n\t\thealth_interval 200ms"
			}
			return fmt.Sprintf("reverse_proxy %s {\n\t\t%s\n\t}", join(urls), opts)
		}},
	}
	for _, sc := range scenarios {
		for _, h := range handlers {
			b.Run(sc.name+"/"+h.name, func(b *testing.B) {
				failed := 0
				for range b.N {
					failed += sc.run(b, func(urls ...string) string {
						return h.config(sc.name == "reload_with_a_down_backend", urls...)
					})
				}
				b.ReportMetric(float64(failed)/float64(b.N), "failed/op")
			})
		}
	}
}

func join(urls []string) string {
	s := ""
	for i, u := range urls {
		if i > 0 {
			s += " "
		}
		s += u
	}
	return s
}

// faultKill: 4 clients send 1,500 GETs each; one of three backends is
// killed after 600 answers.
func faultKill(b *testing.B, handler func(urls ...string) string) int {
	b1, b2, b3 := newBackend(b, "b1"), newBackend(b, "b2"), newBackend(b, "b3")
	s := newSite(b)
	s.load(fmt.Sprintf("http://:{port} {\n\t%s\n}", handler(b1.URL, b2.URL, b3.URL)))
	var once sync.Once
	lr := runLoad(s, load{host: "fault.test", workers: 4, perWorker: 1500, progress: func(answered int64) {
		if answered == 600 {
			once.Do(func() { kill(b3) })
		}
	}})
	return len(lr.failed) + lr.resets
}

// faultHang: 100 sequential GETs, one of two backends never answers.
func faultHang(b *testing.B, handler func(urls ...string) string) int {
	good, hung := newBackend(b, "good"), newBackend(b, "hung")
	hang(hung)
	s := newSite(b)
	s.load(fmt.Sprintf("http://:{port} {\n\t%s\n}", handler(good.URL, hung.URL)))
	failed := 0
	for range 100 {
		if status, _ := s.get("fault.test", "/"); status != http.StatusOK {
			failed++
		}
	}
	return failed
}

// faultReload: one of two backends is down (its health check fails, and
// it answers 503); once it is found unhealthy, 10 reloads each followed
// by 20 GETs.
func faultReload(b *testing.B, handler func(urls ...string) string) int {
	good, down := newBackend(b, "good"), newBackend(b, "down")
	down.health.Store(503)
	down.handle(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	s := newSite(b)
	cfg := func(i int) string {
		return fmt.Sprintf("http://:{port} {\n\theader X-Config %d\n\t%s\n}", i, handler(good.URL, down.URL))
	}
	s.load(cfg(0))
	waitFor(b, "two health checks of the down backend", func() bool { return down.probes.Load() >= 2 })
	failed := 0
	for i := 1; i <= 10; i++ {
		s.load(cfg(i))
		for range 20 {
			if status, _ := s.get("fault.test", "/"); status != http.StatusOK {
				failed++
			}
		}
	}
	return failed
}
