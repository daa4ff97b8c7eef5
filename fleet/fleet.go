// Package fleet shares health checks across a fleet of Caddy processes
// that balance the same instances, through etcd and without a control
// plane: the Caddy app load_balancer_fleet.
//
// Each process joins the fleet under a lease (its member key, kept fresh
// by a heartbeat; a process that dies leaves when its lease expires).
// Each instance is probed by a few members, its probers, chosen by
// rendezvous hashing of the instance over the live members, so that a
// member coming or going moves only the instances it takes or had. A
// prober writes each change of the instance's state to etcd, under its
// lease; every other member follows the verdicts of the instance's
// probers instead of probing it, as long as they are fresh (a prober
// heard from within three check intervals). Without fresh verdicts, or
// while etcd cannot be reached, a member probes the instance itself, as
// without a fleet. Passive checks, ejection and max_requests stay each
// member's own: real traffic is per member.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/internal/etcdclient"
	"github.com/golb/caddy-lb/report"
)

func init() {
	caddy.RegisterModule(new(App))
	httpcaddyfile.RegisterGlobalOption(ModuleName, parseGlobalOption)
}

// ModuleName is the app's name: its key in the config's apps, and its
// Caddyfile global option.
const ModuleName = "load_balancer_fleet"

// Defaults of the options.
const (
	DefaultPrefix    = "/caddy-lb/fleet/"
	DefaultProbers   = 2
	DefaultLeaseTTL  = 10 * time.Second
	DefaultHeartbeat = time.Second
)

// ErrBadOption is an option of the fleet the app refuses.
var ErrBadOption = errors.New("invalid fleet option")

// App is the load_balancer_fleet app: this process's membership of a
// fleet, which every load_balancer handler of the config uses for the
// active health checks of its apps.
type App struct {
	// How to reach the etcd cluster that holds the fleet: endpoints,
	// dial_timeout, username, password, tls (as the etcd source of
	// dynamic instances takes them).
	etcdclient.Config

	// The key prefix of the fleet in etcd; members and verdicts are kept
	// under it. Every member of a fleet has the same. Default:
	// /caddy-lb/fleet/.
	Prefix string `json:"prefix,omitempty"`

	// This process's name in the fleet, unique in it: letters, digits and
	// ".-_:". A process that restarts under the same name takes over the
	// same instances (it waits, probing everything itself, until the
	// lease of its last run has expired). Default: the host name.
	Node string `json:"node,omitempty"`

	// How many members probe each instance, 0 to 16. 0 shares nothing:
	// every member probes every instance, as without a fleet. Default: 2.
	Probers *int `json:"probers,omitempty"`

	// The lease of the membership: a member that stops (killed, cut off)
	// leaves the fleet this long after its last keep-alive, and others
	// take its instances over. Whole seconds, at least 2s. Default: 10s.
	LeaseTTL caddy.Duration `json:"lease_ttl,omitempty"`

	// How often a member tells the others it is alive (it writes its
	// member key). A verdict stays fresh for three check intervals (or
	// three heartbeats, if longer) after the prober was last heard from.
	// Below lease_ttl. Default: 1s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	settings settings
	ctx      caddy.Context
	logger   *zap.Logger
	events   *caddyevents.App
	session  *Session
	stop     []func()
	unmetric func()
}

// settings is what Provision compiles the options into.
type settings struct {
	key     string // in sessions: what makes two configs' fleets the same
	node    string
	prefix  string
	probers int
	ttl     time.Duration
	beat    time.Duration
	timeout time.Duration
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  ModuleName,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the options; it connects to nothing (Start does).
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx, a.logger = ctx, ctx.Logger()
	st, err := a.compile()
	if err != nil {
		return err
	}
	a.settings = st
	if ev, err := ctx.App("events"); err == nil {
		a.events = ev.(*caddyevents.App)
	}
	if a.unmetric, err = registerMetrics(ctx.GetMetricsRegistry(), a); err != nil {
		return fmt.Errorf("%s: registering metrics: %v", ModuleName, err)
	}
	return nil
}

// optionError is the error of the fleet's option.
func optionError(option string, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w: %s", ModuleName, option, ErrBadOption, fmt.Sprintf(format, args...))
}

func (a *App) compile() (settings, error) {
	st := settings{prefix: a.Prefix, node: a.Node, probers: DefaultProbers, ttl: DefaultLeaseTTL, beat: DefaultHeartbeat}
	if st.prefix == "" {
		st.prefix = DefaultPrefix
	}
	if !strings.HasPrefix(st.prefix, "/") || strings.ContainsAny(st.prefix, " \t\n") {
		return st, optionError("prefix", "want a key prefix such as %s, got %q", DefaultPrefix, a.Prefix)
	}
	if !strings.HasSuffix(st.prefix, "/") {
		st.prefix += "/"
	}
	if st.node == "" {
		host, err := os.Hostname()
		if err != nil {
			return st, optionError("node", "no node name given, and no host name: %v", err)
		}
		st.node = host
	}
	if !validName(st.node) {
		return st, optionError("node", "want letters, digits and .-_: only, got %q", st.node)
	}
	if a.Probers != nil {
		if st.probers = *a.Probers; st.probers < 0 || st.probers > 16 {
			return st, optionError("probers", "want an integer from 0 to 16, got %d", st.probers)
		}
	}
	if a.LeaseTTL != 0 {
		st.ttl = time.Duration(a.LeaseTTL)
		if st.ttl < 2*time.Second || st.ttl%time.Second != 0 {
			return st, optionError("lease_ttl", "want whole seconds, at least 2s, got %v", st.ttl)
		}
	}
	if a.Heartbeat != 0 {
		if st.beat = time.Duration(a.Heartbeat); st.beat <= 0 {
			return st, optionError("heartbeat", "must be positive, got %v", st.beat)
		}
	}
	if st.beat >= st.ttl {
		return st, optionError("heartbeat", "must be shorter than lease_ttl (%v), got %v", st.ttl, st.beat)
	}
	if a.DialTimeout < 0 {
		return st, optionError("dial_timeout", "must not be negative, got %v", time.Duration(a.DialTimeout))
	}
	st.timeout = a.Timeout()
	st.key = string(caddyconfig.JSON(a, nil))
	return st, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_:", c)) {
			return false
		}
	}
	return true
}

