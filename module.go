// Package caddylb is the load_balancer handler for Caddy: it routes each
// request by its Host to an app, a pool of backend instances, picks a
// healthy instance with the app's strategy and proxies the request to it.
//
// Instances are checked actively (a request for a health URI, on an
// interval) and passively (failures of real requests eject them for a
// while); a request an instance failed is retried on another when that is
// safe. An instance's state lives across config reloads that keep it (see
// instances.go). It is shown on Caddy's admin endpoint at
// GET /api/v1/loadBalancers/report, where instances can be drained, and
// every config error names the app and the field at fault.
package caddylb

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/internal/running"

	"github.com/golb/caddy-lb/report"
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

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.load_balancer",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision compiles each app's options, checking them, and builds the
// apps. Their instances' live state is shared with the configs before and
// after this one (see sharedInstance); once Caddy runs this config, its
// settings apply to it and health checks start, if they have not already.
// Any error names the app and the field at fault. A handler without apps
// is left for Validate to refuse.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.ctx = ctx
	if h.checkApps() != nil {
		return nil // nothing to build: Validate refuses the config
	}
	for _, app := range h.Apps {
		if err := app.provision(); err != nil {
			return err
		}
		if app.isPool() {
			continue // served through the apps that split or mirror to it
		}
		if err := h.router.add(app.pattern, app); err != nil {
			return fmt.Errorf("app %q: host: %w: another app already serves it", app.name, err)
		}
	}
	if err := h.resolvePools(); err != nil {
		return err
	}

	var err error
	if h.events, err = loadEvents(ctx); err != nil {
		return err
	}
	if err := h.loadFleet(ctx); err != nil {
		return err
	}
	for _, app := range h.Apps {
		if err := app.loadSource(ctx); err != nil {
			return err
		}
		if err := app.loadTLS(ctx); err != nil {
			return err
		}
		app.attach(h.logger, ctx.Done(), h.onChange(app), h.onTierChange(app))
		if app.dynamic != nil {
			app.subscribe()
		}
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

// Validate reports what makes the config unusable as a whole: no apps, or
// an app left empty. (Each app's own options are checked as Provision
// compiles them, and their errors name the app and the field.)
func (h *Handler) Validate() error { return h.checkApps() }

// checkApps checks that the handler has apps, and none of them null.
func (h *Handler) checkApps() error {
	if len(h.Apps) == 0 {
		return fmt.Errorf("apps: %w", ErrNoApps)
	}
	for i, app := range h.Apps {
		if app == nil {
			return fmt.Errorf("apps[%d]: %w", i, ErrNoInstances)
		}
	}
	return nil
}

// adopt makes this config the one in charge of its instances: their
// weights, policies and health check settings are its own from now on, and
// it watches its apps' sources. (Changes of their state are logged and
// emitted as its events from the moment it runs, see
// sharedInstance.notify.)
func (h *Handler) adopt() {
	now := backend.Now()
	for _, app := range h.Apps {
		app.adopt(now, h.logger)
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
		if running := running.Config(); running != nil && running == config {
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
		if app.dynamic != nil {
			app.unsubscribe()
		}
		if app.mirror != nil {
			app.mirror.close()
		}
		if app.transport != nil {
			app.retired.Store(true)
			app.closeIdle()
		}
		app.release()
	}
	return nil
}

// ServeHTTP proxies r to an instance of the app that serves its host.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	app := h.router.match(r.Host)
	if app == nil {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("%w %q", ErrNoApp, r.Host))
	}
	return app.route(w, r)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ report.Source               = (*Handler)(nil)
)
