package caddylb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/discovery"
	"github.com/golb/caddy-lb/internal/running"
	"github.com/golb/caddy-lb/strategy"
)

// DefaultDynamicRefresh is the default of dynamic_refresh.
const DefaultDynamicRefresh = time.Second

// Discovery holds the options of dynamic instances: instances a source
// says exist, in addition to the configured ones. They get everything a
// configured instance gets: health checks, passive checks, slow start,
// weights, stickiness, the report and the metrics.
type Discovery struct {
	// A source of instances, as reverse_proxy's dynamic upstreams: a
	// module of Caddy's http.reverse_proxy.upstreams namespace, named by
	// "source" (a, srv, multi, etcd, or a third-party one built in).
	DynamicUpstreamsRaw json.RawMessage `json:"dynamic_upstreams,omitempty" caddy:"namespace=http.reverse_proxy.upstreams inline_key=source"`

	// The scheme of instances the source gives as host:port: http, https
	// or h2c. Default: http.
	DynamicScheme string `json:"dynamic_scheme,omitempty"`

	// How often the source is asked for its current set, in the
	// background (the source's own refresh still bounds how often it
	// looks up; the etcd source is watched instead). Default: 1s.
	DynamicRefresh *Duration `json:"dynamic_refresh,omitempty"`
}

// discoverySettings are a Discovery, checked, with defaults.
type discoverySettings struct {
	on      bool
	scheme  string
	refresh time.Duration
}

func (d *Discovery) compile() (s discoverySettings, err error) {
	s.on = len(d.DynamicUpstreamsRaw) > 0
	if !s.on {
		if d.DynamicScheme != "" {
			return s, optionError("dynamic_scheme", fmt.Errorf("%w: it is the scheme of dynamic instances, which need dynamic_upstreams", ErrInapplicableOption))
		}
		if d.DynamicRefresh != nil {
			return s, optionError("dynamic_refresh", fmt.Errorf("%w: it paces dynamic instances, which need dynamic_upstreams", ErrInapplicableOption))
		}
		return s, nil
	}
	if s.scheme = d.DynamicScheme; s.scheme == "" {
		s.scheme = "http"
	}
	if err := discovery.CheckScheme(s.scheme); err != nil {
		return s, optionError("dynamic_scheme", err)
	}
	if s.refresh, err = positive(d.DynamicRefresh, DefaultDynamicRefresh); err != nil {
		return s, optionError("dynamic_refresh", err)
	}
	return s, nil
}

// sources keeps, across reloads, what each app's source said last: a
// config that keeps a source starts with its set, with no gap. Keyed by
// app host and source config.
var sources = caddy.NewUsagePool()

// sourceState is what a source said last, shared by the configs that
// have it. Each config watches the source with its own module while it
// runs (Caddy ties modules to their config); the apps of every loaded
// config follow the set.
type sourceState struct {
	name string // the source module's name: srv, etcd...

	mu   sync.Mutex
	set  discovery.Set
	apps []*App // subscribed, oldest first

	updates, errors atomic.Uint64
}

// Destruct implements caddy.Destructor: nothing to stop, the watches end
// with their configs.
func (*sourceState) Destruct() error { return nil }

// dynamicInstances is an app's view of its source.
type dynamicInstances struct {
	key      string // in sources
	state    *sourceState
	watcher  discovery.Watcher
	resolver *discovery.Resolver
	stop     context.CancelFunc // ends this config's watch; nil until it starts

	mu      sync.Mutex         // serializes changes of membership
	current map[string]*target // by URL
	leaving []*target          // removed, released once their requests end
	drained map[string]bool    // by URL: drained by the source
}

