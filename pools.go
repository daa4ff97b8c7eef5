package caddylb

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/golb/caddy-lb/internal/jsonfields"
)

// Pools: apps with a name and no host, which serve only what other apps
// split or mirror to them (see split.go and mirror.go).

// poolPattern is what a pool has for a host pattern: a string no host
// normalizes to, so that its instances' state is keyed apart from every
// host app's (and the catch-all's, whose pattern is "").
func poolPattern(name string) string { return "\x00pool " + name }

// appLabel names an app in messages: app "host", or pool "name".
func appLabel(name string, pool bool) string {
	if pool {
		return fmt.Sprintf("pool %q", name)
	}
	return fmt.Sprintf("app %q", name)
}

// isPool reports whether the app is a pool.
func (a *App) isPool() bool { return a.Name != "" }

// checkPoolName checks the name of a pool.
func checkPoolName(app *App) error {
	switch {
	case app.Name == "":
		return nil
	case app.Host != "":
		return optionError("name", fmt.Errorf("%w: an app has a host or, as a pool, a name, not both", ErrInapplicableOption))
	case strings.ContainsAny(app.Name, " \t\r\n\"'{}") || strings.ContainsRune(app.Name, 0):
		return optionError("name", fmt.Errorf("%w %q: want a name without spaces, quotes or braces", ErrInvalidPoolName, app.Name))
	}
	return nil
}

// splitterOptions are the options an app that splits may have (its host
// or name, its split and its mirror): the others belong to its pools.
var splitterOptions = func() map[string]bool {
	ok := map[string]bool{"host": true, "name": true}
	for _, t := range []reflect.Type{reflect.TypeFor[Splitting](), reflect.TypeFor[Mirroring]()} {
		for _, name := range jsonfields.Of(t).Names() {
			ok[name] = true
		}
	}
	return ok
}()

// checkSplitter refuses the options an app that splits cannot use: it has
// no instances, and its requests are served by its pools, with theirs.
func checkSplitter(app *App) error {
	v := reflect.ValueOf(app).Elem()
	for _, name := range appFields.Names() {
		if splitterOptions[name] {
			continue
		}
		if f := v.FieldByIndex(appFields.ByName[name].Index); !f.IsZero() {
			return optionError(name, fmt.Errorf("%w: an app that splits has no instances of its own; give its pools the option", ErrInapplicableOption))
		}
	}
	return nil
}

// poolRef is a field of an app that names a pool.
type poolRef struct{ field, pool string }

// poolRefs lists the pools the app's split and mirror name, with their
// fields: what the adapters check against the pools they read.
func (a *App) poolRefs() []poolRef {
	var refs []poolRef
	for i, sp := range a.Split {
		refs = append(refs, poolRef{fmt.Sprintf("split[%d].pool", i), sp.Pool})
	}
	if a.Mirror != "" {
		refs = append(refs, poolRef{"mirror", a.Mirror})
	}
	return refs
}

// appError is the error of an app's field found after the app was
// compiled (its name known).
func appError(app *App, field string, err error) error {
	return &fieldError{app: app.name, field: field, err: err, pool: app.isPool()}
}

// resolvePools finds the pools the handler's splits and mirrors name, once
// every app is compiled, and refuses pools of one name and references to
// no pool.
func (h *Handler) resolvePools() error {
	pools := map[string]*App{}
	for i, app := range h.Apps {
		if !app.isPool() {
			continue
		}
		if prev, dup := pools[app.Name]; dup {
			return fmt.Errorf("apps[%d]: pool %q: name: %w: another pool has it (%s)", i, app.Name, ErrDuplicatePool, prev.name)
		}
		pools[app.Name] = app
	}
	var err error
	for _, app := range h.Apps {
		if len(app.splitting.pools) > 0 {
			if app.split, err = resolveSplit(app, pools); err != nil {
				return err
			}
		}
		if app.mirroring.pool != "" {
			if app.mirror, err = resolveMirror(app, pools); err != nil {
				return err
			}
		}
	}
	return nil
}
