// Package yamljson reads a YAML document into the JSON form of a Go config
// struct: it checks each node against the field it stands for, the way
// encoding/json would decode its JSON, and errors point at the file, line
// and column, and name the field path. Aliases and merge keys are
// expanded, within a budget, so that a short document cannot stand for a
// huge one.
package yamljson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/golb/caddy-lb/internal/jsonfields"
)

// Bounds on the work one document may cause. Aliases let a short document
// stand for a huge (or, with an alias inside its own anchor, infinite)
// tree. Without aliases, the nodes visited are a few per byte of the
// document; no config needs more than a few levels of nesting.
const (
	MaxDepth     = 64
	nodesPerByte = 64
	minNodes     = 1 << 14
)

// Decoder reads one document. Make it with New.
type Decoder struct {
	file   string
	budget int // nodes left to visit, see nodesPerByte

	// Label, if set, names what is being read in errors, before the
	// field path (`app "api.example.com"`).
	Label string

	// Nodes, if not nil, records the node of each field path walked
	// ("timeout", "instances[1].url"), so that errors found after
	// decoding can point at their line too.
	Nodes map[string]*yaml.Node

	// Custom, if set, is asked first about each node Walk checks: it may
	// read the node itself (handled true), for the forms a type takes in
	// YAML beyond its JSON ones. It gets the node with aliases followed.
	Custom func(d *Decoder, n *yaml.Node, t reflect.Type, path string, depth int) (v any, handled bool, err error)

	// DescribeType, if set, says what a value of t is in messages, for
	// the types it knows ("a duration such as ..."); "" leaves it to the
	// default.
	DescribeType func(t reflect.Type) string

	// Expect says what the document's root should be, for messages
	// ("a mapping with apps").
	Expect string
}

// New returns a decoder of a document of size bytes from file (a name for
// messages).
func New(file string, size int) *Decoder {
	return &Decoder{file: file, budget: minNodes + nodesPerByte*size, Expect: "a mapping"}
}

// File returns the name of the document's file, as messages give it.
func (d *Decoder) File() string { return d.file }

// Parse parses body as a single YAML document and returns its root node.
func (d *Decoder) Parse(body []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(body))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty config: want %s", d.file, d.Expect)
		}
		return nil, d.syntaxError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		at := &next
		if len(next.Content) > 0 {
			at = next.Content[0]
		}
		return nil, d.ErrAt(at, "", errors.New("a second YAML document: want one document only"))
	case !errors.Is(err, io.EOF):
		return nil, d.syntaxError(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("%s: want %s", d.file, d.Expect)
	}
	return doc.Content[0], nil
}

// yamlLine matches the position yaml.v3 gives some syntax errors: a line,
// no column.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

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
func (d *Decoder) syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		problem := msg[len(m[0]):]
		line, _ := strconv.Atoi(m[1])
		if yamlParserProblems[problem] {
			line++
		}
		return fmt.Errorf("%s:%d: invalid YAML: %s", d.file, line, problem)
	}
	return fmt.Errorf("%s: invalid YAML: %s", d.file, strings.TrimPrefix(msg, "yaml: "))
}

