package caddylb

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

// Bounds on the work one document may cause. Aliases let a short document
// stand for a huge (or, with an alias inside its own anchor, infinite)
// tree. Without aliases, the nodes visited are a few per byte of the
// document; no config needs more than a few levels of nesting.
const (
	lbyamlMaxDepth     = 64
	lbyamlNodesPerByte = 64
	lbyamlMinNodes     = 1 << 14
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
// Values take the forms of their JSON, and a few more that YAML invites:
// status codes as integers (unhealthy_status: [502, 503]), and a header of
// health_headers with one value as that value (Host: example.com).
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
	a := &yamlAdapter{file: file, budget: lbyamlMinNodes + lbyamlNodesPerByte*len(body)}
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

// yamlAdapter is the state of one Adapt call.
type yamlAdapter struct {
	file     string
	warnings []caddyconfig.Warning
	budget   int // nodes left to visit, see lbyamlNodesPerByte

	// While an app is read: how errors name it (`app "api.example.com"`)
	// and the node of each field path in it ("timeout", "instances[1].url"),
	// so that errors found after decoding point at their line too.
	label string
	nodes map[string]*yaml.Node
}

// adapt reads the document and builds the Caddy config.
func (a *yamlAdapter) adapt(body []byte) (*caddy.Config, error) {
	root, err := a.parse(body)
	if err != nil {
		return nil, err
	}
	root, err = a.deref(root, 0)
	if err != nil {
		return nil, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, a.errAt(root, "", fmt.Errorf("want a mapping with apps (and optionally listen and admin), got %s", describeNode(root)))
	}
	pairs, err := a.pairs(root, 0)
	if err != nil {
		return nil, err
	}
	listen := lbyamlDefaultListen
	var admin *caddy.AdminConfig
	var apps *yaml.Node
	for _, p := range pairs {
		switch p.name {
		case "apps":
			apps = p.value
		case "listen":
			if listen, err = a.listen(p.value); err != nil {
				return nil, err
			}
		case "admin":
			if admin, err = a.admin(p.value); err != nil {
				return nil, err
			}
		default:
			return nil, a.errAt(p.key, "", unknownKey(p.name, []string{"apps", "listen", "admin"}))
		}
	}
	if apps == nil {
		return nil, a.errAt(root, "", fmt.Errorf("apps: %w: want a list of apps, each with a host and instances", ErrNoApps))
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
		return nil, fmt.Errorf("%s: encoding the adapted config: %s", a.file, warn[0].Message)
	}
	return cfg, nil
}

// yamlLine matches the position yaml.v3 gives some syntax errors: a line,
// no column.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// parse parses body as a single YAML document and returns its root node.
func (a *yamlAdapter) parse(body []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(body))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty config: want a mapping with apps (and optionally listen and admin)", a.file)
		}
		return nil, a.syntaxError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		at := &next
		if len(next.Content) > 0 {
			at = next.Content[0]
		}
		return nil, a.errAt(at, "", errors.New("a second YAML document: want one document only"))
	case !errors.Is(err, io.EOF):
		return nil, a.syntaxError(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("%s: want a mapping with apps (and optionally listen and admin)", a.file)
	}
	return doc.Content[0], nil
}

// yamlParserProblems are the syntax errors yaml.v3's parser (as opposed to
// its scanner) finds. For these it reports the line counted from 0.
var yamlParserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntaxError puts a yaml.v3 parse error in the file:line: form. yaml.v3
// never gives the column of a syntax error, and gives as its line the
// start of the block or flow collection being read when there is one.
func (a *yamlAdapter) syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		problem := msg[len(m[0]):]
		line, _ := strconv.Atoi(m[1])
		if yamlParserProblems[problem] {
			line++
		}
		return fmt.Errorf("%s:%d: invalid YAML: %s", a.file, line, problem)
	}
	return fmt.Errorf("%s: invalid YAML: %s", a.file, strings.TrimPrefix(msg, "yaml: "))
}