// loadSource loads the app's dynamic upstream module, with the resolver
// of the names it gives.
func (a *App) loadSource(ctx caddy.Context) error {
	if !a.discovery.on {
		return nil
	}
	mods, name, err := loadUpstreamSources(ctx, a.DynamicUpstreamsRaw, 0)
	if err != nil {
		return a.namedError("dynamic_upstreams", err)
	}
	d := &dynamicInstances{current: map[string]*target{}, drained: map[string]bool{}}
	var servers []string
	var polled []reverseproxy.UpstreamSource
	for _, mod := range mods {
		switch m := mod.(type) {
		case discovery.Watcher:
			if len(mods) > 1 {
				return a.namedError("dynamic_upstreams", fmt.Errorf("source %T is watched: it cannot be one of a multi source's", m))
			}
			d.watcher = m
		case reverseproxy.UpstreamSource:
			if servers == nil {
				servers = discovery.ResolversOf(m)
			}
			if su, ok := m.(*reverseproxy.SRVUpstreams); ok {
				// Looked up here: Caddy's drops the records' priorities
				// and weights.
				if m, err = discovery.NewSRV(su); err != nil {
					return a.namedError("dynamic_upstreams", err)
				}
			}
			polled = append(polled, m)
		default:
			return a.namedError("dynamic_upstreams", fmt.Errorf("module %T is not an upstream source", mod))
		}
	}
	if d.resolver, err = discovery.NewResolver(servers, a.timeout); err != nil {
		return a.namedError("dynamic_upstreams", err)
	}
	if d.watcher == nil {
		d.watcher = &discovery.Poller{Sources: polled, Scheme: a.discovery.scheme, Refresh: a.discovery.refresh,
			Timeout: max(a.timeout, a.discovery.refresh), Resolver: d.resolver}
	}
	d.key = a.pattern + "\x00" + string(a.DynamicUpstreamsRaw) + "\x00" + a.discovery.scheme
	v, _, _ := sources.LoadOrNew(d.key, func() (caddy.Destructor, error) {
		return &sourceState{name: name}, nil
	})
	d.state = v.(*sourceState)
	a.dynamic = d
	return nil
}

// loadUpstreamSources loads the upstream source module of raw (JSON with
// its name under "source") and returns it, or for a multi source the
// modules of its sources, in order; and the source's name.
func loadUpstreamSources(ctx caddy.Context, raw json.RawMessage, depth int) ([]any, string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, "", err
	}
	var name string
	if err := json.Unmarshal(fields["source"], &name); err != nil || name == "" {
		return nil, "", errors.New(`want the source module's name under "source"`)
	}
	if name == "multi" && depth < 8 {
		var multi struct {
			Sources []json.RawMessage `json:"sources"`
		}
		if err := json.Unmarshal(raw, &multi); err != nil {
			return nil, name, err
		}
		var all []any
		for i, r := range multi.Sources {
			mods, _, err := loadUpstreamSources(ctx, r, depth+1)
			if err != nil {
				return nil, name, fmt.Errorf("sources[%d]: %w", i, err)
			}
			all = append(all, mods...)
		}
		return all, name, nil
	}
	delete(fields, "source")
	conf, err := json.Marshal(fields)
	if err != nil {
		return nil, name, err
	}
	mod, err := ctx.LoadModuleByID("http.reverse_proxy.upstreams."+name, conf)
	if err != nil {
		return nil, name, err
	}
	return []any{mod}, name, nil
}

// namedError is the error of the option field of the app.
func (a *App) namedError(field string, err error) error {
	return &fieldError{app: a.name, field: field, err: err}
}

// subscribe makes the app follow its source's set, starting with the last
// one it said.
func (a *App) subscribe() {
	st := a.dynamic.state
	st.mu.Lock()
	st.apps = append(st.apps, a)
	set := st.set
	st.mu.Unlock()
	a.apply(set)
}

// watch starts this config's watch of the app's source: the config runs.
// The instances that left the set are released once their requests have
// ended, checked every second.
func (a *App) watch(logger *zap.Logger) {
	d := a.dynamic
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go d.watcher.Watch(ctx, a.discovery.scheme, func(set discovery.Set) {
		d.state.publish(set, a, logger)
	})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				a.releaseLeaving(false)
			}
		}
	}()
}

// publish records set as the source's and hands it to every app that
// follows it. from is the app whose watch learned it.
func (st *sourceState) publish(set discovery.Set, from *App, logger *zap.Logger) {
	st.mu.Lock()
	prevErr := st.set.Err
	st.set = set
	apps := slices.Clone(st.apps)
	st.mu.Unlock()
	if set.Err != nil {
		st.errors.Add(1)
		if prevErr == nil || prevErr.Error() != set.Err.Error() {
			logger.Warn("dynamic source failing: keeping its last set", zap.String("app", from.name),
				zap.String("source", st.name), zap.Int("instances", len(set.Instances)), zap.Error(set.Err))
		}
	} else {
		st.updates.Add(1)
		if prevErr != nil {
			logger.Info("dynamic source back", zap.String("app", from.name), zap.String("source", st.name),
				zap.Int("instances", len(set.Instances)))
		}
	}
	for _, a := range apps {
		a.apply(set)
	}
}

