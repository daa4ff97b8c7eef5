package caddylb

import (
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/fleet"
	"github.com/golb/caddy-lb/report"
)

// Fleet health: when the config has a load_balancer_fleet app, every app
// with active health checks shares them with the other members of the
// fleet (see package fleet): each instance is probed by a few members,
// and the others follow their verdicts. Probes then name this node in
// health.NodeHeader.

// loadFleet returns the fleet app of ctx's config (nil if it has none)
// and names this node in the probes of the handler's apps.
func (h *Handler) loadFleet(ctx caddy.Context) error {
	fl, err := fleet.Of(ctx)
	if err != nil || fl == nil {
		return err
	}
	for _, app := range h.Apps {
		app.fleet = fl
		if app.health != nil {
			spec := *app.health
			spec.Node = fl.NodeName()
			app.health = &spec
		}
	}
	return nil
}

// fleetSession returns the membership the app's checks are shared
// through, nil for none: no fleet, or no active checks.
func (a *App) fleetSession() *fleet.Session {
	if a.fleet == nil || a.health == nil {
		return nil
	}
	return a.fleet.Session()
}

// shareChecks makes the instance's checks shared through session (nil:
// probed here every round, as without a fleet), each interval, for app.
func (s *sharedInstance) shareChecks(session *fleet.Session, app string, interval time.Duration) {
	if s.monitor == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fleet != nil && s.fleet.Session() == session {
		s.fleet.SetInterval(interval)
		return
	}
	s.unshareLocked()
	if session == nil {
		return
	}
	s.fleet = session.Track(s.key, s.in, app, s.in.String(), interval)
	s.monitor.Share(s.fleet)
}

// unshareLocked ends the sharing of the instance's checks, if they were:
// it is probed here again, its own checks alone saying whether it is in.
func (s *sharedInstance) unshareLocked() {
	if s.fleet == nil {
		return
	}
	s.monitor.Share(nil)
	s.fleet.Release()
	s.fleet = nil
	s.in.SetFleetDown(false, "", backend.Now())
}

// reportFleet adds to ri who checks the instance of t, in a fleet.
func reportFleet(ri *report.Instance, t *target) {
	if t == nil {
		return
	}
	t.shared.mu.Lock()
	e := t.shared.fleet
	t.shared.mu.Unlock()
	if e == nil {
		return
	}
	st := e.Status()
	rf := &report.InstanceFleet{Probers: st.Probers, Prober: st.Prober, ProbedHere: st.ProbedHere, VerdictBy: st.VerdictBy}
	if rf.Probers == nil {
		rf.Probers = []string{}
	}
	if !st.VerdictAt.IsZero() {
		at := st.VerdictAt.UTC()
		rf.VerdictAt = &at
	}
	if !st.Confirmed.IsZero() {
		c := st.Confirmed.UTC()
		rf.Confirmed = &c
	}
	ri.Fleet = rf
}
