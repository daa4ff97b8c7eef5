package caddylb

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"

	"github.com/caddyserver/caddy/v2"
)

// The syntax of the values of app options in the Caddyfile, by the type of
// their App field: what setOption and parseHeaders accept. Ranges are
// checked where the JSON config's are (App.provision).

// setOption sets field, an option of App, from the arguments of its line:
// the syntax its type takes, not the range of its values.
func setOption(field reflect.Value, args []string) error {
	switch t := field.Type(); {
	case t.Kind() == reflect.Bool:
		if len(args) != 0 {
			return fmt.Errorf("want no arguments, got %s", countArgs(args))
		}
		field.SetBool(true)
		return nil
	case t == reflect.TypeFor[*GRPCHealthCheck]():
		if len(args) > 1 {
			return fmt.Errorf("want at most one service name, got %s", countArgs(args))
		}
		g := &GRPCHealthCheck{}
		if len(args) == 1 {
			g.Service = args[0]
		}
		field.Set(reflect.ValueOf(g))
		return nil
	case t == reflect.TypeFor[SplitPools]():
		sp, err := parseSplit(args)
		if err != nil {
			return err
		}
		field.Set(reflect.ValueOf(sp))
		return nil
	case t == reflect.TypeFor[Statuses]():
		if len(args) == 0 {
			return errors.New("want one or more statuses (codes such as 503, or classes such as 5xx), got none")
		}
		field.Set(reflect.ValueOf(Statuses(args)))
		return nil
	}
	if len(args) != 1 {
		return fmt.Errorf("want 1 argument, got %s", countArgs(args))
	}
	arg := args[0]
	if arg == "" {
		// JSON could not tell it from the option left out.
		return errors.New("want a value, got an empty one; leave the option out for its default")
	}
	switch t := field.Type(); {
	case t == reflect.TypeFor[*Duration]():
		d, err := caddy.ParseDuration(arg)
		if arg == "-1" {
			// As reverse_proxy's flush_interval -1 (options that must be
			// positive refuse it by name).
			d, err = -1, nil
		}
		if err != nil {
			return fmt.Errorf("bad duration value %q: %v", arg, err)
		}
		v := Duration(d)
		field.Set(reflect.ValueOf(&v))
	case t == reflect.TypeFor[*RequestLimit]():
		l, err := parseRequestLimit(arg)
		if err != nil {
			return err
		}
		field.Set(reflect.ValueOf(l))
	case t == reflect.TypeFor[*float64]():
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil {
			return fmt.Errorf("want a number, got %q", arg)
		}
		field.Set(reflect.ValueOf(&f))
	case t.Kind() == reflect.String:
		field.SetString(arg)
	case t == reflect.TypeFor[*int](), t.Kind() == reflect.Int:
		n, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("want an integer, got %q", arg)
		}
		if t.Kind() == reflect.Int {
			field.SetInt(int64(n))
		} else {
			field.Set(reflect.ValueOf(&n))
		}
	default:
		return fmt.Errorf("the Caddyfile cannot set a %s", t) // a field of a new type: teach setOption
	}
	return nil
}

// parseHeaders reads the block of a header option (health_headers), as
// reverse_proxy's: each line a header name and its values; the cursor is on
// the option's last token. Names are canonicalized, so that lines naming
// one header in different cases add to it.
func (p *caddyfileParser) parseHeaders(a *appParser, opt string, args []string, field reflect.Value) error {
	d := p.d
	if len(args) != 0 {
		return p.errf(a, "%s: want a block of header lines, not arguments (got %s)", opt, countArgs(args))
	}
	headers := make(http.Header)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		values := d.RemainingArgs()
		if len(values) == 0 {
			return p.errf(a, "%s: %s: want one or more values", opt, name)
		}
		if d.NextBlock(d.Nesting()) {
			d.Prev() // back to the "{", on the header's line
			return p.errf(a, "%s: %s: unexpected block: a header line takes values only", opt, name)
		}
		key := http.CanonicalHeaderKey(name)
		headers[key] = append(headers[key], values...)
	}
	if len(headers) == 0 {
		return errAt(a.seen[opt], fmt.Errorf("app %q: %s: want a block with a line per header: <name> <values...>", a.name, opt))
	}
	field.Set(reflect.ValueOf(headers))
	return nil
}

// countArgs describes the arguments of a line that has the wrong number.
func countArgs(args []string) string {
	if len(args) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d: %q", len(args), args)
}