// apply makes the app's discovered instances those of set: new ones are
// added (starting unhealthy until their first passing check, if the app
// checks; ramping up, with slow start), those gone take no new requests
// and are released once their requests have ended, weights and drains
// and priorities (failover tiers) follow the source. A configured instance with the same URL wins.
func (a *App) apply(set discovery.Set) {
	d := a.dynamic
	d.mu.Lock()
	defer d.mu.Unlock()
	if a.retired.Load() {
		return
	}
	now := backend.Now()
	serving := a.serving.Load()
	announce := serving && running.Config() == a.config
	static := make(map[string]bool, len(a.urls))
	for _, u := range a.urls {
		static[u.String()] = true
	}
	// Newcomers ramp up (slow start) when others served before them:
	// ramping the first instances of an app would change nothing.
	others := len(a.static) > 0 || len(d.current) > 0
	next := make(map[string]*target, len(set.Instances))
	var order []*backend.Instance
	var priorities []int // of order
	for _, di := range set.Instances {
		key := di.Key
		if static[key] || next[key] != nil {
			continue
		}
		t := d.current[key]
		if t == nil {
			t = a.newTarget(di.URL, di.Weight, true)
			if serving {
				a.start(t, now, others)
			}
			if announce {
				a.onMembership(t.in, backend.EventAdded, "discovered by "+d.state.name)
			}
		} else if t.weight != di.Weight {
			t.weight = di.Weight
			if serving {
				t.in.Configure(di.Weight, &a.passive, now)
			}
		}
		t.priority = di.Priority
		if di.Draining != d.drained[key] {
			t.in.SetDraining(di.Draining, now)
			d.drained[key] = di.Draining
		}
		next[key] = t
		order = append(order, t.in)
		priorities = append(priorities, t.priority)
	}
	for key, t := range d.current {
		if next[key] == nil {
			d.leaving = append(d.leaving, t)
			delete(d.drained, key)
			if announce {
				a.onMembership(t.in, backend.EventRemoved, "gone from "+d.state.name)
			}
		}
	}
	d.current = next

	a.pool.SetMembers(append(slices.Clone(a.static), order...), append(slices.Clone(a.priorities), priorities...))
	a.setMembers(a.membersLocked())
	a.releaseLeavingLocked(false)
	// Derived here rather than by the first request after the change.
	strategy.Prepare(a.strategy, a.pool)
}

// start applies the running config's settings to the instance of t, at
// now, and starts its health checks; added says it joins an app that
// serves (slow start).
func (a *App) start(t *target, now int64, added bool) {
	a.applyLimit(t.in, now)
	first := t.in.Configure(t.weight, &a.passive, now)
	if added && first {
		t.in.StartSlowStart(now)
	}
	if t.shared.monitor != nil {
		t.shared.shareChecks(a.fleetSession(), a.name, a.health.Interval)
		t.shared.monitor.Run(a.health, t.rt)
	}
}

// releaseLeaving releases the state of the instances that left the app's
// set and have no request in flight (all of them, if all).
func (a *App) releaseLeaving(all bool) {
	if a.dynamic == nil {
		return
	}
	a.dynamic.mu.Lock()
	defer a.dynamic.mu.Unlock()
	a.releaseLeavingLocked(all)
}

func (a *App) releaseLeavingLocked(all bool) {
	d := a.dynamic
	n := len(d.leaving)
	d.leaving = slices.DeleteFunc(d.leaving, func(t *target) bool {
		if all || t.in.InFlight() == 0 {
			t.release(a.config)
			return true
		}
		return false
	})
	if len(d.leaving) != n && !all {
		a.setMembers(a.membersLocked())
	}
}

// membersLocked returns the app's members: configured instances, those of
// the set, and those that left it but still have requests in flight.
func (a *App) membersLocked() *members {
	d := a.dynamic
	old := a.members.Load()
	m := &members{targets: make(map[*backend.Instance]*target, len(a.static)+len(d.current)+len(d.leaving))}
	for _, in := range a.static {
		m.targets[in] = old.targets[in]
	}
	for _, t := range d.current {
		m.targets[t.in] = t
	}
	for _, t := range d.leaving {
		m.targets[t.in] = t
	}
	return m
}

// unsubscribe stops the app's watch, and its following the set.
func (a *App) unsubscribe() {
	d := a.dynamic
	if d.stop != nil {
		d.stop()
	}
	st := d.state
	st.mu.Lock()
	st.apps = slices.DeleteFunc(st.apps, func(x *App) bool { return x == a })
	st.mu.Unlock()
	_, _ = sources.Delete(d.key)
}

// dynamicReport is the report's view of the app's source, nil without one.
func (a *App) dynamicReport() (source string, instances int, updated time.Time, lastError string, ok bool) {
	if a.dynamic == nil {
		return "", 0, time.Time{}, "", false
	}
	st := a.dynamic.state
	st.mu.Lock()
	set := st.set
	st.mu.Unlock()
	if set.Err != nil {
		lastError = set.Err.Error()
	}
	return st.name, len(set.Instances), set.Updated, lastError, true
}