// listen reads the listen key: a network address, as in a Caddy server's
// listen list.
func (a *yamlAdapter) listen(n *yaml.Node) (string, error) {
	n, err := a.deref(n, 0)
	if err != nil {
		return "", err
	}
	v, err := a.walk(n, reflect.TypeFor[string](), "listen", 0)
	if err != nil || v == nil {
		return lbyamlDefaultListen, err
	}
	listen := v.(string)
	if err := checkAddress(listen); err != nil {
		return "", a.errAt(n, "listen", fmt.Errorf("%v (want an address such as :8080 or 127.0.0.1:8080)", err))
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
	n, err := a.deref(n, 0)
	if err != nil {
		return nil, err
	}
	if n.Kind == yaml.MappingNode {
		v, err := a.walk(n, reflect.TypeFor[caddy.AdminConfig](), "admin", 0)
		if err != nil {
			return nil, err
		}
		admin := new(caddy.AdminConfig)
		if err := decodeStrict(v, admin); err != nil {
			return nil, a.errAt(n, "admin", err)
		}
		return admin, nil
	}
	v, err := a.walk(n, reflect.TypeFor[string](), "admin", 0)
	if err != nil || v == nil || v == "" {
		return nil, err // unset: Caddy's default
	}
	if v == "off" {
		return &caddy.AdminConfig{Disabled: true}, nil
	}
	if err := checkAddress(v.(string)); err != nil {
		return nil, a.errAt(n, "admin", fmt.Errorf("%v (want an address such as localhost:2019, or off)", err))
	}
	return &caddy.AdminConfig{Listen: v.(string)}, nil
}

// apps reads the list of apps into a handler, with every check the handler
// would make when provisioned short of the network.
func (a *yamlAdapter) apps(n *yaml.Node) (*Handler, error) {
	n, err := a.deref(n, 0)
	if err != nil {
		return nil, err
	}
	if n.Kind != yaml.SequenceNode && !isNull(n) {
		return nil, a.errAt(n, "apps", fmt.Errorf("want a list of apps, got %s", describeNode(n)))
	}
	if len(n.Content) == 0 {
		return nil, a.errAt(n, "apps", fmt.Errorf("%w: want a list of apps, each with a host and instances", ErrNoApps))
	}
	h := &Handler{Apps: make([]*App, 0, len(n.Content))}
	hosts := make(map[string]*yaml.Node) // normalized host → the app that has it
	for i, node := range n.Content {
		app, err := a.app(i, node)
		if err != nil {
			return nil, err
		}
		// Provision refuses two apps with one host too; here the error can
		// say where the first one is.
		pattern, _ := normalizeAppHost(app.Host) // checked by app
		if prev, dup := hosts[pattern]; dup {
			return nil, a.errAt(a.lookup("host"), "",
				fmt.Errorf("host: %w: the app at line %d already serves it", ErrDuplicateHost, prev.Line))
		}
		hosts[pattern] = a.nodes[""]
		h.Apps = append(h.Apps, app)
	}
	return h, nil
}

// app reads and checks the i-th app.
func (a *yamlAdapter) app(i int, n *yaml.Node) (*App, error) {
	a.nodes = make(map[string]*yaml.Node)
	a.label = fmt.Sprintf("apps[%d]", i)
	n, err := a.deref(n, 0)
	if err != nil {
		return nil, err
	}
	a.nodes[""] = n
	if n.Kind != yaml.MappingNode {
		return nil, a.errAt(n, "", fmt.Errorf("want a mapping with host and instances, got %s", describeNode(n)))
	}

	// Errors name the app as Provision does: by its host, or "*" for the
	// catch-all; by its index while the host is unknown or not a string
	// (walk reports that). A host written in the app is read before merge
	// keys are expanded, so that errors in those name the app too.
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k := n.Content[j]; k.Kind == yaml.ScalarNode && k.ShortTag() == "!!str" && k.Value == "host" {
			a.label = a.appLabel(i, n.Content[j+1])
		}
	}
	pairs, err := a.pairs(n, 0)
	if err != nil {
		return nil, err
	}
	var host *yaml.Node
	for _, p := range pairs {
		if p.name == "host" {
			host = p.value
		}
	}
	a.label = a.appLabel(i, host)

	v, err := a.walk(n, reflect.TypeFor[App](), "", 0)
	if err != nil {
		return nil, err
	}
	app := new(App)
	if err := decodeStrict(v, app); err != nil {
		return nil, a.errAt(n, "", err)
	}

	// The checks Provision makes; the field at fault says where.
	if err := checkApp(app); err != nil {
		at := n
		if fe, ok := errors.AsType[*fieldError](err); ok {
			at = a.lookup(fe.field)
		}
		return nil, fmt.Errorf("%s:%d:%d: %w", a.file, at.Line, at.Column, err)
	}
	return app, nil
}

