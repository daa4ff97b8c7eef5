// Package caddylb is the load_balancer handler for Caddy: it routes each
// request by its Host to an app, a pool of backend instances, picks a
// healthy instance with the app's strategy and proxies the request to it.
//
// Instances are checked actively (a request for a health URI, on an
// interval) and passively (failures of real requests eject them for a
// while); a request an instance failed is retried on another when that is
// safe. An instance's state lives across config reloads that keep it (see
// shared.go). It is shown on Caddy's admin endpoint at
// GET /api/v1/loadBalancers/report, where instances can be drained, and
// every config error names the app and the field at fault.
package caddylb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/golb/caddy-lb/backend"

	"github.com/golb/caddy-lb/report"
	"github.com/golb/caddy-lb/strategy"
	"github.com/golb/caddy-lb/upstream"
)

// Defaults of an app's settings.
const (
	DefaultTimeout             = 10 * time.Second
	DefaultHealthCheckCooldown = 30 * time.Second
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler is the load_balancer HTTP handler. It serves a request with the
// app whose host matches the request's Host header and answers 404 when
// none does.
type Handler struct {
	// The pools of backend instances this handler balances over, each
	// chosen by the request's Host. Hosts are matched case-insensitively,
	// ignoring the port: an exact host wins over a one-label wildcard
	// ("*.example.com"), which wins over the catch-all ("*" or no host).
	// No two apps may have the same host.
	Apps []*App `json:"apps,omitempty"`

	router       router
	logger       *zap.Logger
	ctx          caddy.Context
	events       *caddyevents.App
	stopAdopting context.CancelFunc // stops waiting for the config to run
	adopting     sync.WaitGroup     // the goroutine that waits
	unregister   func()
	unmetrics    func()
}

// App is a pool of backend instances serving one host.
type App struct {
	// The host this app serves: a host name ("api.example.com"), a
	// one-label wildcard ("*.example.com"), or "*" (or nothing) for every
	// host no other app claims. No port.
	Host string `json:"host,omitempty"`

	// How an instance is picked for each request, among the healthy
	// instances of weight above 0. Default: round_robin.
	//
	//   - round_robin: in turn, in proportion to the weights (nginx's
	//     smooth weighted round robin), exact over the available instances.
	//   - least_connections: the fewest requests in flight per unit of
	//     weight; idle instances first.
	//   - p2c: the less loaded of two instances drawn at random (power of
	//     two choices); O(1) at any pool size.
	//   - least_latency: of two instances drawn at random, the one with the
	//     lower peak-EWMA latency × (in flight + 1) / weight.
	//   - hash: the same key (see hash_key) to the same instance, by
	//     rendezvous hashing; agreed by every load balancer with the same
	//     config.
	//   - random: at random, in proportion to the weights.
	//   - first: the first available instance in config order (failover).
	Strategy string `json:"strategy,omitempty"`

	// What strategy hash hashes: "client_ip" (Caddy's client IP, which
	// honours the server's trusted_proxies), "header:NAME", "cookie:NAME",
	// "query:NAME" (the value as sent) or "uri" (path and query as sent).
	// Requests without the key go to a random instance. Only with
	// strategy hash. Default: client_ip.
	HashKey string `json:"hash_key,omitempty"`

	// The decay window of least_latency's latency estimates: the weight of
	// a sample falls to 1/e after this long, and an idle instance's
	// estimate decays toward 0 at that pace, so a slow instance is tried
	// again. Shorter reacts faster and forgets sooner. Only with strategy
	// least_latency. Default: 10s.
	LatencyDecay *Duration `json:"latency_decay,omitempty"`

	// The name of a cookie that pins each client to an instance, with any
	// strategy: a request whose cookie names an available instance goes
	// to it; any other is balanced by the strategy, and its response sets
	// the cookie (HttpOnly, SameSite=Lax, Secure over TLS; no expiry) to
	// the instance picked. The value is a MAC of the instance's URL, not
	// the URL.
	StickyCookie string `json:"sticky_cookie,omitempty"`

	// A secret mixed into the MAC key of the sticky cookie's values, so
	// that nobody without it can compute the value of an instance. Every
	// load balancer of a fleet needs the same. Optional; only with
	// sticky_cookie.
	StickyCookieSecret string `json:"sticky_cookie_secret,omitempty"`

	// The path each instance is asked for its health, starting with "/".
	// It is joined to the instance URL's path. An instance is healthy
	// while it answers 2xx; redirects are not followed. Without it there
	// are no active checks and every instance counts as healthy.
	HealthURI string `json:"health_uri,omitempty"`

	// How long a backend may take to send its response headers (slower
	// answers get 504), to accept a connection, or to answer a health
	// check. Default: 10s.
	Timeout *Duration `json:"timeout,omitempty"`

	// The time between health checks of each instance. Default: 30s.
	HealthCheckCooldown *Duration `json:"health_check_cooldown,omitempty"`

	// The method of health checks. Default: GET.
	HealthMethod string `json:"health_method,omitempty"`

	// Headers sent with each health check; "Host" sets the Host header.
	// Values are sent as given.
	HealthHeaders http.Header `json:"health_headers,omitempty"`

	// The port health checks go to, if not the instance's own.
	HealthPort int `json:"health_port,omitempty"`

	// The statuses a passing health check answers with: codes ("200")
	// or classes ("2xx"). Redirects are never followed. Default: 2xx.
	HealthStatus []string `json:"health_status,omitempty"`

	// A regular expression (Go syntax) the body of a passing health check
	// must match. At most the first 64 KiB of the body are read. Not with
	// health_method HEAD. Default: any body.
	HealthBody string `json:"health_body,omitempty"`

	// How many consecutive passing health checks bring an unhealthy
	// instance back (HAProxy's rise); an instance never checked yet (see
	// initially_unhealthy) is in after its first. Default: 1.
	HealthPasses int `json:"health_passes,omitempty"`

	// How many consecutive failing health checks take a healthy instance
	// out (HAProxy's fall). Default: 1.
	HealthFails int `json:"health_fails,omitempty"`

	// A new instance starts unhealthy and gets traffic only after its
	// first passing health check, rather than at once. Only with
	// health_uri. An instance a reload keeps keeps its health either way.
	InitiallyUnhealthy bool `json:"initially_unhealthy,omitempty"`

	// Passive health checking: after this many consecutive failures of
	// real requests (no connection, reset, timeout, or a status listed in
	// unhealthy_status), the instance is ejected for fail_duration. 0 turns
	// passive checks off. Default: 5.
	MaxFails *int `json:"max_fails,omitempty"`

	// Statuses of real responses that count as failures for max_fails:
	// codes ("503") or classes ("5xx"). Default: none (only connection
	// errors and timeouts count).
	UnhealthyStatus []string `json:"unhealthy_status,omitempty"`

	// How long an instance stays ejected the first time. Each further
	// ejection doubles it, up to max_fail_duration; the doubling unwinds
	// as the instance stays in. When the time is up a single trial request
	// decides whether the instance is back or ejected again. A passing
	// active health check ends an ejection early. Default: 10s.
	FailDuration *Duration `json:"fail_duration,omitempty"`

	// The longest an ejection lasts; not shorter than fail_duration.
	// Default: 5m (or fail_duration, if longer).
	MaxFailDuration *Duration `json:"max_fail_duration,omitempty"`

	// The largest share of the app's instances, in percent, that passive
	// checks may eject at once; at least one may always be. Beyond it,
	// failing instances stay in. Default: 50.
	MaxEjectedPercent *int `json:"max_ejected_percent,omitempty"`

	// Fail-open: when fewer than this percentage of the app's instances
	// are available (healthy and not ejected), requests are balanced over
	// all of them, health ignored, rather than answered 503 (Envoy's
	// healthy panic threshold). Draining instances and those of weight 0
	// stay out. Default: 0 (off).
	PanicThreshold int `json:"panic_threshold,omitempty"`

	// How many times a failed request may be retried on another instance.
	// A request that never reached an instance (no connection, or
	// reset before any byte was sent) is retried whatever its method,
	// body intact. A request that failed after it was sent (timeout,
	// reset) is retried only if it is idempotent (GET, HEAD, OPTIONS,
	// TRACE, PUT, DELETE, or with an Idempotency-Key header) and its body
	// was empty (or fully read, up to 64 KiB). Never once the response has
	// begun, nor when the client broke it. 0 turns retries off. Default: 2.
	Retries *int `json:"retries,omitempty"`

	// The time from the start of a request after which it is no longer
	// retried. Default: none (only retries bounds them).
	TryDuration *Duration `json:"try_duration,omitempty"`

	// Retries allowed, as a percentage of the requests of the last 10
	// seconds, above a floor of 10 retries in that window: a failing fleet
	// is not hammered by retry storms. Default: 20.
	RetryBudgetPercent *int `json:"retry_budget_percent,omitempty"`

	// An instance that is added, becomes healthy or comes back from an
	// ejection ramps its share of traffic from 10% to 100% of its weight
	// over this time (HAProxy's slowstart), so a cold backend is not
	// swamped. Default: 0 (off).
	SlowStart *Duration `json:"slow_start,omitempty"`

	// The backend instances: at least one.
	Instances []*InstanceConfig `json:"instances,omitempty"`

	name      string // for messages: the host, or "*" for the catch-all
	pattern   string // the normalized host
	strategy  strategy.Strategy
	observer  strategy.Observer // the strategy, if it learns from latencies
	timeout   time.Duration     // the latency a failed request counts as, for the observer
	res       resilience
	urls      []*url.URL // the instances' parsed URLs, in config order
	weights   []int      // their weights
	probes    []string   // their health check URLs; nil without health_uri
	healthKey string     // the health settings, as part of instance state keys

	// Set up by attach: the app's instances live in the process-wide
	// pool of instance states, to release at Cleanup.
	shared    []*sharedInstance
	pool      *backend.Pool
	targets   map[*backend.Instance]*target
	sticky    *stickyCookie // nil without sticky_cookie
	transport *upstream.Transport
	budget    retryBudget
	retired   atomic.Bool // set by Cleanup
	nameValue any         // name, boxed once for the replacer
}

// target is what serving a request with an instance takes.
type target struct {
	proxy *httputil.ReverseProxy
	// The Set-Cookie values that pin a client to the instance, for plain
	// HTTP and TLS; empty without sticky_cookie.
	cookie, secureCookie string
	// logField adds the app and the instance to the access log entry.
	logField zap.Field
}

// InstanceConfig is one backend instance of an app.
type InstanceConfig struct {
	// The instance's base URL: http or https, a host and optionally a port
	// and a base path that is joined with each request's path. Without a
	// scheme ("127.0.0.1:8081"), http is meant. Userinfo, if any, is sent
	// as basic auth to the instance and redacted in logs and the report.
	URL string `json:"url"`

	// The instance's share of requests relative to the app's other
	// instances, an integer from 0 to 1000000; every strategy but first
	// honours it. 0 sends the instance no new requests (requests in
	// flight finish) while it stays in the config, its health checks and
	// the report. Default: 1.
	Weight *int `json:"weight,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.load_balancer",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the config and builds the apps. Their instances' live
// state is shared with the configs before and after this one (see
// sharedInstance); once Caddy runs this config, its settings apply to it
// and health checks start, if they have not already. Any error names the
// app and the field at fault.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.ctx = ctx
	if len(h.Apps) == 0 {
		return fmt.Errorf("apps: %w", ErrNoApps)
	}
	for i, app := range h.Apps {
		if app == nil {
			return fmt.Errorf("apps[%d]: %w", i, ErrNoInstances)
		}
		if err := app.provision(h.logger); err != nil {
			return err
		}
		if err := h.router.add(app.pattern, app); err != nil {
			return fmt.Errorf("app %q: host: %w: another app already serves it", app.name, err)
		}
	}

	var err error
	if h.events, err = loadEvents(ctx); err != nil {
		return err
	}
	for _, app := range h.Apps {
		app.attach(h.logger, ctx.Done(), h.onChange(app))
	}
	if h.unmetrics, err = registerMetrics(ctx.GetMetricsRegistry(), h); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}

	// The config's settings apply once Caddy runs it, and not at all if it
	// fails to load or is only validated: until then the instances it
	// shares with the running config follow that one's. Backends may be
	// sites of this very config: health checks sent before it runs would
	// find them not yet listening.
	actx, cancel := context.WithCancel(ctx)
	h.stopAdopting = cancel
	h.adopting.Go(func() {
		if awaitRunning(actx, ctx.Done()) {
			h.adopt()
		}
	})
	h.unregister = report.Register(ctx, h)
	return nil
}

// adopt makes this config the one in charge of its instances: their
// weights, policies and health check settings are its own from now on.
// (Changes of their state are logged and emitted as its events from the
// moment it runs, see sharedInstance.report.)
func (h *Handler) adopt() {
	now := backend.Now()
	for _, app := range h.Apps {
		var added []*backend.Instance
		serving := false // some instance of the app served before this config
		for i, s := range app.shared {
			if s.in.Configure(app.weights[i], &app.res.passive, now) {
				added = append(added, s.in)
			} else {
				serving = true
			}
			if s.monitor != nil {
				s.monitor.Run(&app.res.health)
			}
		}
		if serving {
			for _, in := range added {
				in.StartSlowStart(now)
			}
		}
	}
}

// awaitRunning waits until Caddy runs the config whose context's Done
// channel is config, and reports whether it does; false means ctx ended
// first: the config failed to load, or was only validated.
//
// Caddy provisions a config before it starts listening, and backends may be
// sites of the same config: probes sent before then would find them not
// yet listening. Caddy makes a config the active one right after it has
// started all its apps, and offers no event a handler could wait on, so
// this polls; it takes a few milliseconds once per load.
func awaitRunning(ctx context.Context, config <-chan struct{}) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if running := report.RunningConfig(); running != nil && running == config {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// Cleanup releases the config's hold on its instances (the last config to
// use an instance stops its health checks) and its idle backend
// connections. Requests still in flight on this config keep working: Caddy
// may finish them after Cleanup.
func (h *Handler) Cleanup() error {
	if h.unregister != nil {
		h.unregister()
	}
	if h.unmetrics != nil {
		h.unmetrics()
	}
	if h.stopAdopting != nil {
		h.stopAdopting()
	}
	h.adopting.Wait()
	for _, app := range h.Apps {
		if app == nil {
			continue
		}
		if app.transport != nil {
			app.retired.Store(true)
			app.transport.CloseIdleConnections()
		}
		app.release(h.ctx.Done())
	}
	return nil
}

// ServeHTTP proxies r to an instance of the app that serves its host.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	app := h.router.match(r.Host)
	if app == nil {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("%w %q", ErrNoApp, r.Host))
	}
	return app.serve(w, r)
}

// ReportApps implements report.Source.
func (h *Handler) ReportApps() []report.App {
	apps := make([]report.App, 0, len(h.Apps))
	now := backend.Now()
	for _, app := range h.Apps {
		ra := report.App{Host: app.Host, Strategy: app.Strategy, Panic: app.pool.Panicking()}
		for _, in := range app.pool.All() {
			ra.Instances = append(ra.Instances, reportInstance(in, now))
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

// provision applies defaults and checks the app's config, and builds
// what serving it takes but its instances (see attach).
//
// The config adapters run it at adapt time to check an app (see
// checkApp): keep it free of I/O, goroutines and shared state, and make
// every error with errorf, which names the field at fault.
func (a *App) provision(logger *zap.Logger) error {
	pattern, err := normalizeAppHost(a.Host)
	a.name, a.pattern = a.Host, pattern
	if pattern == "" && err == nil {
		a.name = "*"
	}
	if err != nil {
		return a.errorf("host", err)
	}
	if a.Strategy == "" {
		a.Strategy = strategy.Default
	}
	opts := strategy.Options{HashKey: a.HashKey}
	if a.LatencyDecay != nil {
		if opts.LatencyDecay = time.Duration(*a.LatencyDecay); opts.LatencyDecay <= 0 {
			return a.errorf("latency_decay", fmt.Errorf("%w, got %v", ErrInvalidDuration, opts.LatencyDecay))
		}
	}
	if a.strategy, err = strategy.NewWithOptions(a.Strategy, opts); err != nil {
		if oe, ok := errors.AsType[*strategy.OptionError](err); ok {
			return a.errorf(oe.Option, oe.Err)
		}
		return a.errorf("strategy", err)
	}
	a.observer, _ = a.strategy.(strategy.Observer)
	if a.StickyCookie != "" && !validCookieName(a.StickyCookie) {
		return a.errorf("sticky_cookie", fmt.Errorf("%w %q", ErrInvalidCookieName, a.StickyCookie))
	}
	if a.StickyCookieSecret != "" && a.StickyCookie == "" {
		return a.errorf("sticky_cookie_secret", fmt.Errorf("%w: it signs the sticky_cookie, which is not set", ErrInapplicableOption))
	}
	timeout := durationOr(a.Timeout, DefaultTimeout)
	if timeout <= 0 {
		return a.errorf("timeout", fmt.Errorf("%w, got %v", ErrInvalidDuration, timeout))
	}
	cooldown := durationOr(a.HealthCheckCooldown, DefaultHealthCheckCooldown)
	if cooldown <= 0 {
		return a.errorf("health_check_cooldown", fmt.Errorf("%w, got %v", ErrInvalidDuration, cooldown))
	}
	var healthURI *url.URL
	if a.HealthURI != "" {
		if healthURI, err = parseHealthURI(a.HealthURI); err != nil {
			return a.errorf("health_uri", err)
		}
	}
	if a.res, err = a.provisionResilience(timeout, cooldown, healthURI != nil); err != nil {
		return err
	}
	if len(a.Instances) == 0 {
		return a.errorf("instances", ErrNoInstances)
	}

	a.timeout = timeout
	a.urls = make([]*url.URL, 0, len(a.Instances))
	a.weights = make([]int, 0, len(a.Instances))
	seen := make(map[string]int, len(a.Instances))
	for i, ic := range a.Instances {
		field := fmt.Sprintf("instances[%d].url", i)
		if ic == nil {
			return a.errorf(field, ErrInvalidURL)
		}
		u, err := parseInstanceURL(ic.URL)
		if err != nil {
			return a.errorf(field, err)
		}
		if j, dup := seen[u.String()]; dup {
			return a.errorf(field, fmt.Errorf("%w: %q is instances[%d] already; give it a weight instead", ErrDuplicateInstance, ic.URL, j))
		}
		seen[u.String()] = i
		weight := 1
		if ic.Weight != nil {
			if weight = *ic.Weight; weight < 0 || weight > backend.MaxWeight {
				return a.errorf(fmt.Sprintf("instances[%d].weight", i),
					fmt.Errorf("%w: want an integer from 0 to %d, got %d", ErrInvalidWeight, backend.MaxWeight, weight))
			}
		}
		a.urls = append(a.urls, u)
		a.weights = append(a.weights, weight)
		if healthURI != nil {
			a.probes = append(a.probes, probeURL(u, healthURI, a.HealthPort))
		}
	}
	a.healthKey = a.healthSettingsKey()
	a.nameValue = a.name
	return nil
}

// errorf wraps err with the app's name and the field at fault.
func (a *App) errorf(field string, err error) error {
	return &fieldError{app: a.name, field: field, err: err}
}

// checkApp returns the error Provision would refuse app with, if any,
// without changing app: it provisions a copy, made through app's JSON.
// The Caddyfile and lbyaml adapters use it to refuse at adapt time, with a
// position, what only a whole app can tell (options that do not go
// together, duplicate instances); the field of its *fieldError says where.
func checkApp(app *App) error {
	b, err := json.Marshal(app)
	if err != nil {
		return err
	}
	var c App
	if err := json.Unmarshal(b, &c); err != nil {
		return err
	}
	return c.provision(zap.NewNop())
}

// fieldError is a config error of an app's field, as errorf makes it.
type fieldError struct {
	app, field string
	err        error
}

func (e *fieldError) Error() string { return fmt.Sprintf("app %q: %s: %v", e.app, e.field, e.err) }
func (e *fieldError) Unwrap() error { return e.err }

// done ends a request to in that started at start (as returned by
// backend.Now).
func (a *App) done(in *backend.Instance) {
	in.Release()
	if a.retired.Load() {
		// Caddy finishes the requests of an unloaded config on it, after
		// Cleanup: the connection this one gave back must not linger.
		a.transport.CloseIdleConnections()
	}
}

// zeroValue is 0 boxed once, for the retries placeholder.
var zeroValue any = 0

// setDuration sets the duration placeholder: the time since start (as
// returned by backend.Now).
func setDuration(repl *caddy.Replacer, start int64) {
	if repl != nil {
		repl.Set("http.load_balancer.duration", time.Duration(backend.Now()-start))
	}
}

// accessLogField returns the field that adds load_balancer_app and
// load_balancer_instance to the access log entry of a request served by in.
// It inlines them (one field, so one allocation per request in Caddy's
// list of extra fields); its key lets ExtraLogFields.Set replace it should
// a request be served twice.
func accessLogField(app string, in *backend.Instance) zap.Field {
	return zap.Field{Key: "load_balancer", Type: zapcore.InlineMarshalerType,
		Interface: &accessLogFields{app: app, instance: in.String()}}
}

// accessLogged reports whether r's server may write access logs. Adding
// a field costs two allocations (Caddy's list of fields, and the cache of
// loggers it resets); a server without access logs is spared them.
func accessLogged(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return !ok || srv.Logs != nil
}

type accessLogFields struct{ app, instance string }

func (f *accessLogFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("load_balancer_app", f.app)
	enc.AddString("load_balancer_instance", f.instance)
	return nil
}

// loadEvents returns the events app of ctx's config, loading it if the
// config has none, as reverse_proxy does: handlers may subscribe to our
// events from code too. A context made by hand (caddy.NewContext of a bare
// caddy.Context, as Go callers and tests do) has no config, where ctx.App
// panics; it has no events app and no subscribers either, so the handler
// goes without.
func loadEvents(ctx caddy.Context) (app *caddyevents.App, err error) {
	defer func() {
		if recover() != nil {
			app, err = nil, nil
		}
	}()
	a, err := ctx.App("events")
	if err != nil {
		return nil, fmt.Errorf("loading the events app: %v", err)
	}
	return a.(*caddyevents.App), nil
}

// onChange returns what reports the changes of state of app's
// instances while this config is in charge of them: one log line each
// (warnings for those that take an instance out), and the event
// load_balancer.instance_<event> with the app, the instance (its redacted
// URL), the reason and, for an ejection, when it ends.
func (h *Handler) onChange(app *App) func(backend.Change) {
	return func(c backend.Change) {
		fields := []zap.Field{
			zap.String("app", app.name),
			zap.String("instance", c.Instance.String()),
			zap.String("reason", c.Reason),
		}
		data := map[string]any{"app": app.name, "instance": c.Instance.String(), "reason": c.Reason}
		if !c.Until.IsZero() {
			fields = append(fields, zap.Time("until", c.Until))
			data["until"] = c.Until.UTC().Format(time.RFC3339Nano)
		}
		msg := "instance " + string(c.Event)
		switch c.Event {
		case backend.EventUnhealthy, backend.EventEjected:
			h.logger.Warn(msg, fields...)
		default:
			h.logger.Info(msg, fields...)
		}
		if h.events != nil && h.ctx.Err() == nil {
			h.events.Emit(h.ctx, "load_balancer.instance_"+string(c.Event), data)
		}
	}
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

// parseHealthURI checks a health_uri: a path starting with "/", with an
// optional query.
func parseHealthURI(uri string) (*url.URL, error) {
	// "//x" would parse as a host, not a path.
	if !strings.HasPrefix(uri, "/") || strings.HasPrefix(uri, "//") {
		return nil, fmt.Errorf("%w, got %q", ErrInvalidHealthURI, uri)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidHealthURI, err)
	}
	return u, nil
}

// parseInstanceURL parses and checks an instance URL; one without a scheme
// means http.
func parseInstanceURL(raw string) (*url.URL, error) {
	s := strings.TrimSpace(raw)
	if i := strings.Index(s, "://"); i < 0 || strings.ContainsAny(s[:i], "/?#:@") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidURL, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w, got %q in %q", ErrInvalidScheme, u.Scheme, raw)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%w: %q", ErrMissingHost, raw)
	}
	if port := u.Port(); port != "" {
		if n, err := net.LookupPort("tcp", port); err != nil || n == 0 {
			return nil, fmt.Errorf("%w %q: bad port %q", ErrInvalidURL, raw, port)
		}
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w %q: no fragment or opaque part allowed", ErrInvalidURL, raw)
	}
	return u, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ report.Source               = (*Handler)(nil)
)
