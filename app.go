package caddylb

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/fleet"
	"github.com/golb/caddy-lb/health"
	"github.com/golb/caddy-lb/strategy"
	"github.com/golb/caddy-lb/upstream"
)

// DefaultTimeout is the default of an app's timeout.
const DefaultTimeout = 10 * time.Second

// App is a pool of backend instances serving one host.
//
// Its options come in groups (Selection, Stickiness, ActiveHealth,
// PassiveHealth, RetryPolicy), each in the file of the concern it
// configures, and each compiling itself into what its package needs; in
// JSON and the Caddyfile they are flat, under the names of their json
// tags. provision checks them all in one place and never changes them.
type App struct {
	// The host this app serves: a host name ("api.example.com"), a
	// one-label wildcard ("*.example.com"), or "*" (or nothing) for every
	// host no other app claims. No port.
	Host string `json:"host,omitempty"`

	// The name of a pool: an app with a name and no host serves no host
	// of its own, only the requests that other apps of the load_balancer
	// split (see split) or mirror (see mirror) to it. Names are unique
	// within a load_balancer; an app with a host has no name.
	Name string `json:"name,omitempty"`

	Selection
	Stickiness

	// The path each instance is asked for its health, starting with "/".
	// It is joined to the instance URL's path. Setting it turns active
	// health checks on (see ActiveHealth for their options); without it
	// every instance counts as healthy to them.
	HealthURI string `json:"health_uri,omitempty"`

	// gRPC health checks instead: each instance is asked
	// grpc.health.v1.Health/Check for a service ("" for the whole server)
	// over its own HTTP/2 connections (h2c or https instances); SERVING
	// passes, anything else fails. The options of active health checks
	// apply but health_method, health_headers, health_status and
	// health_body. In the Caddyfile: health_grpc [<service>].
	HealthGRPC *GRPCHealthCheck `json:"health_grpc,omitempty"`

	// How long a backend may take to send its response headers (slower
	// answers get 504), to accept a connection, or to answer a health
	// check. Default: 10s.
	Timeout *Duration `json:"timeout,omitempty"`

	// How often a response body is flushed to the client while it is
	// copied, as reverse_proxy's flush_interval: a negative value (-1)
	// flushes after every read. Default: 0, meaning that responses that
	// stream (text/event-stream, gRPC, no Content-Length) are flushed
	// after every read and others as the server's buffer fills.
	FlushInterval *Duration `json:"flush_interval,omitempty"`

	// The time between health checks of each instance. Default: 30s.
	HealthCheckCooldown *Duration `json:"health_check_cooldown,omitempty"`

	ActiveHealth
	PassiveHealth
	OutlierDetection
	RetryPolicy
	Hedging
	Overload
	Splitting
	Mirroring
	Tiers

	// An instance that is added, becomes healthy or comes back from an
	// ejection ramps its share of traffic from 10% to 100% of its weight
	// over this time (HAProxy's slowstart), so a cold backend is not
	// swamped. Default: 0 (off).
	SlowStart *Duration `json:"slow_start,omitempty"`

	// The backend instances: at least one.
	Instances []*InstanceConfig `json:"instances,omitempty"`

	Discovery
	InstanceTLS

	settings // compiled from the options by provision

	// Set up by attach: the app's instances live in the process-wide
	// pool of instance states, to release at Cleanup.
	config    <-chan struct{} // the Done channel of the app's config
	onChange  func(backend.Change)
	dial      dialFunc
	pool      *backend.Pool
	static    []*backend.Instance // the configured instances, in order
	members   atomic.Pointer[members]
	sticky    *stickyCookie // nil without sticky_cookie
	transport *upstream.Transport
	tlsConfig *tls.Config // to https instances; nil for the defaults
	budget    retryBudget
	dynamic   *dynamicInstances // nil without dynamic_upstreams
	serving   atomic.Bool       // set once Caddy runs the config
	retired   atomic.Bool       // set by Cleanup
	logger    *zap.Logger
	overload  overload
	fleet     *fleet.App // the config's fleet; nil without one
	hedging   hedgeState
	split     *split  // nil unless the app splits
	mirror    *mirror // nil without mirror
}

