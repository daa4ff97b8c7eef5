package caddylb

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

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
//	        timeout               <duration>
//	        instances             <urls...>
//	        instance              <url> [weight <n>]
//
//	        # active health checks
//	        health_uri            <path>
//	        health_check_cooldown <duration>
//	        health_method         <method>
//	        health_headers {
//	            <name> <values...>
//	        }
//	        health_port           <port>
//	        health_status         <code|class...>
//	        health_body           <regexp>
//	        health_passes         <n>
//	        health_fails          <n>
//	        initially_unhealthy
//
//	        # passive health checks
//	        max_fails             <n>
//	        unhealthy_status      <code|class...>
//	        fail_duration         <duration>
//	        max_fail_duration     <duration>
//	        max_ejected_percent   <percent>
//	        panic_threshold       <percent>
//	        slow_start            <duration>
//
//	        # retries
//	        retries               <n>
//	        try_duration          <duration>
//	        retry_budget_percent  <percent>
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
// instance gives one URL and optionally its weight. Every other option may
// be given once per app. The two forms do not mix: once there is an app
// block, instances and options go in app blocks only.
//
// The options are those of App, under their JSON names. Statuses are codes
// (503) or classes (5xx). Each line of health_headers is a header name
// (Host sets the Host header) and one or more values; names are
// canonicalized (x-probe is X-Probe), and lines with the same name add
// values. initially_unhealthy takes no argument. max_fails and retries
// may be 0 (off), and so may slow_start and try_duration; percentages go
// from 0 to 100; the other counts and durations must be above 0. The
// options of active health checks from health_method to
// initially_unhealthy need health_uri.
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
// may repeat; so are the options of listOptions, initially_unhealthy and
// health_headers.
var appOptions = map[string]func(app *App, arg string) error{
	"strategy":              setStrategy,
	"health_uri":            setHealthURI,
	"timeout":               setTimeout,
	"health_check_cooldown": setHealthCheckCooldown,
	"hash_key":              setHashKey,
	"latency_decay":         setLatencyDecay,
	"sticky_cookie":         setStickyCookie,
	"sticky_cookie_secret":  setStickyCookieSecret,
	"health_method":         setHealthMethod,
	"health_port":           setHealthPort,
	"health_body":           setHealthBody,
	"health_passes":         setHealthPasses,
	"health_fails":          setHealthFails,
	"max_fails":             setMaxFails,
	"fail_duration":         setFailDuration,
	"max_fail_duration":     setMaxFailDuration,
	"max_ejected_percent":   setMaxEjectedPercent,
	"panic_threshold":       setPanicThreshold,
	"retries":               setRetries,
	"try_duration":          setTryDuration,
	"retry_budget_percent":  setRetryBudgetPercent,
	"slow_start":            setSlowStart,
}

// listOptions set an app's options that take one or more arguments, once.
var listOptions = map[string]func(app *App, args []string) error{
	"health_status":    setHealthStatus,
	"unhealthy_status": setUnhealthyStatus,
}

// The options that take no arguments, and the one that takes a block.
const (
	optInitiallyUnhealthy = "initially_unhealthy"
	optHealthHeaders      = "health_headers"
)

// appOptionNames lists the options of an app for error messages.
const appOptionNames = "strategy, health_uri, timeout, health_check_cooldown, instances, instance, " +
	"hash_key, latency_decay, sticky_cookie, sticky_cookie_secret, " +
	"health_method, health_headers, health_port, health_status, health_body, health_passes, health_fails, initially_unhealthy, " +
	"max_fails, unhealthy_status, fail_duration, max_fail_duration, max_ejected_percent, panic_threshold, " +
	"retries, try_duration, retry_budget_percent, slow_start"

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
		switch set := listOptions[opt]; {
		case opt == optHealthHeaders:
			return p.parseHealthHeaders(a, args)
		case opt == optInitiallyUnhealthy:
			if len(args) != 0 {
				return p.errf(a, "%s: want no arguments, got %s", opt, countArgs(args))
			}
			a.app.InitiallyUnhealthy = true
		case set != nil:
			if len(args) == 0 {
				return p.errf(a, "%s: want one or more statuses (codes such as 503, or classes such as 5xx), got none", opt)
			}
			if err := set(a.app, args); err != nil {
				return p.errf(a, "%s: %w", opt, err)
			}
		default:
			if len(args) != 1 {
				return p.errf(a, "%s: want 1 argument, got %s", opt, countArgs(args))
			}
			if err := appOptions[opt](a.app, args[0]); err != nil {
				return p.errf(a, "%s: %w", opt, err)
			}
		}
	}
	// Without this, a block after an option would be read as more options
	// of the app, and fail with a puzzling message about "{".
	if d.NextBlock(d.Nesting()) {
		d.Prev() // back to the "{", on the option's line
		return p.errf(a, "%s: unexpected block: only %s takes one", opt, optHealthHeaders)
	}
	return nil
}