// Walk checks n against the Go type t the way encoding/json would decode
// its JSON form, and returns that JSON form (maps, slices, scalars). Keys
// of a struct must be the json names of its fields; errors point at the
// key or value at fault. path is the field path of n, for messages.
func (d *Decoder) Walk(n *yaml.Node, t reflect.Type, path string, depth int) (any, error) {
	if depth > MaxDepth {
		return nil, d.ErrAt(n, path, errors.New("nested too deeply"))
	}
	n, err := d.Deref(n, depth)
	if err != nil {
		return nil, err
	}
	if d.Nodes != nil {
		d.Nodes[path] = n
	}
	if d.Custom != nil {
		if v, ok, err := d.Custom(d, n, t, path, depth); ok || err != nil {
			return v, err
		}
	}
	for t.Kind() == reflect.Pointer && !isLeaf(t) {
		t = t.Elem()
	}
	if IsNull(n) {
		return nil, nil // as JSON null: the field keeps its default
	}
	if isStringList(t) && n.Kind == yaml.SequenceNode {
		return d.stringList(n, path, depth)
	}
	switch {
	case isLeaf(t):
		return d.Leaf(n, t, path, depth)

	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil, d.ErrAt(n, path, fmt.Errorf("want a mapping, got %s", DescribeNode(n)))
		}
		fields := jsonfields.Of(t)
		pairs, err := d.Pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			f, ok := fields.ByName[p.Name]
			if !ok {
				return nil, d.ErrAt(p.Key, path, UnknownKey(p.Name, fields.Names()))
			}
			if obj[p.Name], err = d.Walk(p.Value, f.Type, JoinField(path, p.Name), depth+1); err != nil {
				return nil, err
			}
		}
		return obj, nil

	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil, d.ErrAt(n, path, fmt.Errorf("want a list, got %s", DescribeNode(n)))
		}
		list := make([]any, len(n.Content))
		for i, e := range n.Content {
			if list[i], err = d.Walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return nil, err
			}
		}
		return list, nil

	default: // a map with string keys
		if n.Kind != yaml.MappingNode {
			return nil, d.ErrAt(n, path, fmt.Errorf("want a mapping, got %s", DescribeNode(n)))
		}
		pairs, err := d.Pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			if isStringList(t.Elem()) {
				// A mapping to lists of strings (headers): one value
				// alone stands for a list of one.
				obj[p.Name], err = d.stringList(p.Value, JoinField(path, p.Name), depth+1)
			} else {
				obj[p.Name], err = d.Walk(p.Value, t.Elem(), JoinField(path, p.Name), depth+1)
			}
			if err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
}

// scalarTags are the tags of the scalars an element of a list of strings
// may be written as: it is taken as written ("X-Version: 2" is "2", and
// unhealthy_status: [502, 503] is ["502", "503"]).
var scalarTags = map[string]bool{"!!str": true, "!!int": true, "!!float": true, "!!bool": true}

// isStringList reports whether t is a list of strings that encoding/json
// decodes itself.
func isStringList(t reflect.Type) bool {
	return t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String && !isLeaf(t)
}

// stringList reads a list of strings: a list of scalars, or one scalar
// alone, which stands for a list of one ("Host: example.com").
func (d *Decoder) stringList(n *yaml.Node, path string, depth int) ([]any, error) {
	n, err := d.Deref(n, depth)
	if err != nil {
		return nil, err
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
		e, err := d.Deref(e, depth+1)
		if err != nil {
			return nil, err
		}
		if d.Nodes != nil {
			d.Nodes[at] = e
		}
		if e.Kind != yaml.ScalarNode || !scalarTags[e.ShortTag()] {
			want := "a value or a list of values"
			if list {
				want = "a value"
			}
			return nil, d.ErrAt(e, at, fmt.Errorf("want %s, got %s", want, DescribeNode(e)))
		}
		values[i] = e.Value
	}
	return values, nil
}

// Leaf converts n, a value of a type that decodes itself or is a plain
// scalar, and checks that its JSON form decodes into t.
func (d *Decoder) Leaf(n *yaml.Node, t reflect.Type, path string, depth int) (any, error) {
	v, err := d.Value(n, depth)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, d.ErrAt(n, path, err)
	}
	err = json.Unmarshal(b, reflect.New(t).Interface())
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
		return v, nil
	case errors.As(err, &typeErr) || n.Kind != yaml.ScalarNode && !isPlain(t):
		return nil, d.ErrAt(n, path, fmt.Errorf("want %s, got %s", d.describeType(t), DescribeNode(n)))
	}
	return nil, d.ErrAt(n, path, err)
}

// isPlain reports whether t is decoded by encoding/json itself.
func isPlain(t reflect.Type) bool {
	return !t.Implements(jsonUnmarshaler) && !reflect.PointerTo(t).Implements(jsonUnmarshaler)
}

// Value converts n to its JSON form without a type to check it against.
func (d *Decoder) Value(n *yaml.Node, depth int) (any, error) {
	if depth > MaxDepth {
		return nil, d.ErrAt(n, "", errors.New("nested too deeply"))
	}
	n, err := d.Deref(n, depth)
	if err != nil {
		return nil, err
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return d.scalar(n)
	case yaml.SequenceNode:
		list := make([]any, len(n.Content))
		for i, e := range n.Content {
			if list[i], err = d.Value(e, depth+1); err != nil {
				return nil, err
			}
		}
		return list, nil
	case yaml.MappingNode:
		pairs, err := d.Pairs(n, depth)
		if err != nil {
			return nil, err
		}
		obj := make(map[string]any, len(pairs))
		for _, p := range pairs {
			if obj[p.Name], err = d.Value(p.Value, depth+1); err != nil {
				return nil, err
			}
		}
		return obj, nil
	}
	return nil, d.ErrAt(n, "", fmt.Errorf("unexpected %s", DescribeNode(n)))
}

