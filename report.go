package caddylb

import (
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/report"
)

// ReportApps implements report.Source.
func (h *Handler) ReportApps() []report.App {
	apps := make([]report.App, 0, len(h.Apps))
	now := backend.Now()
	for _, app := range h.Apps {
		ra := report.App{Host: app.Host, Pool: app.Name, Strategy: app.strategyName, Panic: app.pool.Panicking(), ActiveTier: app.pool.ActiveTier()}
		ra.Split, ra.Mirror = app.reportTraffic()
		if source, n, updated, lastError, ok := app.dynamicReport(); ok {
			ra.Dynamic = &report.Dynamic{Source: source, Instances: n, LastError: lastError}
			if !updated.IsZero() {
				u := updated.UTC()
				ra.Dynamic.Updated = &u
			}
		}
		if app.limits.on() {
			queued, rejected := app.queued(), app.overload.rejected.Load()
			ra.Queued, ra.Rejected = &queued, &rejected
		}
		if app.hedge.on {
			d := ms(app.hedgeDelay())
			ra.HedgeDelayMs = &d
		}
		if app.outliers.on {
			sweeps := app.pool.Sweeps()
			ra.OutlierSweeps = &sweeps
		}
		m := app.members.Load()
		all, priorities := app.pool.Members()
		for i, in := range all {
			ri := reportInstance(in, now)
			ri.Priority = priorities[i]
			if app.limits.on() {
				ri.MaxRequests = in.Limit(app.limits.of(in))
			}
			ri.Source = "config"
			t := m.targets[in]
			if t != nil && t.dynamic {
				ri.Source = "dynamic"
			}
			reportFleet(&ri, t)
			ra.Instances = append(ra.Instances, ri)
		}
		apps = append(apps, ra)
	}
	return apps
}

// reportInstance describes in for the report.
func reportInstance(in *backend.Instance, now int64) report.Instance {
	st := in.Status()
	ri := report.Instance{
		URL:                 st.URL,
		State:               string(st.State),
		Reason:              st.Reason,
		Healthy:             st.Healthy,
		ActiveConnections:   st.InFlight,
		TotalRequests:       st.TotalRequests,
		Failures:            st.Failures,
		LastError:           st.LastError,
		ConsecutivePasses:   st.ConsecutivePasses,
		ConsecutiveFails:    st.ConsecutiveFails,
		ConsecutiveFailures: st.PassiveFails,
		Weight:              st.Weight,
		EffectiveWeight:     st.EffectiveWeight,
	}
	since := st.Since.UTC()
	ri.Since = &since
	setRecent(&ri, in.Recent(now))
	if !st.LastChecked.IsZero() {
		t := st.LastChecked.UTC()
		ri.LastChecked = &t
	}
	if !st.EjectedUntil.IsZero() {
		t := st.EjectedUntil.UTC()
		ri.EjectedUntil = &t
	}
	return ri
}

// setRecent fills in the report's last-minute figures of an instance.
func setRecent(ri *report.Instance, rec backend.Recent) {
	rate := float64(rec.Requests) / backend.WindowSeconds
	ri.RequestRate = &rate
	var errorRate float64
	if rec.Requests > 0 {
		errorRate = float64(rec.Errors) / float64(rec.Requests)
	}
	ri.ErrorRate = &errorRate
	if rec.Latencies > 0 {
		p50, p99 := ms(rec.P50), ms(rec.P99)
		ri.LatencyP50Ms, ri.LatencyP99Ms = &p50, &p99
	}
}

// ms returns d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

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
		if app.pattern != pattern && (!app.isPool() || app.Name != host) {
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
