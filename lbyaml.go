package caddylb

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golb/caddy-lb/internal/yamljson"
	"gopkg.in/yaml.v3"
)

func init() {
	caddyconfig.RegisterAdapter("lbyaml", LBYAMLAdapter{})
}

// The adapted config's HTTP server: its name, and its address without a
// listen key (the standalone load balancer's).
const (
	lbyamlServer        = "lbyaml"
	lbyamlDefaultListen = ":8080"
)

// LBYAMLAdapter is the config adapter "lbyaml": it turns the config.yaml of
// the standalone load balancer into Caddy JSON, an HTTP server (on :8080 by
// default) whose one route is a load_balancer handler with the file's apps:
//
//	caddy run --config config.yaml --adapter lbyaml
//
// The top-level keys are apps, and optionally listen (the server's address)
// and admin (Caddy's admin listen address, "off", or a mapping of Caddy's
// admin options). Each app takes the options of App under their JSON names,
// and each instance those of InstanceConfig: the names are read from the
// structs' json tags, so a field added there is accepted here as it is.
// Values take the forms of their JSON, and a few more that YAML invites
// where a list of strings is wanted: numbers as their text
// (unhealthy_status: [502, 503]), and one value alone for a list of one
// (a header of health_headers, Host: example.com).
//
// Everything the load_balancer handler would refuse when the config is
// loaded (apart from what needs the network) is refused here, with the
// position in the file: "config.yaml:12:7: app "api.example.com": timeout:
// ...". Errors wrap the sentinel errors of this package where there is one.
type LBYAMLAdapter struct{}

// Adapt implements caddyconfig.Adapter. options may be nil (POST /load
// passes none); options["filename"] names the file in errors and warnings.
func (LBYAMLAdapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	file, _ := options["filename"].(string)
	switch file {
	case "":
		file = "lbyaml"
	case "-":
		file = "stdin"
	}
	a := &yamlAdapter{Decoder: yamljson.New(file, len(body))}
	a.Expect = "a mapping with apps (and optionally listen and admin)"
	a.Custom, a.DescribeType = a.custom, describeType
	cfg, err := a.adapt(body)
	if err != nil {
		return nil, a.warnings, err
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return nil, a.warnings, fmt.Errorf("%s: encoding the adapted config: %v", file, err)
	}
	return out, a.warnings, nil
}

// yamlAdapter is the state of one Adapt call: a yamljson.Decoder, with
// what is particular to the load balancer's apps.
type yamlAdapter struct {
	*yamljson.Decoder
	warnings []caddyconfig.Warning
}

// adapt reads the document and builds the Caddy config.
func (a *yamlAdapter) adapt(body []byte) (*caddy.Config, error) {
	root, err := a.Parse(body)
	if err != nil {
		return nil, err
	}
	root, err = a.Deref(root, 0)
	if err != nil {
		return nil, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, a.ErrAt(root, "", fmt.Errorf("want a mapping with apps (and optionally listen and admin), got %s", yamljson.DescribeNode(root)))
	}
	pairs, err := a.Pairs(root, 0)
	if err != nil {
		return nil, err
	}
	listen := lbyamlDefaultListen
	var admin *caddy.AdminConfig
	var apps *yaml.Node
	for _, p := range pairs {
		switch p.Name {
		case "apps":
			apps = p.Value
		case "listen":
			if listen, err = a.listen(p.Value); err != nil {
				return nil, err
			}
		case "admin":
			if admin, err = a.admin(p.Value); err != nil {
				return nil, err
			}
		default:
			return nil, a.ErrAt(p.Key, "", yamljson.UnknownKey(p.Name, []string{"apps", "listen", "admin"}))
		}
	}
	if apps == nil {
		return nil, a.ErrAt(root, "", fmt.Errorf("apps: %w: want a list of apps, each with a host and instances", ErrNoApps))
	}
	handler, err := a.apps(apps)
	if err != nil {
		return nil, err
	}

	var warn []caddyconfig.Warning
	server := &caddyhttp.Server{
		Listen: []string{listen},
		Routes: caddyhttp.RouteList{{
			HandlersRaw: []json.RawMessage{
				caddyconfig.JSONModuleObject(handler, "handler", handler.CaddyModule().ID.Name(), &warn),
			},
		}},
		// The standalone load balancer spoke plain HTTP.
		AutoHTTPS: &caddyhttp.AutoHTTPSConfig{Disabled: true},
	}
	httpApp := caddyhttp.App{Servers: map[string]*caddyhttp.Server{lbyamlServer: server}}
	cfg := &caddy.Config{
		Admin:   admin,
		AppsRaw: caddy.ModuleMap{"http": caddyconfig.JSON(httpApp, &warn)},
	}
	if len(warn) > 0 { // only an encoding failure, which is a bug
		return nil, fmt.Errorf("%s: encoding the adapted config: %s", a.File(), warn[0].Message)
	}
	return cfg, nil
}

