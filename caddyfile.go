package caddylb

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/internal/jsonfields"
	"github.com/golb/caddy-lb/internal/tlsopt"
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
//	        instances <urls...>
//	        instance  <url> [weight <n>] [priority <n>]
//	        <option>  <value...>
//	        ...
//	    }
//	    app ...
//	    pool <name> {
//	        <app options, as in an app block>
//	    }
//	}
//
// or, for a single app that serves every host:
//
//	load_balancer [<matcher>] [<urls...>] {
//	    <app options, as in an app block>
//	}
//
// A pool is an app with a name instead of a host: it serves what apps
// split (split <pool> <weight> ...) or mirror (mirror <pool>) to it. Pool
// blocks may go with either form.
//
// <host> is a host name, a one-label wildcard (*.example.com) or * for
// every host no other app claims. instances and instance may be repeated:
// each line adds to the app's instances, in the order of the lines;
// instance gives one URL and optionally its weight and its priority (its
// failover tier: 0, the default, first; higher numbers are backups). The two forms do not
// mix: once there is an app block, instances and options go in app blocks
// only.
//
// The options are the fields of App (those of its groups included) under
// their JSON names, each given once: a string, an integer or a duration
// ("10s", "1m30s", "1d") as its one argument; statuses (health_status,
// unhealthy_status) as one or more arguments, codes (503) or classes
// (5xx); initially_unhealthy with no argument; health_headers as a block
// with a line per header, a name (Host sets the Host header) and one or
// more values (names are canonicalized, so x-probe is X-Probe, and lines
// with the same name add values).
//
// The parser reads the syntax; the values are checked where the JSON
// config's are (App.provision), and an error points at the Caddyfile line
// of the option at fault.
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

// appFields are the options an app block takes: the fields of App by their
// JSON names, but host (an app block's argument) and dynamic_upstreams
// (the dynamic line's); instance lines add to instances.
var appFields = jsonfields.Of(reflect.TypeFor[App]())

// notOptions are fields of App that are no option of their own name.
var notOptions = map[string]bool{"host": true, "name": true, "dynamic_upstreams": true, "tls": true}

// appOptionNames lists the options of an app, for error messages.
var appOptionNames = strings.Join(append(append(slices.DeleteFunc(appFields.Names(), func(n string) bool { return notOptions[n] }),
	"instance", "dynamic"), tlsopt.Options...), ", ")

// isAppOption reports whether name is an option of an app block.
func isAppOption(name string) bool {
	_, ok := appFields.ByName[name]
	return (ok && !notOptions[name]) || name == "instance" || name == "dynamic" || tlsopt.IsOption(name)
}

// caddyfileParser reads one load_balancer directive.
type caddyfileParser struct {
	d         *caddyfile.Dispenser
	directive caddyfile.Token // load_balancer itself, where the shorthand app starts
	apps      []*appParser
	hosts     map[string]caddyfile.Token // normalized host → its app token, to catch duplicates
	pools     map[string]caddyfile.Token // pool name → its token

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
	name string          // for messages, as Provision names it: the host, or "*", or the pool's name
	pool bool            // a pool block
	tok  caddyfile.Token // where the app begins, for errors found only at its end
	// The lines of the options given so far, by field path (as a
	// fieldError names it: "timeout", "instances[2].weight").
	seen map[string]caddyfile.Token
}

// parse reads the directive's arguments and block.
func (p *caddyfileParser) parse() error {
	d := p.d
	if urls := d.RemainingArgs(); len(urls) > 0 {
		p.startCatchAll("instances given as arguments of load_balancer")
		p.addInstances(p.catchAll, urls)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); {
		case opt == "app":
			if err := p.parseApp(); err != nil {
				return err
			}
		case opt == "pool":
			if err := p.parsePool(); err != nil {
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
			return d.Errf("load_balancer: unrecognized subdirective %q (want app, pool or one of %s)", opt, appOptionNames)
		}
	}
	return p.finish()
}

// parseApp reads an app block; the cursor is on "app".
func (p *caddyfileParser) parseApp() error {
	d := p.d
	tok, host, err := p.blockName("one host (a host name, *.domain or *)")
	if err != nil {
		return err
	}
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
	return p.parseOptions(a)
}

// parsePool reads a pool block, an app with a name and no host (it serves
// what apps split or mirror to it); the cursor is on "pool".
func (p *caddyfileParser) parsePool() error {
	tok, name, err := p.blockName("one name")
	if err != nil {
		return err
	}
	if prev, dup := p.pools[name]; dup {
		return p.d.Errf("pool %q: name: %v: the pool at %s:%d has it", name, ErrDuplicatePool, prev.File, prev.Line)
	}
	if p.pools == nil {
		p.pools = make(map[string]caddyfile.Token)
	}
	p.pools[name] = tok
	a := &appParser{app: &App{Name: name}, name: name, pool: true, tok: tok, seen: make(map[string]caddyfile.Token)}
	p.apps = append(p.apps, a)
	return p.parseOptions(a)
}

