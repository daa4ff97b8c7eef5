package caddylb

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("load_balancer", parseCaddyfile)
	// An order relative to a standard directive lets load_balancer be used
	// at the top level of a site without the `order` global option. Like
	// reverse_proxy it ends the chain, so it goes right before it: a
	// load_balancer with a matcher can take part of a site that
	// reverse_proxy serves otherwise.
	httpcaddyfile.RegisterDirectiveOrder("load_balancer", httpcaddyfile.Before, "reverse_proxy")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	load_balancer [<matcher>] {
//	    app <host> {
//	        strategy              <name>
//	        hash_key              client_ip|header:<name>|cookie:<name>|query:<name>|uri
//	        latency_decay         <duration>
//	        sticky_cookie         <name>
//	        sticky_cookie_secret  <secret>
//	        health_uri            <path>
//	        timeout               <duration>
//	        health_check_cooldown <duration>
//	        instances             <urls...>
//	        instance              <url> [weight <n>]
//	    }
//	    app ...
//	}
//
// or, for a single app that serves every host:
//
//	load_balancer [<matcher>] [<urls...>] {
//	    <app options, as in an app block>
//	}
//
// <host> is a host name, a one-label wildcard (*.example.com) or * for
// every host no other app claims. instances and instance may be repeated:
// each line adds to the app's instances, in the order of the lines;
// instance gives one URL and optionally its weight. The two forms do not
// mix: once there is an app block, instances and options go in app blocks
// only.
//
// Instance URLs are kept as written; Provision normalizes them. Everything
// Provision would reject is rejected here too, so that the error points at
// the Caddyfile line at fault.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.Next() { // the directive name
		return d.ArgErr()
	}
	p := &caddyfileParser{d: d, directive: d.Token(), hosts: make(map[string]caddyfile.Token)}
	if err := p.parse(); err != nil {
		return err
	}
	h.Apps = make([]*App, 0, len(p.apps))
	for _, a := range p.apps {
		h.Apps = append(h.Apps, a.app)
	}
	return nil
}

// parseCaddyfile is the load_balancer directive's setup function.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	lb := new(Handler)
	if err := lb.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return lb, nil
}

// appOptions sets an app's single-valued options from their one argument.
// instances and instance are handled apart: they take more arguments and
// may repeat.
var appOptions = map[string]func(app *App, arg string) error{
	"strategy":              setStrategy,
	"health_uri":            setHealthURI,
	"timeout":               setTimeout,
	"health_check_cooldown": setHealthCheckCooldown,
	"hash_key":              setHashKey,
	"latency_decay":         setLatencyDecay,
	"sticky_cookie":         setStickyCookie,
	"sticky_cookie_secret":  setStickyCookieSecret,
}

// appOptionNames lists the options of an app for error messages.
const appOptionNames = "strategy, health_uri, timeout, health_check_cooldown, instances, instance, " +
	"hash_key, latency_decay, sticky_cookie, sticky_cookie_secret"

// caddyfileParser reads one load_balancer directive.
type caddyfileParser struct {
	d         *caddyfile.Dispenser
	directive caddyfile.Token // load_balancer itself, where the shorthand app starts
	apps      []*appParser
	hosts     map[string]caddyfile.Token // normalized host → its app token, to catch duplicates

	// The form in use, so that the error for mixing both can say where
	// the other form began: the shorthand's catch-all app and what
	// introduced it, or the first app block.
	catchAll     *appParser
	catchAllFrom string
	firstApp     *appParser
}

// appParser is an app while its options are read.
type appParser struct {
	app  *App
	name string                     // for messages, as Provision names it: the host, or "*"
	tok  caddyfile.Token            // where the app begins, for errors found only at its end
	seen map[string]caddyfile.Token // single-valued options given so far, at their lines
}

// parse reads the directive's arguments and block.
func (p *caddyfileParser) parse() error {
	d := p.d
	if urls := d.RemainingArgs(); len(urls) > 0 {
		p.startCatchAll("instances given as arguments of load_balancer")
		if err := p.addInstances(p.catchAll, urls); err != nil {
			return err
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); {
		case opt == "app":
			if err := p.parseApp(); err != nil {
				return err
			}
		case isAppOption(opt):
			if p.firstApp != nil {
				return d.Errf("load_balancer: %s: app options cannot be mixed with app blocks (first: app %q at %s:%d); move it into an app block",
					opt, p.firstApp.name, p.firstApp.tok.File, p.firstApp.tok.Line)
			}
			if p.catchAll == nil {
				p.startCatchAll(fmt.Sprintf("app options directly in the load_balancer block (%s at %s:%d)", opt, d.File(), d.Line()))
			}
			if err := p.parseOption(p.catchAll); err != nil {
				return err
			}
		case p.catchAll != nil:
			return p.errf(p.catchAll, "unrecognized subdirective %q (want one of %s)", opt, appOptionNames)
		default:
			return d.Errf("load_balancer: unrecognized subdirective %q (want app or one of %s)", opt, appOptionNames)
		}
	}
	return p.finish()
}

