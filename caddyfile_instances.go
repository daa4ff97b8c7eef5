package caddylb

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile lines that give an app its instances: instances,
// instance, and dynamic (a source of instances).

// parseDynamic reads the dynamic line (and block) of app, as
// reverse_proxy's: dynamic <source> [<args...>] [{ ... }], the source's
// syntax being its module's. The cursor is on "dynamic".
func (p *caddyfileParser) parseDynamic(a *appParser) error {
	d := p.d
	if _, dup := a.seen["dynamic_upstreams"]; dup {
		return p.errf(a, "dynamic already specified")
	}
	a.seen["dynamic_upstreams"] = d.Token()
	if !d.NextArg() {
		return p.errf(a, "dynamic: want a source (a, srv, multi, etcd...)")
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.upstreams."+name)
	if err != nil {
		return p.errf(a, "dynamic: %w", err)
	}
	a.app.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(mod, "source", name, nil)
	return nil
}

// addInstances appends urls to the app's instances, as written.
func (p *caddyfileParser) addInstances(a *appParser, urls []string) {
	for _, raw := range urls {
		a.seen[fmt.Sprintf("instances[%d].url", len(a.app.Instances))] = p.d.Token()
		a.app.Instances = append(a.app.Instances, &InstanceConfig{URL: raw})
	}
}

// addInstance appends the instance of an instance line: a URL, and
// optionally "weight <n>" and "priority <n>", in either order.
func (p *caddyfileParser) addInstance(a *appParser, args []string) error {
	if len(args)%2 != 1 || len(args) > 5 {
		return p.errf(a, "instance: want a URL, optionally followed by weight <n> and priority <n>, got %s", countArgs(args))
	}
	ic := &InstanceConfig{URL: args[0]}
	i := len(a.app.Instances)
	a.seen[fmt.Sprintf("instances[%d].url", i)] = p.d.Token()
	for k := 1; k < len(args); k += 2 {
		name, value := args[k], args[k+1]
		var dst **int
		switch name {
		case "weight":
			dst = &ic.Weight
		case "priority":
			dst = &ic.Priority
		default:
			return p.errf(a, "instance: unknown setting %q (want weight <n> or priority <n>)", name)
		}
		if *dst != nil {
			return p.errf(a, "instance: %s already specified", name)
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			return p.errf(a, "instance: %s: want an integer, got %q", name, value)
		}
		*dst = &n
		a.seen[fmt.Sprintf("instances[%d].%s", i, name)] = p.d.Token()
	}
	a.app.Instances = append(a.app.Instances, ic)
	return nil
}