// settings is what provision compiles an app's options into.
type settings struct {
	name         string // for messages: the host, or "*" for the catch-all
	nameValue    any    // name, boxed once for the replacer
	pattern      string // the normalized host
	strategyName string
	strategy     strategy.Strategy
	observer     strategy.Observer // the strategy, if it learns from latencies
	timeout      time.Duration     // also the latency a failed request counts as, for the observer
	flush        time.Duration     // flush_interval; 0: only responses that stream, after every read
	health       *health.Spec      // nil without health_uri
	healthURI    *url.URL          // nil without health_uri
	passive      backend.Policy    // what passive checks and slow start do
	retry        retrySettings
	limits       overloadSettings
	outliers     outlierSettings
	hedge        hedgeSettings
	splitting    splitSettings
	mirroring    mirrorSettings
	discovery    discoverySettings
	panic        int        // panic threshold, percent; 0: off
	urls         []*url.URL // the configured instances' parsed URLs, in config order
	weights      []int      // their weights
	priorities   []int      // their priorities (failover tiers)
	failover     int        // failover threshold, percent; 0: a tier hands over with none available
	healthKey    string     // the health settings, as part of instance state keys
}

// target is what serving a request with an instance takes.
type target struct {
	shared   *sharedInstance
	in       *backend.Instance
	weight   int               // as configured, or as the source gives it
	priority int               // its tier: as configured, or as the source gives it
	dynamic  bool              // discovered, not configured
	url      *url.URL          // the instance's base URL
	auth     []string          // Authorization from the URL's userinfo; nil for none
	rt       http.RoundTripper // the app's transport, or h2c's own
	h2c      *h2cTransport     // an h2c instance's transport; nil for others
	// The sticky cookie's value for the instance, and the Set-Cookie
	// values that pin a client to it, for plain HTTP and TLS; empty
	// without sticky_cookie.
	cookieValue, cookie, secureCookie string
	// logField adds the app and the instance to the access log entry.
	logField zap.Field
}

// InstanceConfig is one backend instance of an app.
type InstanceConfig struct {
	// The instance's base URL: http or https, a host and optionally a port
	// and a base path that is joined with each request's path. Without a
	// scheme ("127.0.0.1:8081"), http is meant. Userinfo, if any, is sent
	// as basic auth to the instance; a query is added to each request's.
	// Both are redacted in logs, metrics and the report.
	URL string `json:"url"`

	// The instance's share of requests relative to the app's other
	// instances, an integer from 0 to 1000000; every strategy but first
	// honours it. 0 sends the instance no new requests (requests in
	// flight finish) while it stays in the config, its health checks and
	// the report. Default: 1.
	Weight *int `json:"weight,omitempty"`

	// The instance's failover tier, an integer from 0 to 65535: 0 (the
	// default) is the first tier, higher numbers are backup tiers, lower
	// preferred as in DNS SRV. The app serves from its best tier only,
	// and hands over to the next tier when too few of its instances are
	// available (see failover_threshold).
	Priority *int `json:"priority,omitempty"`
}

// Selection says how an instance is picked for each request.
type Selection struct {
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

	// Consistent hashing with bounded loads, for strategy hash: a factor
	// above 1.0 (1.25: an instance may take 25% more than its share). No
	// instance takes a new request while it has ceil(factor × (the
	// requests in flight to the app's serving tier + 1) × its share of the
	// weight) in flight; a key whose instance is at the bound goes to the
	// next of its rendezvous ranking under it, so keys move as little as
	// they can. Only with strategy hash. Default: none (no bound).
	HashBalance *float64 `json:"hash_balance,omitempty"`
}

