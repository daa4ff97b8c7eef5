package caddylb

import (
	"encoding/base64"
	"net/url"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/fleet"
	"github.com/golb/caddy-lb/health"
	"github.com/golb/caddy-lb/internal/running"
)

// instanceStates holds the live state of every instance of every loaded
// config, keyed by app host, instance URL and health check settings, so
// that a reload that keeps an instance keeps its state: its health and
// streaks, ejection, drain, requests in flight and totals, and its one
// health check schedule. Two apps with the same backend keep apart
// (different hosts), and so do two checks of it that mean different
// things (different health settings).
var instanceStates = caddy.NewUsagePool()

// sharedInstance is an instance's live state, and its health monitor if
// its app checks it actively. Both outlive the configs that use them but
// the last one.
type sharedInstance struct {
	key     string // in instanceStates
	in      *backend.Instance
	monitor *health.Monitor

	mu        sync.Mutex
	listeners []listener   // of the configs using the instance, oldest first
	fleet     *fleet.Entry // its checks shared with a fleet; nil if not (see fleet.go)
}

// listener is how a config logs and emits the changes of an instance's
// state.
type listener struct {
	config <-chan struct{} // the config's Done channel
	notify func(backend.Change)
}

// notify hands c to the config in charge: the running one if it uses the
// instance, or else the newest still loaded (the instance is new, and its
// config is about to run). A change may come at any time, from a request
// of a config being unloaded as well as from a health check.
func (s *sharedInstance) notify(c backend.Change) {
	running := running.Config()
	s.mu.Lock()
	var f func(backend.Change)
	for i := len(s.listeners) - 1; i >= 0; i-- {
		r := s.listeners[i]
		if r.config == running {
			f = r.notify
			break
		}
		if f == nil && !isDone(r.config) {
			f = r.notify
		}
	}
	s.mu.Unlock()
	if f != nil {
		f(c)
	}
}

func (s *sharedInstance) addListener(config <-chan struct{}, f func(backend.Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, listener{config, f})
}

func (s *sharedInstance) removeListener(config <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = slices.DeleteFunc(s.listeners, func(r listener) bool { return r.config == config })
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Destruct stops the instance's health checks and timers: no config uses
// it any more.
func (s *sharedInstance) Destruct() error {
	if s.monitor != nil {
		s.monitor.Stop()
	}
	s.mu.Lock()
	if s.fleet != nil {
		s.fleet.Release()
		s.fleet = nil
	}
	s.mu.Unlock()
	s.in.Close()
	return nil
}

// members are an app's instances at one time, with what serving each
// takes. They are replaced whole when they change (a discovered instance
// comes or goes), so that the request path reads them with one atomic load.
type members struct {
	targets map[*backend.Instance]*target
	pinned  map[string]*backend.Instance // by sticky cookie value; nil without sticky_cookie
}

// attach takes the app's configured instances from instanceStates, making
// those new to it, and builds what proxying to them takes. Every key taken
// is released by release, also when Provision fails later. The changes of
// state of its instances are reported with onChange while this config is
// in charge of them (see sharedInstance.notify), and the changes of its
// active tier with onTierChange; config is its Done channel.
func (a *App) attach(logger *zap.Logger, config <-chan struct{}, onChange func(backend.Change), onTierChange func(from, to int)) {
	a.config, a.onChange, a.logger = config, onChange, logger
	if a.limits.queue > 0 {
		a.overload.queue = &requestQueue{max: a.limits.queue, timeout: a.limits.queueTimeout}
	}
	a.dial = dialer(a.timeout).DialContext
	if a.dynamic != nil {
		a.dial = a.dynamic.resolver.DialContext
	}
	a.transport = newTransport(a.timeout, a.dial, a.tlsConfig)
	if a.StickyCookie != "" {
		a.sticky = newStickyCookie(a.StickyCookie, a.StickyCookieSecret, a.name)
	}
	// The pool exists, set up, before any listener of an instance does:
	// a change of an instance's state reaches onChange, which reads it.
	a.pool = backend.NewPool()
	a.pool.SetPanicThreshold(a.panic)
	a.pool.SetFailoverThreshold(a.failover)
	a.pool.SetOnTierChange(onTierChange)
	m := &members{targets: make(map[*backend.Instance]*target, len(a.urls))}
	instances := make([]*backend.Instance, 0, len(a.urls))
	for i, u := range a.urls {
		t := a.newTarget(u, a.weights[i], false)
		t.priority = a.priorities[i]
		m.targets[t.in] = t
		instances = append(instances, t.in)
	}
	a.static = instances
	a.pool.SetMembers(instances, a.priorities)
	a.budget.percent = a.retry.budget
	a.setMembers(m)
}

// newTarget takes the state of the instance at u (with weight, if it is
// new) from instanceStates and returns what proxying to it takes.
func (a *App) newTarget(u *url.URL, weight int, dynamic bool) *target {
	key := a.pattern + "\x00" + u.String() + "\x00" + a.healthKey
	v, _, _ := instanceStates.LoadOrNew(key, func() (caddy.Destructor, error) {
		policy := &a.passive
		if dynamic && a.health != nil {
			// A discovered instance gets traffic after its first passing
			// check: new pods are often not ready yet.
			p := a.passive
			p.InitiallyUnhealthy = true
			policy = &p
		}
		s := &sharedInstance{key: key, in: backend.New(u, weight, policy, backend.Now())}
		s.in.SetOnChange(s.notify)
		if a.health != nil {
			s.monitor = health.NewMonitor(s.in, a.healthTarget(u))
		}
		return s, nil
	})
	s := v.(*sharedInstance)
	s.addListener(a.config, a.onChange)
	t := &target{shared: s, in: s.in, weight: weight, dynamic: dynamic, url: u, auth: basicAuth(u.User), rt: a.transport,
		logField: accessLogField(a.name, s.in)}
	if u.Scheme == "h2c" {
		t.h2c = newH2CTransport(a.timeout, a.dial)
		t.rt = t.h2c
	}
	if a.sticky != nil {
		t.cookieValue = a.sticky.value(s.in)
		t.cookie, t.secureCookie = a.sticky.setCookie(t.cookieValue)
	}
	return t
}

// basicAuth returns the Authorization header that sends userinfo as basic
// auth, or nil for none.
func basicAuth(userinfo *url.Userinfo) []string {
	if userinfo == nil {
		return nil
	}
	pass, _ := userinfo.Password()
	return []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(userinfo.Username()+":"+pass))}
}