// blockName reads the one argument of an app or pool block (want says
// what it is, for the error); the cursor is on the block's keyword.
func (p *caddyfileParser) blockName(want string) (caddyfile.Token, string, error) {
	d := p.d
	tok := d.Token()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return tok, "", d.Errf("%s: want %s, got %s", tok.Text, want, countArgs(args))
	}
	return tok, args[0], nil
}

// parseOptions reads the option lines of the block of app or pool a.
func (p *caddyfileParser) parseOptions(a *appParser) error {
	d := p.d
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
	if opt == "dynamic" {
		return p.parseDynamic(a)
	}
	if tlsopt.IsOption(opt) {
		if _, dup := a.seen[opt]; dup && opt != "tls_trust_pool" {
			return p.errf(a, "%s already specified", opt)
		}
		a.seen[opt] = d.Token()
		if err := tlsopt.Set(&a.app.TLS, opt, d.RemainingArgs()); err != nil {
			return p.errf(a, "%v", err)
		}
		if d.NextBlock(d.Nesting()) {
			d.Prev()
			return p.errf(a, "%s: unexpected block", opt)
		}
		return nil
	}
	args := d.RemainingArgs()
	switch opt {
	case "instances":
		if len(args) == 0 {
			return p.errf(a, "instances: want one or more URLs")
		}
		p.addInstances(a, args)
	case "instance":
		if err := p.addInstance(a, args); err != nil {
			return err
		}
	default:
		if _, dup := a.seen[opt]; dup {
			return p.errf(a, "%s already specified", opt)
		}
		a.seen[opt] = d.Token()
		field := reflect.ValueOf(a.app).Elem().FieldByIndex(appFields.ByName[opt].Index)
		if field.Type() == reflect.TypeFor[http.Header]() {
			return p.parseHeaders(a, opt, args, field)
		}
		if err := setOption(field, args); err != nil {
			return p.errf(a, "%s: %w", opt, err)
		}
	}
	// Without this, a block after an option would be read as more options
	// of the app, and fail with a puzzling message about "{".
	if d.NextBlock(d.Nesting()) {
		d.Prev() // back to the "{", on the option's line
		return p.errf(a, "%s: unexpected block: only a header option takes one", opt)
	}
	return nil
}

// finish checks the apps, once the whole directive is read, with
// App.provision's checks: an error points at the line of the option at
// fault, or else at the app's.
func (p *caddyfileParser) finish() error {
	if len(p.apps) == 0 {
		return errAt(p.directive, fmt.Errorf("load_balancer: %w: give instances as arguments, or app blocks", ErrNoApps))
	}
	for _, a := range p.apps {
		err := checkApp(a.app)
		switch fe, ok := errors.AsType[*fieldError](err); {
		case err == nil:
		case errors.Is(err, ErrNoInstances):
			hint := "add an instances line to the app block"
			if a == p.catchAll {
				hint = "give them as arguments of load_balancer or on an instances line"
			}
			if a.pool {
				hint = "add an instances line to the pool block"
			}
			return errAt(a.tok, fmt.Errorf("%s: instances: %w: %s", a.label(), ErrNoInstances, hint))
		case ok && a.seen[fe.field].Text != "":
			return errAt(a.seen[fe.field], err)
		default:
			return errAt(a.tok, err)
		}
	}
	return p.checkPoolNames()
}

// checkPoolNames refuses a split or mirror that names no pool block, at
// its line (Provision would refuse it too, without one).
func (p *caddyfileParser) checkPoolNames() error {
	for _, a := range p.apps {
		for _, ref := range a.app.poolRefs() {
			if _, ok := p.pools[ref.pool]; !ok {
				option, _, _ := strings.Cut(ref.field, "[")
				return errAt(a.seen[option], fmt.Errorf("%s: %s: %w %q: no pool block has that name", a.label(), ref.field, ErrUnknownPool, ref.pool))
			}
		}
	}
	return nil
}

// label names a in messages: app "host" or pool "name".
func (a *appParser) label() string { return appLabel(a.name, a.pool) }

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
	return p.d.WrapErr(fmt.Errorf("%s: %w", a.label(), fmt.Errorf(format, args...)))
}

// errAt is WrapErr at tok rather than at the current token.
func errAt(tok caddyfile.Token, err error) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.WrapErr(err)
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