// parseApp reads an app block; the cursor is on "app".
func (p *caddyfileParser) parseApp() error {
	d := p.d
	tok := d.Token()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.Errf("app: want one host (a host name, *.domain or *), got %s", countArgs(args))
	}
	host := args[0]
	if p.catchAll != nil {
		return d.Errf("app %q: app blocks cannot be mixed with %s; put every instance and option in an app block",
			host, p.catchAllFrom)
	}
	pattern, err := normalizeAppHost(host)
	if err != nil {
		return d.Errf("app %q: host: %w", host, err)
	}
	a := p.newApp(host, pattern, tok)
	if prev, dup := p.hosts[pattern]; dup {
		return p.errf(a, "host: %w: the app at %s:%d already serves it", ErrDuplicateHost, prev.File, prev.Line)
	}
	p.hosts[pattern] = tok
	if p.firstApp == nil {
		p.firstApp = a
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if !isAppOption(d.Val()) {
			return p.errf(a, "unrecognized subdirective %q (want one of %s)", d.Val(), appOptionNames)
		}
		if err := p.parseOption(a); err != nil {
			return err
		}
	}
	return nil
}

// parseOption reads one option line of app; the cursor is on its name.
func (p *caddyfileParser) parseOption(a *appParser) error {
	d := p.d
	opt := d.Val()
	args := d.RemainingArgs()
	switch opt {
	case "instances":
		if len(args) == 0 {
			return p.errf(a, "instances: want one or more URLs")
		}
		if err := p.addInstances(a, args); err != nil {
			return err
		}
	case "instance":
		if err := p.addInstance(a, args); err != nil {
			return err
		}
	default:
		if _, dup := a.seen[opt]; dup {
			return p.errf(a, "%s already specified", opt)
		}
		a.seen[opt] = d.Token()
		if len(args) != 1 {
			return p.errf(a, "%s: want 1 argument, got %s", opt, countArgs(args))
		}
		if err := appOptions[opt](a.app, args[0]); err != nil {
			return p.errf(a, "%s: %w", opt, err)
		}
	}
	// Without this, a block after an option would be read as more options
	// of the app, and fail with a puzzling message about "{".
	if d.NextBlock(d.Nesting()) {
		d.Prev() // back to the "{", on the option's line
		return p.errf(a, "%s: unexpected block: the option takes arguments only", opt)
	}
	return nil
}

// addInstances appends urls to the app's instances, as written.
func (p *caddyfileParser) addInstances(a *appParser, urls []string) error {
	for _, raw := range urls {
		if _, err := parseInstanceURL(raw); err != nil {
			return p.errf(a, "instances: %w", err)
		}
		a.app.Instances = append(a.app.Instances, &InstanceConfig{URL: raw})
	}
	return nil
}

// addInstance appends the instance of an instance line: a URL, and
// optionally "weight <n>".
func (p *caddyfileParser) addInstance(a *appParser, args []string) error {
	if len(args) != 1 && (len(args) != 3 || args[1] != "weight") {
		return p.errf(a, "instance: want a URL, optionally followed by weight <n>, got %s", countArgs(args))
	}
	if _, err := parseInstanceURL(args[0]); err != nil {
		return p.errf(a, "instance: %w", err)
	}
	ic := &InstanceConfig{URL: args[0]}
	if len(args) == 3 {
		w, err := strconv.Atoi(args[2])
		if err != nil || w < 0 || w > backend.MaxWeight {
			return p.errf(a, "instance: weight: %w: want an integer from 0 to %d, got %q", ErrInvalidWeight, backend.MaxWeight, args[2])
		}
		ic.Weight = &w
	}
	a.app.Instances = append(a.app.Instances, ic)
	return nil
}

// finish checks what can only be checked once the whole directive is read.
// Provision would refuse these too, but without a line to point at.
func (p *caddyfileParser) finish() error {
	if len(p.apps) == 0 {
		return errAt(p.directive, fmt.Errorf("load_balancer: %w: give instances as arguments, or app blocks", ErrNoApps))
	}
	for _, a := range p.apps {
		if len(a.app.Instances) == 0 {
			hint := "add an instances line to the app block"
			if a == p.catchAll {
				hint = "give them as arguments of load_balancer or on an instances line"
			}
			return errAt(a.tok, fmt.Errorf("app %q: instances: %w: %s", a.name, ErrNoInstances, hint))
		}
		if err := p.checkOptions(a); err != nil {
			return err
		}
	}
	return nil
}