// compile returns the strategy's name (the default if unset) and the
// strategy.
func (s *Selection) compile() (string, strategy.Strategy, error) {
	name := s.Strategy
	if name == "" {
		name = strategy.Default
	}
	opts := strategy.Options{HashKey: s.HashKey}
	if s.HashBalance != nil {
		if f := *s.HashBalance; !(f > 1) || math.IsInf(f, 0) {
			return "", nil, optionError("hash_balance", fmt.Errorf("%w: want more than 1.0, got %v", ErrInvalidOption, f))
		}
		opts.HashBalance = *s.HashBalance
	}
	if s.LatencyDecay != nil {
		var err error
		if opts.LatencyDecay, err = positive(s.LatencyDecay, 0); err != nil {
			return "", nil, optionError("latency_decay", err)
		}
	}
	st, err := strategy.NewWithOptions(name, opts)
	if err != nil {
		if oe, ok := errors.AsType[*strategy.OptionError](err); ok {
			return "", nil, optionError(oe.Option, oe.Err)
		}
		return "", nil, optionError("strategy", err)
	}
	return name, st, nil
}

// provision checks the app's options and compiles them into its
// settings, leaving the options as they are. attach builds the rest of
// what serving the app takes, with its instances.
//
// The config adapters run it at adapt time to check an app (see
// checkApp): keep it free of I/O, goroutines and shared state. Its errors
// are *fieldError, which names the app and the field at fault.
func (a *App) provision() error {
	s, err := a.compile()
	if err != nil {
		return err
	}
	a.settings = s
	return nil
}

// compile returns the app's settings, or the error of the first option at
// fault.
func (a *App) compile() (settings, error) {
	var s settings
	err := s.compile(a)
	if fe, ok := errors.AsType[*fieldError](err); ok {
		fe.app, fe.pool = s.name, a.isPool()
	}
	return s, err
}

// compile compiles the options of app into s.
func (s *settings) compile(app *App) error {
	pattern, err := normalizeAppHost(app.Host)
	s.name, s.pattern = app.Host, pattern
	if pattern == "" && err == nil {
		s.name = "*"
	}
	if app.Name != "" {
		// A pool: its instances' state is keyed apart from any host app's.
		s.name, s.pattern = app.Name, poolPattern(app.Name)
	}
	s.nameValue = s.name
	if err != nil {
		return optionError("host", err)
	}
	if err := checkPoolName(app); err != nil {
		return err
	}
	if s.splitting, err = app.Splitting.compile(); err != nil {
		return err
	}
	if s.mirroring, err = app.Mirroring.compile(); err != nil {
		return err
	}
	if len(s.splitting.pools) > 0 {
		if err := checkSplitter(app); err != nil {
			return err
		}
	}
	if s.strategyName, s.strategy, err = app.Selection.compile(); err != nil {
		return err
	}
	s.observer, _ = s.strategy.(strategy.Observer)
	if err := app.Stickiness.check(); err != nil {
		return err
	}
	s.flush = durationOr(app.FlushInterval, 0)
	if s.timeout, err = positive(app.Timeout, DefaultTimeout); err != nil {
		return optionError("timeout", err)
	}
	interval, err := positive(app.HealthCheckCooldown, DefaultHealthCheckCooldown)
	if err != nil {
		return optionError("health_check_cooldown", err)
	}
	if app.HealthURI != "" {
		if s.healthURI, err = parseHealthURI(app.HealthURI); err != nil {
			return optionError("health_uri", err)
		}
	}
	if s.health, err = app.ActiveHealth.compile(s.healthURI != nil || app.HealthGRPC != nil, interval, s.timeout); err != nil {
		return err
	}
	if s.passive, s.panic, err = app.PassiveHealth.compile(); err != nil {
		return err
	}
	s.passive.InitiallyUnhealthy = app.InitiallyUnhealthy
	if s.passive.SlowStart, err = nonNegative(app.SlowStart); err != nil {
		return optionError("slow_start", err)
	}
	if s.retry, err = app.RetryPolicy.compile(); err != nil {
		return err
	}
	if s.limits, err = app.Overload.compile(); err != nil {
		return err
	}
	if s.outliers, err = app.OutlierDetection.compile(); err != nil {
		return err
	}
	if s.hedge, err = app.Hedging.compile(); err != nil {
		return err
	}
	if s.discovery, err = app.Discovery.compile(); err != nil {
		return err
	}
	if s.failover, err = app.Tiers.compile(); err != nil {
		return err
	}
	if err := s.compileInstances(app.Instances, s.discovery.on || len(s.splitting.pools) > 0); err != nil {
		return err
	}
	if app.HealthGRPC != nil {
		if err := checkGRPCHealth(app, s); err != nil {
			return err
		}
		s.health.GRPC, s.health.GRPCService = true, app.HealthGRPC.Service
		s.health.Status = backend.StatusSet{}
	}
	s.healthKey = healthSettingsKey(app, s.health)
	return nil
}