// appLabel is how errors name the i-th app, whose host is the node host
// (nil if it has none).
func (a *yamlAdapter) appLabel(i int, host *yaml.Node) string {
	if host == nil {
		return `app "*"`
	}
	v, err := a.deref(host, 0)
	switch {
	case err != nil || !isNull(v) && (v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str"):
		return fmt.Sprintf("apps[%d]", i)
	case isNull(v):
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
		if n := a.nodes[path]; n != nil {
			return n
		}
		if path == "" {
			return a.nodes[""]
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			i = 0
		}
		path = path[:i]
	}
}

// walk checks n against the Go type t the way encoding/json would decode
// its JSON form, and returns that JSON form (maps, slices, scalars). Keys
// of a struct must be the json names of its fields; errors point at the
// key or value at fault. path is the field path of n, for messages.
func (a *yamlAdapter) walk(n *yaml.Node, t reflect.Type, path string, depth int) (any, error) {
	if depth > lbyamlMaxDepth {
		return nil, a.errAt(n, path, errors.New("nested too deeply"))
	}
	n, err := a.deref(n, depth)
	if err != nil {
		return nil, err
	}
	if a.nodes != nil {
		a.nodes[path] = n
	}
	for t.Kind() == reflect.Pointer && !isLeaf(t) {
		t = t.Elem()
	}
	if isNull(n) {
		return nil, nil // as JSON null: the field keeps its default
	}
	switch {
	case isLeaf(t):
		return a.leaf(n, t, path, depth)

	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil, a.errAt(n, path, fmt.Errorf("want a mapping, got %s", describeNode(n)))
		}
		fields := jsonFields(t)
		pairs, err := a.pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			f, ok := fields.byName[p.name]
			if !ok {
				return nil, a.errAt(p.key, path, unknownKey(p.name, fields.names))
			}
			if obj[p.name], err = a.walk(p.value, f.Type, joinField(path, p.name), depth+1); err != nil {
				return nil, err
			}
		}
		return obj, nil

	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil, a.errAt(n, path, fmt.Errorf("want a list, got %s", describeNode(n)))
		}
		list := make([]any, len(n.Content))
		for i, e := range n.Content {
			if lbyamlStatusLists[path] {
				if code, ok, err := a.statusCode(e, depth+1); err != nil {
					return nil, err
				} else if ok {
					list[i] = code
					continue
				}
			}
			if list[i], err = a.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return nil, err
			}
		}
		return list, nil

	default: // a map with string keys
		if n.Kind != yaml.MappingNode {
			return nil, a.errAt(n, path, fmt.Errorf("want a mapping, got %s", describeNode(n)))
		}
		pairs, err := a.pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			if t == reflect.TypeFor[http.Header]() {
				if obj[p.name], err = a.headerValues(p.value, joinField(path, p.name), depth+1); err != nil {
					return nil, err
				}
				continue
			}
			if obj[p.name], err = a.walk(p.value, t.Elem(), joinField(path, p.name), depth+1); err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
}

// lbyamlStatusLists are the fields of an app that list HTTP statuses as
// strings ("503", "5xx"): there a code may also be written as an integer,
// as in unhealthy_status: [502, 503], which YAML reads as integers.
var lbyamlStatusLists = map[string]bool{"health_status": true, "unhealthy_status": true}

// lbyamlHeaderValueTags are the tags of the scalars a header value may be
// written as; it is taken as written ("X-Version: 2" sends "2").
var lbyamlHeaderValueTags = map[string]bool{"!!str": true, "!!int": true, "!!float": true, "!!bool": true}

// headerValues reads the values of a header (in health_headers): a list
// of them, or one without a list around it, as in "Host: example.com".
func (a *yamlAdapter) headerValues(n *yaml.Node, path string, depth int) ([]any, error) {
	n, err := a.deref(n, depth)
	if err != nil {
		return nil, err
	}
	if a.nodes != nil {
		a.nodes[path] = n
	}
	elems, list := []*yaml.Node{n}, n.Kind == yaml.SequenceNode
	if list {
		elems = n.Content
	}
	values := make([]any, len(elems))
	for i, e := range elems {
		at := path
		if list {
			at = fmt.Sprintf("%s[%d]", path, i)
		}
		if e, err = a.deref(e, depth+1); err != nil {
			return nil, err
		}
		if e.Kind != yaml.ScalarNode || !lbyamlHeaderValueTags[e.ShortTag()] {
			want := "a value or a list of values"
			if list {
				want = "a value"
			}
			return nil, a.errAt(e, at, fmt.Errorf("want %s, got %s", want, describeNode(e)))
		}
		values[i] = e.Value
	}
	return values, nil
}

