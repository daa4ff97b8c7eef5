package caddylb

import (
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
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
	listeners []listener // of the configs using the instance, oldest first
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
	s.in.Close()
	return nil
}

// attach takes the app's instances from instanceStates, making those new
// to it, and builds what proxying to them takes. Every key taken is
// released by release, also when Provision fails later.
// The changes of state of its instances are reported with onChange while
// this config is in charge of them (see sharedInstance.notify); config is
// its Done channel.
func (a *App) attach(logger *zap.Logger, config <-chan struct{}, onChange func(backend.Change)) {
	a.transport = newTransport(a.timeout)
	errorLog := zap.NewStdLog(logger.With(zap.String("app", a.name)))
	a.targets = make(map[*backend.Instance]*target, len(a.urls))
	instances := make([]*backend.Instance, 0, len(a.urls))
	for i, u := range a.urls {
		key := a.pattern + "\x00" + u.String() + "\x00" + a.healthKey
		v, _, _ := instanceStates.LoadOrNew(key, func() (caddy.Destructor, error) {
			s := &sharedInstance{key: key, in: backend.New(u, a.weights[i], &a.passive, backend.Now())}
			s.in.SetOnChange(s.notify)
			if a.probes != nil {
				s.monitor = health.NewMonitor(s.in, a.probes[i], newProbeTransport())
			}
			return s, nil
		})
		s := v.(*sharedInstance)
		s.addListener(config, onChange)
		a.shared = append(a.shared, s)
		instances = append(instances, s.in)
		a.targets[s.in] = &target{proxy: newProxy(u, a.transport, errorLog), logField: accessLogField(a.name, s.in)}
	}
	a.pool = backend.NewPool(instances...)
	a.pool.SetPanicThreshold(a.panic)
	a.budget.percent = a.retry.budget
	if a.StickyCookie != "" {
		a.sticky = newStickyCookie(a.StickyCookie, a.StickyCookieSecret, a.name, instances)
		for value, in := range a.sticky.instances {
			t := a.targets[in]
			t.cookie, t.secureCookie = a.sticky.setCookie(value)
		}
	}
}

// release gives back the instances attach took; config is the Done channel
// of the app's config.
func (a *App) release(config <-chan struct{}) {
	for _, s := range a.shared {
		s.removeListener(config)
		_, _ = instanceStates.Delete(s.key)
	}
	a.shared = nil
}
