package caddylb

import (
	"fmt"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/report"
)

func init() {
	report.SetDrainer(drainInstance)
}

// drainInstance drains (drain true) or undrains the instance url of the
// app that serves host, in every load balancer of the running config that
// has it. host is an app's host as configured ("*" or "" for the
// catch-all); url is the instance's URL as the report shows it, or as
// configured. The drain flag lives in the instance's state, so it
// survives reloads that keep the instance.
func drainInstance(host, rawURL string, drain bool) error {
	pattern, err := normalizeAppHost(host)
	if err != nil {
		return fmt.Errorf("%w: app host %q: %v", report.ErrUnknownInstance, host, err)
	}
	var want string
	if u, err := parseInstanceURL(rawURL); err == nil {
		want = u.String()
	}
	foundApp, found := false, false
	now := backend.Now()
	for _, src := range report.Running() {
		h, ok := src.(*Handler)
		if !ok {
			continue
		}
		for _, app := range h.Apps {
			if app.pattern != pattern {
				continue
			}
			foundApp = true
			for _, in := range app.pool.All() {
				if in.String() == rawURL || in.URL().String() == want {
					found = true
					in.SetDraining(drain, now)
				}
			}
		}
	}
	switch {
	case !foundApp:
		return fmt.Errorf("%w: no app serves host %q", report.ErrUnknownInstance, host)
	case !found:
		return fmt.Errorf("%w: app %q has no instance %q", report.ErrUnknownInstance, host, rawURL)
	}
	return nil
}