// setMembers makes m the app's members, with its sticky cookie index.
func (a *App) setMembers(m *members) {
	if a.sticky != nil {
		m.pinned = make(map[string]*backend.Instance, len(m.targets))
		for in, t := range m.targets {
			m.pinned[t.cookieValue] = in
		}
	}
	a.members.Store(m)
}

// adopt applies the app's settings to its instances at now and starts their
// health checks; instances new to an app that served before this config
// ramp up (slow start).
func (a *App) adopt(now int64, logger *zap.Logger) {
	if a.dynamic != nil {
		a.dynamic.mu.Lock()
		defer a.dynamic.mu.Unlock()
	}
	m := a.members.Load()
	var added []*target
	serving := false // some instance of the app served before this config
	for _, in := range a.pool.All() {
		t := m.targets[in]
		a.applyLimit(t.in, now)
		// An instance is new to the app when no config has configured it
		// yet and it has served nothing: one that served requests under a
		// config replaced before Caddy reported it running is not.
		if t.in.Configure(t.weight, &a.passive, now) && t.in.Status().TotalRequests == 0 {
			added = append(added, t)
		} else {
			serving = true
		}
		if t.shared.monitor != nil {
			t.shared.shareChecks(a.fleetSession(), a.name, a.health.Interval)
			t.shared.monitor.Run(a.health, t.rt)
		}
	}
	if serving {
		for _, t := range added {
			t.in.StartSlowStart(now)
		}
	}
	a.serving.Store(true)
	if a.dynamic != nil {
		a.watch(logger)
	}
	if a.outliers.on {
		go a.sweepOutliers()
	}
}

// release gives back the instances the app took, configured and
// discovered.
func (a *App) release() {
	if m := a.members.Load(); m != nil {
		for _, t := range m.targets {
			t.release(a.config)
		}
	}
	a.releaseLeaving(true)
}

// release gives back the state of t's instance; config is the Done channel
// of its app's config.
func (t *target) release(config <-chan struct{}) {
	t.shared.removeListener(config)
	_, _ = instanceStates.Delete(t.shared.key)
	t.closeIdle()
}

// closeIdle closes the idle connections of t's own transport, if it has
// one: those of the app's are the app's to close.
func (t *target) closeIdle() {
	if t.h2c != nil {
		t.h2c.CloseIdleConnections()
	}
}