// parseHealthHeaders reads the block of health_headers, as reverse_proxy's:
// each line a header name and its values; the cursor is on the option's
// last token. Names are canonicalized, so that lines naming one header in
// different cases add to it.
func (p *caddyfileParser) parseHealthHeaders(a *appParser, args []string) error {
	d := p.d
	if len(args) != 0 {
		return p.errf(a, "%s: want a block of header lines, not arguments (got %s)", optHealthHeaders, countArgs(args))
	}
	headers := make(http.Header)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		values := d.RemainingArgs()
		if len(values) == 0 {
			return p.errf(a, "%s: %s: want one or more values", optHealthHeaders, name)
		}
		key := http.CanonicalHeaderKey(name)
		if _, err := checkHeaders(http.Header{key: append(headers[key], values...)}); err != nil {
			return p.errf(a, "%s: %w", optHealthHeaders, err)
		}
		if d.NextBlock(d.Nesting()) {
			d.Prev() // back to the "{", on the header's line
			return p.errf(a, "%s: %s: unexpected block: a header line takes values only", optHealthHeaders, name)
		}
		headers[key] = append(headers[key], values...)
	}
	if len(headers) == 0 {
		return errAt(a.seen[optHealthHeaders], fmt.Errorf("app %q: %s: want a block with a line per header: <name> <values...>", a.name, optHealthHeaders))
	}
	a.app.HealthHeaders = headers
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

// checkOptions refuses what Provision would refuse of the app as a whole
// (options that do not go with its strategy or with each other, the same
// instance twice), at the line of the option at fault, or else of the app.
func (p *caddyfileParser) checkOptions(a *appParser) error {
	err := checkApp(a.app)
	if err == nil {
		return nil
	}
	tok := a.tok
	if fe, ok := errors.AsType[*fieldError](err); ok {
		if t, seen := a.seen[fe.field]; seen {
			tok = t
		}
	}
	return errAt(tok, err)
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
	_, single := appOptions[name]
	_, list := listOptions[name]
	return single || list || name == "instances" || name == "instance" ||
		name == optInitiallyUnhealthy || name == optHealthHeaders
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

func setHealthMethod(app *App, m string) error {
	if m == "" { // Provision's "unset": it would not survive JSON
		return fmt.Errorf("%w %q", ErrInvalidMethod, m)
	}
	if _, err := checkMethod(m); err != nil {
		return err
	}
	app.HealthMethod = m
	return nil
}

func setHealthPort(app *App, s string) error {
	port, err := strconv.Atoi(s)
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("%w: want 1 to 65535, got %q", ErrInvalidPort, s)
	}
	app.HealthPort = port
	return nil
}

func setHealthBody(app *App, expr string) error {
	if expr == "" { // Provision's "any body": it would not survive JSON
		return fmt.Errorf("%w: empty; leave health_body out to accept any body", ErrInvalidRegexp)
	}
	if _, err := compileBody(expr); err != nil {
		return err
	}
	app.HealthBody = expr
	return nil
}

func setHealthStatus(app *App, specs []string) error {
	if _, err := parseStatuses(specs); err != nil {
		return err
	}
	app.HealthStatus = specs
	return nil
}

func setUnhealthyStatus(app *App, specs []string) error {
	if _, err := parseStatuses(specs); err != nil {
		return err
	}
	app.UnhealthyStatus = specs
	return nil
}

func setHealthPasses(app *App, s string) (err error) {
	app.HealthPasses, err = parseCount(s, 1, MaxHealthStreak)
	return err
}

func setHealthFails(app *App, s string) (err error) {
	app.HealthFails, err = parseCount(s, 1, MaxHealthStreak)
	return err
}

func setMaxFails(app *App, s string) error {
	n, err := parseCount(s, 0, MaxHealthStreak)
	if err != nil {
		return err
	}
	app.MaxFails = &n
	return nil
}

func setRetries(app *App, s string) error {
	n, err := parseCount(s, 0, MaxRetries)
	if err != nil {
		return err
	}
	app.Retries = &n
	return nil
}

func setMaxEjectedPercent(app *App, s string) (err error) {
	app.MaxEjectedPercent, err = parsePercent(s)
	return err
}

func setRetryBudgetPercent(app *App, s string) (err error) {
	app.RetryBudgetPercent, err = parsePercent(s)
	return err
}

func setPanicThreshold(app *App, s string) error {
	n, err := parsePercent(s)
	if err != nil {
		return err
	}
	app.PanicThreshold = *n
	return nil
}

func setFailDuration(app *App, s string) (err error) {
	app.FailDuration, err = parsePositiveDuration(s)
	return err
}

func setMaxFailDuration(app *App, s string) (err error) {
	app.MaxFailDuration, err = parsePositiveDuration(s)
	return err
}

func setTryDuration(app *App, s string) (err error) {
	app.TryDuration, err = parseNonNegativeDuration(s)
	return err
}

func setSlowStart(app *App, s string) (err error) {
	app.SlowStart, err = parseNonNegativeDuration(s)
	return err
}

// parseCount parses an integer from lo to hi, with the check Provision
// makes. Unlike in JSON, 0 is never "unset" here: where lo is 1, 0 is
// refused rather than taken for the default.
func parseCount(s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%w: want an integer from %d to %d, got %q", ErrInvalidCount, lo, hi, s)
	}
	if _, err := checkCount(n, lo, hi); err != nil { // the check Provision makes
		return 0, err
	}
	return n, nil
}

// parsePercent parses an integer percentage, from 0 to 100.
func parsePercent(s string) (*int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 100 {
		return nil, fmt.Errorf("%w: want 0 to 100, got %q", ErrInvalidPercent, s)
	}
	if _, err := percent(&n, 0); err != nil { // the check Provision makes
		return nil, err
	}
	return &n, nil
}

// parseNonNegativeDuration parses a Caddy duration where 0 means off.
func parseNonNegativeDuration(s string) (*Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("bad duration value %q: %v", s, err)
	}
	if dur < 0 {
		return nil, fmt.Errorf("%w, got %q", ErrNegativeDuration, s)
	}
	v := Duration(dur)
	return &v, nil
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
