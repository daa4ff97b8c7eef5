package caddylb

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golb/caddy-lb/backend"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zeroValue is 0 boxed once, for the retries placeholder.
var zeroValue any = 0

// setDuration sets the duration placeholder: the time since start (as
// returned by backend.Now).
func setDuration(repl *caddy.Replacer, start int64) {
	if repl != nil {
		repl.Set("http.load_balancer.duration", time.Duration(backend.Now()-start))
	}
}

// accessLogField returns the field that adds load_balancer_app and
// load_balancer_instance to the access log entry of a request served by in.
// It inlines them (one field, so one allocation per request in Caddy's
// list of extra fields); its key lets ExtraLogFields.Set replace it should
// a request be served twice.
func accessLogField(app string, in *backend.Instance) zap.Field {
	return zap.Field{Key: "load_balancer", Type: zapcore.InlineMarshalerType,
		Interface: &accessLogFields{app: app, instance: in.String()}}
}

// accessLogged reports whether r's server may write access logs. Adding
// a field costs two allocations (Caddy's list of fields, and the cache of
// loggers it resets); a server without access logs is spared them.
func accessLogged(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return !ok || srv.Logs != nil
}

type accessLogFields struct{ app, instance string }

func (f *accessLogFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("load_balancer_app", f.app)
	enc.AddString("load_balancer_instance", f.instance)
	return nil
}

// loadEvents returns the events app of ctx's config, loading it if the
// config has none, as reverse_proxy does: handlers may subscribe to our
// events from code too. A context made by hand (caddy.NewContext of a bare
// caddy.Context, as Go callers and tests do) has no config, where ctx.App
// panics; it has no events app and no subscribers either, so the handler
// goes without.
func loadEvents(ctx caddy.Context) (app *caddyevents.App, err error) {
	defer func() {
		if recover() != nil {
			app, err = nil, nil
		}
	}()
	a, err := ctx.App("events")
	if err != nil {
		return nil, fmt.Errorf("loading the events app: %v", err)
	}
	return a.(*caddyevents.App), nil
}

// onChange returns what reports the changes of state of app's
// instances while this config is in charge of them: one log line each
// (warnings for those that take an instance out), and the event
// load_balancer.instance_<event> with the app, the instance (its redacted
// URL), the reason and, for an ejection, when it ends.
func (h *Handler) onChange(app *App) func(backend.Change) {
	return func(c backend.Change) {
		fields := []zap.Field{
			zap.String("app", app.name),
			zap.String("instance", c.Instance.String()),
			zap.String("reason", c.Reason),
		}
		data := map[string]any{"app": app.name, "instance": c.Instance.String(), "reason": c.Reason}
		if !c.Until.IsZero() {
			fields = append(fields, zap.Time("until", c.Until))
			data["until"] = c.Until.UTC().Format(time.RFC3339Nano)
		}
		if c.Event == backend.EventDrained {
			// Its connections of its own (h2c) close as they fall idle.
			if m := app.members.Load(); m != nil && m.targets[c.Instance] != nil {
				m.targets[c.Instance].closeIdle()
			}
		}
		msg := "instance " + string(c.Event)
		switch c.Event {
		case backend.EventUnhealthy, backend.EventEjected:
			h.logger.Warn(msg, fields...)
		default:
			h.logger.Info(msg, fields...)
		}
		if h.events != nil && h.ctx.Err() == nil {
			h.events.Emit(h.ctx, "load_balancer.instance_"+string(c.Event), data)
		}
		if app.pool.Tiers() > 1 {
			// The change may change the active tier: known (and announced,
			// see onTierChange) now rather than at the next request.
			app.pool.ActiveTier()
		}
	}
}

// onMembership reports that the discovered instance in joined (event
// backend.EventAdded) or left (backend.EventRemoved) the app, for reason:
// a log line and the event load_balancer.instance_added or _removed.
func (a *App) onMembership(in *backend.Instance, event backend.Event, reason string) {
	a.onChange(backend.Change{Event: event, Instance: in, Reason: reason})
}