// listen reads the listen key: a network address, as in a Caddy server's
// listen list.
func (a *yamlAdapter) listen(n *yaml.Node) (string, error) {
	n, err := a.Deref(n, 0)
	if err != nil {
		return "", err
	}
	v, err := a.Walk(n, reflect.TypeFor[string](), "listen", 0)
	if err != nil || v == nil {
		return lbyamlDefaultListen, err
	}
	listen := v.(string)
	if err := checkAddress(listen); err != nil {
		return "", a.ErrAt(n, "listen", fmt.Errorf("%v (want an address such as :8080 or 127.0.0.1:8080)", err))
	}
	return listen, nil
}

// checkAddress checks a Caddy network address to listen on: a port is
// needed but for Unix sockets and file descriptors.
func checkAddress(addr string) error {
	if _, err := caddy.ParseNetworkAddress(addr); err != nil {
		return err
	}
	network, _, port, err := caddy.SplitNetworkAddress(addr)
	if err != nil {
		return err
	}
	if port == "" && !caddy.IsUnixNetwork(network) && !caddy.IsFdNetwork(network) {
		return fmt.Errorf("no port in %q", addr)
	}
	return nil
}

// admin reads the admin key: Caddy's admin listen address, "off", or a
// mapping of Caddy's admin options under their JSON names.
func (a *yamlAdapter) admin(n *yaml.Node) (*caddy.AdminConfig, error) {
	n, err := a.Deref(n, 0)
	if err != nil {
		return nil, err
	}
	if n.Kind == yaml.MappingNode {
		v, err := a.Walk(n, reflect.TypeFor[caddy.AdminConfig](), "admin", 0)
		if err != nil {
			return nil, err
		}
		admin := new(caddy.AdminConfig)
		if err := yamljson.DecodeStrict(v, admin); err != nil {
			return nil, a.ErrAt(n, "admin", err)
		}
		return admin, nil
	}
	v, err := a.Walk(n, reflect.TypeFor[string](), "admin", 0)
	if err != nil || v == nil || v == "" {
		return nil, err // unset: Caddy's default
	}
	if v == "off" {
		return &caddy.AdminConfig{Disabled: true}, nil
	}
	if err := checkAddress(v.(string)); err != nil {
		return nil, a.ErrAt(n, "admin", fmt.Errorf("%v (want an address such as localhost:2019, or off)", err))
	}
	return &caddy.AdminConfig{Listen: v.(string)}, nil
}

// apps reads the list of apps into a handler, with every check the handler
// would make when provisioned short of the network.
func (a *yamlAdapter) apps(n *yaml.Node) (*Handler, error) {
	n, err := a.Deref(n, 0)
	if err != nil {
		return nil, err
	}
	if n.Kind != yaml.SequenceNode && !yamljson.IsNull(n) {
		return nil, a.ErrAt(n, "apps", fmt.Errorf("want a list of apps, got %s", yamljson.DescribeNode(n)))
	}
	if len(n.Content) == 0 {
		return nil, a.ErrAt(n, "apps", fmt.Errorf("%w: want a list of apps, each with a host and instances", ErrNoApps))
	}
	h := &Handler{Apps: make([]*App, 0, len(n.Content))}
	hosts := make(map[string]*yaml.Node) // normalized host → the app that has it
	pools := make(map[string]*yaml.Node) // pool name → the pool
	for i, node := range n.Content {
		app, err := a.app(i, node)
		if err != nil {
			return nil, err
		}
		// Provision refuses two apps with one host (or pools with one
		// name) too; here the error can say where the first one is.
		if app.isPool() {
			if prev, dup := pools[app.Name]; dup {
				return nil, a.ErrAt(a.lookup("name"), "",
					fmt.Errorf("name: %w: the pool at line %d has it", ErrDuplicatePool, prev.Line))
			}
			pools[app.Name] = a.Nodes[""]
			h.Apps = append(h.Apps, app)
			continue
		}
		pattern, _ := normalizeAppHost(app.Host) // checked by app
		if prev, dup := hosts[pattern]; dup {
			return nil, a.ErrAt(a.lookup("host"), "",
				fmt.Errorf("host: %w: the app at line %d already serves it", ErrDuplicateHost, prev.Line))
		}
		hosts[pattern] = a.Nodes[""]
		h.Apps = append(h.Apps, app)
	}
	// Splits and mirrors name pools of the file.
	for i, app := range h.Apps {
		for _, ref := range app.poolRefs() {
			if pools[ref.pool] == nil {
				return nil, fmt.Errorf("%s: apps[%d]: %s: %w %q: no pool of the file has that name", a.File(), i, ref.field, ErrUnknownPool, ref.pool)
			}
		}
	}
	return h, nil
}

