package caddylb

import (
	"github.com/golb/caddy-lb/backend"
)

// Drain implements report.Source: it drains (drain true) or undrains the
// instance rawURL of the app that serves host, and returns the number of
// apps of that host (0 or 1) and of instances changed. host is an app's
// host as configured ("*" or "" for the catch-all); rawURL is the
// instance's URL as the report shows it, or as configured. The drain flag
// lives in the instance's state, so it survives reloads that keep the
// instance.
func (h *Handler) Drain(host, rawURL string, drain bool) (apps, instances int) {
	pattern, err := normalizeAppHost(host)
	if err != nil {
		return 0, 0
	}
	var want string
	if u, err := parseInstanceURL(rawURL); err == nil {
		want = u.String()
	}
	now := backend.Now()
	for _, app := range h.Apps {
		if app.pattern != pattern {
			continue
		}
		apps++
		for _, in := range app.pool.All() {
			if in.String() == rawURL || in.URL().String() == want {
				instances++
				in.SetDraining(drain, now)
			}
		}
	}
	return apps, instances
}