// scalar converts a scalar node by its resolved tag.
func (d *Decoder) scalar(n *yaml.Node) (v any, err error) {
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
		return nil, d.ErrAt(n, "", fmt.Errorf("%s: %v", DescribeNode(n), strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	return v, nil
}

// Pair is a key and its value in a mapping.
type Pair struct {
	Name       string
	Key, Value *yaml.Node
}

// Pairs returns the keys and values of the mapping n with merge keys (<<)
// expanded as YAML defines them: a key written in n wins over a merged
// one, and an earlier merged mapping over a later one. A key given twice in
// one mapping is an error, as yaml.v3 makes it when decoding.
func (d *Decoder) Pairs(n *yaml.Node, depth int) ([]Pair, error) {
	if depth > MaxDepth {
		return nil, d.ErrAt(n, "", errors.New("nested too deeply"))
	}
	var out []Pair
	seen := make(map[string]*yaml.Node)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		key, err := d.Deref(k, depth)
		if err != nil {
			return nil, err
		}
		if key.Kind != yaml.ScalarNode {
			return nil, d.ErrAt(k, "", fmt.Errorf("want a name as key, got %s", DescribeNode(key)))
		}
		if prev, dup := seen[key.Value]; dup {
			return nil, d.ErrAt(k, "", fmt.Errorf("key %q given twice (first at line %d)", key.Value, prev.Line))
		}
		seen[key.Value] = k
		out = append(out, Pair{key.Value, k, v})
	}
	for _, m := range merges {
		m, err := d.Deref(m, depth)
		if err != nil {
			return nil, err
		}
		maps := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			maps = m.Content
		}
		for _, mm := range maps {
			mm, err := d.Deref(mm, depth)
			if err != nil {
				return nil, err
			}
			if mm.Kind != yaml.MappingNode {
				return nil, d.ErrAt(mm, "", fmt.Errorf("<<: want a mapping or a list of mappings to merge, got %s", DescribeNode(mm)))
			}
			merged, err := d.Pairs(mm, depth+1)
			if err != nil {
				return nil, err
			}
			for _, p := range merged {
				if _, dup := seen[p.Name]; !dup {
					seen[p.Name] = p.Key
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

// Deref follows aliases to the node they stand for, and counts the node
// against the document's budget.
func (d *Decoder) Deref(n *yaml.Node, depth int) (*yaml.Node, error) {
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil || depth > MaxDepth {
			return nil, d.ErrAt(n, "", fmt.Errorf("alias *%s: cannot resolve it", n.Value))
		}
		n = n.Alias
		depth++
	}
	d.budget -= 1 + len(n.Content)
	if d.budget < 0 {
		return nil, d.ErrAt(n, "", errors.New("aliases expand the document too much"))
	}
	return n, nil
}

// ErrAt returns err with the position of n and the current app and path:
// `file:line:col: app "api.example.com": timeout: <err>`.
func (d *Decoder) ErrAt(n *yaml.Node, path string, err error) error {
	var where strings.Builder
	if d.Label != "" {
		where.WriteString(d.Label + ": ")
	}
	if path != "" {
		where.WriteString(path + ": ")
	}
	return fmt.Errorf("%s:%d:%d: %s%w", d.file, n.Line, n.Column, where.String(), err)
}

// DecodeStrict decodes the JSON form v into out, refusing unknown fields.
func DecodeStrict(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
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

func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// DescribeNode says what n is, for messages: "a list", "the string "x"".
func DescribeNode(n *yaml.Node) string {
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
func (d *Decoder) describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if d.DescribeType != nil {
		if s := d.DescribeType(t); s != "" {
			return s
		}
	}
	switch {
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

// UnknownKey is the error for a key that is none of known.
func UnknownKey(name string, known []string) error {
	want := strings.Join(known, ", ")
	if i := strings.LastIndex(want, ", "); i >= 0 {
		want = want[:i] + " or " + want[i+2:]
	}
	return fmt.Errorf("unknown key %q (want %s)", name, want)
}

// JoinField appends a field name to a field path.
func JoinField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}