// sessions holds the live sessions, by their settings: a reload that
// keeps the fleet's config keeps its session (its lease, its membership).
var sessions = caddy.NewUsagePool()

// Start joins the fleet, or keeps the membership of the config before if
// it is the same fleet. It does not wait for etcd: until the node has
// joined, it probes every instance itself.
func (a *App) Start() error {
	v, _, err := sessions.LoadOrNew(a.settings.key, func() (caddy.Destructor, error) {
		// The client lives as long as the session, beyond this config.
		client, err := a.Config.New(a.ctx, a.logger, context.Background())
		if err != nil {
			return nil, fmt.Errorf("%s: %v", ModuleName, err)
		}
		return newSession(a.settings, client, a.logger), nil
	})
	if err != nil {
		return err
	}
	a.session = v.(*Session)
	a.stop = append(a.stop, a.session.Listen(a.onChange), report.RegisterFleet(a.ctx, a.Report))
	return nil
}

// Stop gives up this config's hold on the membership: the last config to
// hold it leaves the fleet.
func (a *App) Stop() error {
	for _, f := range a.stop {
		f()
	}
	a.stop = nil
	if a.session != nil {
		_, _ = sessions.Delete(a.settings.key)
	}
	return nil
}

// Cleanup unregisters the app's metrics.
func (a *App) Cleanup() error {
	if a.unmetric != nil {
		a.unmetric()
	}
	return nil
}

// Session returns the membership, once the app has started (nil before).
func (a *App) Session() *Session { return a.session }

// NodeName returns this process's name in the fleet.
func (a *App) NodeName() string { return a.settings.node }

// onChange logs nothing more (the session does) and emits
// load_balancer.fleet_member_joined or _left.
func (a *App) onChange(c Change) {
	if a.events == nil || a.ctx.Err() != nil {
		return
	}
	name := "load_balancer.fleet_member_left"
	if c.Joined {
		name = "load_balancer.fleet_member_joined"
	}
	a.events.Emit(a.ctx, name, map[string]any{"node": a.settings.node, "member": c.Node, "members": c.Members})
}

// Report describes the fleet as this node sees it.
func (a *App) Report() report.Fleet {
	s := a.session
	v := s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	f := report.Fleet{Node: s.node, Prefix: s.prefix, Probers: v.probers, Members: append([]string{}, v.names...), State: s.State()}
	for _, e := range v.entries {
		f.Instances++
		if e.probing {
			f.ProbedHere++
		}
	}
	if f.Instances > 0 {
		f.Share = float64(f.ProbedHere) / float64(f.Instances)
	}
	return f
}

// Of returns the fleet app of ctx's config, or nil if it has none (or ctx
// is a bare context, with no config).
func Of(ctx caddy.Context) (app *App, err error) {
	defer func() {
		if recover() != nil {
			app, err = nil, nil
		}
	}()
	v, err := ctx.AppIfConfigured(ModuleName)
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return v.(*App), nil
}

// parseGlobalOption reads the load_balancer_fleet global option:
//
//	load_balancer_fleet {
//	    endpoints  <urls...>
//	    prefix     <key prefix>
//	    node       <name>
//	    probers    <n>
//	    lease_ttl  <duration>
//	    heartbeat  <duration>
//	    dial_timeout, username, password, tls_* (as the etcd source's)
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	a := new(App)
	d.Next() // the option's name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "prefix", "node":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if opt == "prefix" {
				a.Prefix = d.Val()
			} else {
				a.Node = d.Val()
			}
		case "probers":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			var n int
			if _, err := fmt.Sscan(d.Val(), &n); err != nil || fmt.Sprint(n) != d.Val() {
				return nil, d.Errf("probers: want an integer, got %q", d.Val())
			}
			a.Probers = &n
		case "lease_ttl", "heartbeat":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return nil, d.Errf("%s: bad duration value %q: %v", opt, d.Val(), err)
			}
			if opt == "lease_ttl" {
				a.LeaseTTL = caddy.Duration(dur)
			} else {
				a.Heartbeat = caddy.Duration(dur)
			}
		default:
			ok, err := a.Config.UnmarshalOption(d, opt)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, d.Errf("unrecognized %s option %q (want prefix, node, probers, lease_ttl, heartbeat, %s)", ModuleName, opt, etcdclient.Options)
			}
		}
		if d.NextArg() {
			return nil, d.Errf("%s: too many arguments", opt)
		}
	}
	if _, err := a.compile(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return httpcaddyfile.App{Name: ModuleName, Value: caddyconfig.JSON(a, nil)}, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