// compileInstances checks the configured instances and compiles their
// URLs, weights and priorities; there may be none if others are discovered.
func (s *settings) compileInstances(instances []*InstanceConfig, discovered bool) error {
	if len(instances) == 0 && !discovered {
		return optionError("instances", ErrNoInstances)
	}
	s.urls = make([]*url.URL, 0, len(instances))
	s.weights = make([]int, 0, len(instances))
	s.priorities = make([]int, 0, len(instances))
	seen := make(map[string]int, len(instances))
	for i, ic := range instances {
		field := fmt.Sprintf("instances[%d].url", i)
		if ic == nil {
			return optionError(field, ErrInvalidURL)
		}
		u, err := parseInstanceURL(ic.URL)
		if err != nil {
			return optionError(field, err)
		}
		if j, dup := seen[u.String()]; dup {
			return optionError(field, fmt.Errorf("%w: %q is instances[%d] already; give it a weight instead", ErrDuplicateInstance, ic.URL, j))
		}
		seen[u.String()] = i
		weight := 1
		if ic.Weight != nil {
			if weight = *ic.Weight; weight < 0 || weight > backend.MaxWeight {
				return optionError(fmt.Sprintf("instances[%d].weight", i),
					fmt.Errorf("%w: want an integer from 0 to %d, got %d", ErrInvalidWeight, backend.MaxWeight, weight))
			}
		}
		priority, err := instancePriority(ic.Priority)
		if err != nil {
			return optionError(fmt.Sprintf("instances[%d].priority", i), err)
		}
		s.urls = append(s.urls, u)
		s.weights = append(s.weights, weight)
		s.priorities = append(s.priorities, priority)
	}
	return nil
}

// checkApp returns the error Provision would refuse app with, if any,
// without changing app: it provisions a copy. The Caddyfile and lbyaml
// adapters use it to refuse at adapt time, with a position, what their
// syntax cannot tell (values out of range, options that do not go
// together, duplicate instances); the field of its *fieldError says where.
func checkApp(app *App) error {
	_, err := app.compile()
	return err
}

// fieldError is a config error of an app's field.
type fieldError struct {
	app, field string
	err        error
	pool       bool // the app is a pool: messages say so
}

// optionError is the error of the option (the field named by its json
// tag, or a path such as "instances[2].url") of the app being provisioned.
func optionError(field string, err error) error {
	return &fieldError{field: field, err: err}
}

func (e *fieldError) Error() string {
	if e.pool {
		return fmt.Sprintf("pool %q: %s: %v", e.app, e.field, e.err)
	}
	return fmt.Sprintf("app %q: %s: %v", e.app, e.field, e.err)
}

func (e *fieldError) Unwrap() error { return e.err }

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
	if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c" {
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