// statusCode returns the string form of n if it is an integer, a status
// code in a list of lbyamlStatusLists; ok is false for any other node,
// which walk checks as usual.
func (a *yamlAdapter) statusCode(n *yaml.Node, depth int) (code string, ok bool, err error) {
	n, err = a.deref(n, depth)
	if err != nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		return "", false, err
	}
	var i int64
	if err := n.Decode(&i); err != nil {
		return "", false, nil // too large: walk says what is wrong
	}
	return strconv.FormatInt(i, 10), true, nil
}

// leaf converts n, a value of a type that decodes itself or is a plain
// scalar, and checks that its JSON form decodes into t.
func (a *yamlAdapter) leaf(n *yaml.Node, t reflect.Type, path string, depth int) (any, error) {
	v, err := a.value(n, depth)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, a.errAt(n, path, err)
	}
	err = json.Unmarshal(b, reflect.New(t).Interface())
	isDuration := t == reflect.TypeFor[Duration]() || t == reflect.TypeFor[*Duration]()
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
	case errors.As(err, &typeErr) || isDuration && n.Kind != yaml.ScalarNode:
		return nil, a.errAt(n, path, fmt.Errorf("want %s, got %s", describeType(t), describeNode(n)))
	case isDuration:
		return nil, a.errAt(n, path, fmt.Errorf("bad duration value %q: %v", n.Value, err))
	default:
		return nil, a.errAt(n, path, err)
	}
	// An integer is nanoseconds, as in JSON. A small one was likely meant
	// as seconds, as in "timeout: 10".
	if ns, ok := v.(int64); ok && isDuration && ns > 0 && ns < int64(time.Millisecond) {
		directive := path
		if a.label != "" {
			directive = a.label + ": " + path
		}
		a.warnings = append(a.warnings, caddyconfig.Warning{
			File:      a.file,
			Line:      n.Line,
			Directive: directive,
			Message:   fmt.Sprintf("%d has no unit, so it is %d nanoseconds; write %ds for seconds", ns, ns, ns),
		})
	}
	return v, nil
}

