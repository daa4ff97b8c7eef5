package caddylb

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
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
	return fmt.Sprintf("%s: %s: %v", appLabel(e.app, e.pool), e.field, e.err)
}

func (e *fieldError) Unwrap() error { return e.err }
