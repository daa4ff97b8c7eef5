// Package jsonfields lists the fields encoding/json decodes a struct
// type's objects into, by their JSON names, for the config front ends that
// map other syntaxes (the Caddyfile, YAML) onto a config struct's JSON.
package jsonfields

import (
	"reflect"
	"strings"
)

// Field is one field of a struct type as encoding/json sees it.
type Field struct {
	Name  string       // its JSON name
	Index []int        // for reflect.Value.FieldByIndex: embedded structs are walked into
	Type  reflect.Type // the field's type
}

// Fields are the fields of a struct type, in declaration order (those of
// embedded structs where the struct is embedded).
type Fields struct {
	List   []Field
	ByName map[string]Field
}

// maxDepth bounds the embedding walked into.
const maxDepth = 16

// Of returns the fields encoding/json decodes into t, a struct type:
// exported fields under their json tag's name (or their Go name without
// one; "-" leaves a field out), and the fields of embedded structs
// without a tag, as if they were t's. A name that comes twice is the
// first one's.
func Of(t reflect.Type) Fields {
	fields := Fields{ByName: make(map[string]Field)}
	var add func(t reflect.Type, index []int, depth int)
	add = func(t reflect.Type, index []int, depth int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			at := append(append([]int(nil), index...), i)
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if f.Anonymous && name == "" && ft.Kind() == reflect.Struct && depth < maxDepth {
				add(ft, at, depth+1)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if _, dup := fields.ByName[name]; !dup {
				field := Field{Name: name, Index: at, Type: f.Type}
				fields.List = append(fields.List, field)
				fields.ByName[name] = field
			}
		}
	}
	add(t, nil, 0)
	return fields
}

// Names returns the fields' JSON names, in order.
func (fs Fields) Names() []string {
	names := make([]string, len(fs.List))
	for i, f := range fs.List {
		names[i] = f.Name
	}
	return names
}