// value converts n to its JSON form without a type to check it against.
func (a *yamlAdapter) value(n *yaml.Node, depth int) (any, error) {
	if depth > lbyamlMaxDepth {
		return nil, a.errAt(n, "", errors.New("nested too deeply"))
	}
	n, err := a.deref(n, depth)
	if err != nil {
		return nil, err
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return a.scalar(n)
	case yaml.SequenceNode:
		list := make([]any, len(n.Content))
		for i, e := range n.Content {
			if list[i], err = a.value(e, depth+1); err != nil {
				return nil, err
			}
		}
		return list, nil
	case yaml.MappingNode:
		pairs, err := a.pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			if obj[p.name], err = a.value(p.value, depth+1); err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
	return nil, a.errAt(n, "", fmt.Errorf("unexpected %s", describeNode(n)))
}

// scalar converts a scalar node by its resolved tag.
func (a *yamlAdapter) scalar(n *yaml.Node) (v any, err error) {
	switch n.ShortTag() {
	case "!!null":
		return nil, nil
	case "!!bool":
		var b bool
		err = n.Decode(&b)
		v = b
	case "!!int":
		var i int64
		if err = n.Decode(&i); err == nil {
			return i, nil
		}
		var u uint64
		err = n.Decode(&u)
		v = u
	case "!!float":
		var f float64
		if err = n.Decode(&f); err == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			err = fmt.Errorf("%s is not a number JSON can hold", n.Value)
		}
		v = f
	default: // strings, timestamps and binary, left as the string they are
		var s string
		err = n.Decode(&s)
		v = s
	}
	if err != nil {
		return nil, a.errAt(n, "", fmt.Errorf("%s: %v", describeNode(n), strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	return v, nil
}

// yamlPair is a key and its value in a mapping.
type yamlPair struct {
	name       string
	key, value *yaml.Node
}

// pairs returns the keys and values of the mapping n with merge keys (<<)
// expanded as YAML defines them: a key written in n wins over a merged
// one, and an earlier merged mapping over a later one. A key given twice in
// one mapping is an error, as yaml.v3 makes it when decoding.
func (a *yamlAdapter) pairs(n *yaml.Node, depth int) ([]yamlPair, error) {
	if depth > lbyamlMaxDepth {
		return nil, a.errAt(n, "", errors.New("nested too deeply"))
	}
	var out []yamlPair
	seen := make(map[string]*yaml.Node)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		key, err := a.deref(k, depth)
		if err != nil {
			return nil, err
		}
		if key.Kind != yaml.ScalarNode {
			return nil, a.errAt(k, "", fmt.Errorf("want a name as key, got %s", describeNode(key)))
		}
		if prev, dup := seen[key.Value]; dup {
			return nil, a.errAt(k, "", fmt.Errorf("key %q given twice (first at line %d)", key.Value, prev.Line))
		}
		seen[key.Value] = k
		out = append(out, yamlPair{key.Value, k, v})
	}
	for _, m := range merges {
		m, err := a.deref(m, depth)
		if err != nil {
			return nil, err
		}
		maps := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			maps = m.Content
		}
		for _, mm := range maps {
			mm, err := a.deref(mm, depth)
			if err != nil {
				return nil, err
			}
			if mm.Kind != yaml.MappingNode {
				return nil, a.errAt(mm, "", fmt.Errorf("<<: want a mapping or a list of mappings to merge, got %s", describeNode(mm)))
			}
			merged, err := a.pairs(mm, depth+1)
			if err != nil {
				return nil, err
			}
			for _, p := range merged {
				if _, dup := seen[p.name]; !dup {
					seen[p.name] = p.key
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

// deref follows aliases to the node they stand for, and counts the node
// against the document's budget.
func (a *yamlAdapter) deref(n *yaml.Node, depth int) (*yaml.Node, error) {
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil || depth > lbyamlMaxDepth {
			return nil, a.errAt(n, "", fmt.Errorf("alias *%s: cannot resolve it", n.Value))
		}
		n = n.Alias
		depth++
	}
	a.budget -= 1 + len(n.Content)
	if a.budget < 0 {
		return nil, a.errAt(n, "", errors.New("aliases expand the document too much"))
	}
	return n, nil
}

// errAt returns err with the position of n and the current app and path:
// `file:line:col: app "api.example.com": timeout: <err>`.
func (a *yamlAdapter) errAt(n *yaml.Node, path string, err error) error {
	var where strings.Builder
	if a.label != "" {
		where.WriteString(a.label + ": ")
	}
	if path != "" {
		where.WriteString(path + ": ")
	}
	return fmt.Errorf("%s:%d:%d: %s%w", a.file, n.Line, n.Column, where.String(), err)
}

// decodeStrict decodes the JSON form v into out, refusing unknown fields.
func decodeStrict(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
}

// structFields are the fields of a struct type by their JSON names.
type structFields struct {
	names  []string // in declaration order
	byName map[string]reflect.StructField
}

// jsonFields returns the fields encoding/json decodes into t, by name:
// exported fields under their json tag's name (or their Go name without
// one), and the fields of embedded structs.
func jsonFields(t reflect.Type) structFields {
	fields := structFields{byName: make(map[string]reflect.StructField)}
	var add func(t reflect.Type, depth int)
	add = func(t reflect.Type, depth int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, _, _ := strings.Cut(tag, ",")
			if tag == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if f.Anonymous && name == "" && ft.Kind() == reflect.Struct && depth < lbyamlMaxDepth {
				add(ft, depth+1)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if _, dup := fields.byName[name]; !dup {
				fields.names = append(fields.names, name)
				fields.byName[name] = f
			}
		}
	}
	add(t, 0)
	return fields
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// isLeaf reports whether walk treats values of t as a whole: types that
// decode themselves, and everything but structs, lists and maps.
func isLeaf(t reflect.Type) bool {
	if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return true
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Array:
		return false
	case reflect.Slice:
		return t.Elem().Kind() == reflect.Uint8 // []byte is a base64 string
	case reflect.Map:
		return t.Key().Kind() != reflect.String
	case reflect.Pointer:
		return isLeaf(t.Elem())
	}
	return true
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describeNode says what n is, for messages: "a list", "the string "x"".
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return n.Value
		case "!!null":
			return "nothing"
		}
		return fmt.Sprintf("%s %q", n.ShortTag(), n.Value)
	}
	return "nothing"
}

// describeType says what a value of t is, for messages.
func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeFor[Duration]():
		return `a duration such as "10s", "1m30s" or "1d"`
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "an integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		return "a list"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		return "a mapping"
	}
	return t.String()
}

// unknownKey is the error for a key that is none of known.
func unknownKey(name string, known []string) error {
	want := strings.Join(known, ", ")
	if i := strings.LastIndex(want, ", "); i >= 0 {
		want = want[:i] + " or " + want[i+2:]
	}
	return fmt.Errorf("unknown key %q (want %s)", name, want)
}

// joinField appends a field name to a field path.
func joinField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// Interface guards
var _ caddyconfig.Adapter = LBYAMLAdapter{}