// app reads and checks the i-th app.
func (a *yamlAdapter) app(i int, n *yaml.Node) (*App, error) {
	a.Nodes = make(map[string]*yaml.Node)
	a.Label = fmt.Sprintf("apps[%d]", i)
	n, err := a.Deref(n, 0)
	if err != nil {
		return nil, err
	}
	a.Nodes[""] = n
	if n.Kind != yaml.MappingNode {
		return nil, a.ErrAt(n, "", fmt.Errorf("want a mapping with host and instances, got %s", yamljson.DescribeNode(n)))
	}

	// Errors name the app as Provision does: by its host, or "*" for the
	// catch-all; by its index while the host is unknown or not a string
	// (walk reports that). A host written in the app is read before merge
	// keys are expanded, so that errors in those name the app too.
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k := n.Content[j]; k.Kind == yaml.ScalarNode && k.ShortTag() == "!!str" && k.Value == "host" {
			a.Label = a.appLabel(i, n.Content[j+1])
		}
	}
	pairs, err := a.Pairs(n, 0)
	if err != nil {
		return nil, err
	}
	var host, name *yaml.Node
	for _, p := range pairs {
		switch p.Name {
		case "host":
			host = p.Value
		case "name":
			name = p.Value
		}
	}
	a.Label = a.appLabel(i, host)
	if host == nil && name != nil && name.Kind == yaml.ScalarNode && name.ShortTag() == "!!str" {
		a.Label = appLabel(name.Value, true)
	}

	v, err := a.Walk(n, reflect.TypeFor[App](), "", 0)
	if err != nil {
		return nil, err
	}
	app := new(App)
	if err := yamljson.DecodeStrict(v, app); err != nil {
		return nil, a.ErrAt(n, "", err)
	}

	// The checks Provision makes; the field at fault says where.
	if err := checkApp(app); err != nil {
		at := n
		if fe, ok := errors.AsType[*fieldError](err); ok {
			at = a.lookup(fe.field)
		}
		return nil, fmt.Errorf("%s:%d:%d: %w", a.File(), at.Line, at.Column, err)
	}
	return app, nil
}

// appLabel is how errors name the i-th app, whose host is the node host
// (nil if it has none).
func (a *yamlAdapter) appLabel(i int, host *yaml.Node) string {
	if host == nil {
		return `app "*"`
	}
	v, err := a.Deref(host, 0)
	switch {
	case err != nil || !yamljson.IsNull(v) && (v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str"):
		return fmt.Sprintf("apps[%d]", i)
	case yamljson.IsNull(v):
		return `app "*"`
	}
	name := v.Value
	if pattern, err := normalizeAppHost(name); pattern == "" && err == nil {
		name = "*"
	}
	return fmt.Sprintf("app %q", name)
}

// lookup returns the node of a field path of the current app, or of the
// nearest enclosing field that is in the file, or the app.
func (a *yamlAdapter) lookup(path string) *yaml.Node {
	for {
		if n := a.Nodes[path]; n != nil {
			return n
		}
		if path == "" {
			return a.Nodes[""]
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			i = 0
		}
		path = path[:i]
	}
}

// custom checks durations (a yamljson.Decoder hook), saying what is wrong
// with a bad one, and warns of an integer without a unit (nanoseconds, as
// in JSON), likely meant as seconds.
func (a *yamlAdapter) custom(_ *yamljson.Decoder, n *yaml.Node, t reflect.Type, path string, depth int) (any, bool, error) {
	switch {
	case yamljson.IsNull(n):
		return nil, false, nil
	case t == reflect.TypeFor[*Duration]() && n.Kind == yaml.ScalarNode:
		v, err := a.Value(n, depth)
		if err != nil {
			return nil, true, err
		}
		b, _ := json.Marshal(v)
		var d Duration
		if err := json.Unmarshal(b, &d); err != nil {
			if _, ok := v.(string); ok {
				return nil, true, a.ErrAt(n, path, fmt.Errorf("bad duration value %q: %v", n.Value, err))
			}
			return nil, true, a.ErrAt(n, path, fmt.Errorf("want %s, got %s", describeType(t.Elem()), yamljson.DescribeNode(n)))
		}
		if ns, ok := v.(int64); ok && ns > 0 && ns < int64(time.Millisecond) {
			directive := path
			if a.Label != "" {
				directive = a.Label + ": " + path
			}
			a.warnings = append(a.warnings, caddyconfig.Warning{
				File:      a.File(),
				Line:      n.Line,
				Directive: directive,
				Message:   fmt.Sprintf("%d has no unit, so it is %d nanoseconds; write %ds for seconds", ns, ns, ns),
			})
		}
		return v, true, nil
	}
	return nil, false, nil
}

// describeType says what a value of the types of this package is, for
// messages.
func describeType(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return `a duration such as "10s", "1m30s" or "1d"`
	}
	return ""
}

// Interface guards
var _ caddyconfig.Adapter = LBYAMLAdapter{}