// checkOptions refuses options that do not go with the app's strategy or
// with each other, at the line of the option at fault.
func (p *caddyfileParser) checkOptions(a *appParser) error {
	name := a.app.Strategy
	if name == "" {
		name = strategy.Default
	}
	opts := strategy.Options{HashKey: a.app.HashKey}
	if a.app.LatencyDecay != nil {
		opts.LatencyDecay = time.Duration(*a.app.LatencyDecay)
	}
	if _, err := strategy.NewWithOptions(name, opts); err != nil {
		tok := a.tok
		if oe, ok := errors.AsType[*strategy.OptionError](err); ok {
			if t, seen := a.seen[oe.Option]; seen {
				tok = t
			}
		}
		return errAt(tok, fmt.Errorf("app %q: %w", a.name, err))
	}
	if a.app.StickyCookieSecret != "" && a.app.StickyCookie == "" {
		return errAt(a.seen["sticky_cookie_secret"], fmt.Errorf("app %q: sticky_cookie_secret: %w: it signs the sticky_cookie, which is not set",
			a.name, ErrInapplicableOption))
	}
	return nil
}

// startCatchAll begins the app of the shorthand form; from says what began
// it, for the error if an app block follows.
func (p *caddyfileParser) startCatchAll(from string) {
	p.catchAll = p.newApp("", "", p.directive)
	p.catchAllFrom = from
}

// newApp adds an app with a checked host whose normalized form is pattern.
func (p *caddyfileParser) newApp(host, pattern string, tok caddyfile.Token) *appParser {
	a := &appParser{app: &App{Host: host}, name: host, tok: tok, seen: make(map[string]caddyfile.Token)}
	if pattern == "" {
		a.name = "*"
	}
	p.apps = append(p.apps, a)
	return a
}

// errf returns an error about app a at the current token, in the form
// Provision uses: `app "<name>": <option>: <problem>`.
func (p *caddyfileParser) errf(a *appParser, format string, args ...any) error {
	return p.d.WrapErr(fmt.Errorf("app %q: %w", a.name, fmt.Errorf(format, args...)))
}

// errAt is WrapErr at tok rather than at the current token.
func errAt(tok caddyfile.Token, err error) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.WrapErr(err)
}

// countArgs describes the arguments of a line that has the wrong number.
func countArgs(args []string) string {
	if len(args) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d: %q", len(args), args)
}

func isAppOption(name string) bool {
	_, ok := appOptions[name]
	return ok || name == "instances" || name == "instance"
}

func setStrategy(app *App, name string) error {
	if _, err := strategy.New(name); err != nil {
		return err
	}
	app.Strategy = name
	return nil
}

func setHashKey(app *App, key string) error {
	if _, err := strategy.NewWithOptions("hash", strategy.Options{HashKey: key}); err != nil {
		if oe, ok := errors.AsType[*strategy.OptionError](err); ok {
			return oe.Err
		}
		return err
	}
	app.HashKey = key
	return nil
}

func setLatencyDecay(app *App, s string) (err error) {
	app.LatencyDecay, err = parsePositiveDuration(s)
	return err
}

func setStickyCookie(app *App, name string) error {
	if !validCookieName(name) {
		return fmt.Errorf("%w %q", ErrInvalidCookieName, name)
	}
	app.StickyCookie = name
	return nil
}

func setStickyCookieSecret(app *App, secret string) error {
	app.StickyCookieSecret = secret
	return nil
}

func setHealthURI(app *App, uri string) error {
	if _, err := parseHealthURI(uri); err != nil {
		return err
	}
	app.HealthURI = uri
	return nil
}

func setTimeout(app *App, s string) (err error) {
	app.Timeout, err = parsePositiveDuration(s)
	return err
}

func setHealthCheckCooldown(app *App, s string) (err error) {
	app.HealthCheckCooldown, err = parsePositiveDuration(s)
	return err
}

// parsePositiveDuration parses a Caddy duration ("10s", "1m30s", "1d");
// zero and negative ones make no sense for a timeout or an interval.
func parsePositiveDuration(s string) (*Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("bad duration value %q: %v", s, err)
	}
	if dur <= 0 {
		return nil, fmt.Errorf("%w, got %q", ErrInvalidDuration, s)
	}
	v := Duration(dur)
	return &v, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
