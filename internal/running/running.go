// Package running says which Caddy config is the one Caddy runs now.
package running

import "github.com/caddyserver/caddy/v2"

// Config returns the Done channel of the config Caddy runs now, nil if
// none. Every module's context shares the Done channel of its config, so
// comparing a module's ctx.Done() with it tells whether that config is the
// running one. Caddy makes a config the running one only after all its apps
// have started, and stops doing so before it unloads it.
func Config() <-chan struct{} {
	if active := caddy.ActiveContext(); active.Context != nil {
		return active.Done()
	}
	return nil
}
