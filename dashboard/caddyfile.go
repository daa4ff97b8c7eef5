package dashboard

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("load_balancer_dashboard", parseCaddyfile)
	// Next to metrics, the other handler that shows the server's state:
	// after the handlers that respond (respond, error) and before
	// reverse_proxy and load_balancer, so that a dashboard with a path
	// matcher at the top level of a site serves its path rather than
	// having it proxied.
	httpcaddyfile.RegisterDirectiveOrder("load_balancer_dashboard", httpcaddyfile.After, "metrics")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	load_balancer_dashboard [<matcher>] {
//	    allow_drain
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.Next() { // the directive name
		return d.ArgErr()
	}
	if d.NextArg() {
		return d.Errf("load_balancer_dashboard takes no arguments, got %q; mount it with a matcher or in a handle block", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "allow_drain":
			if d.NextArg() {
				return d.Errf("allow_drain takes no arguments, got %q", d.Val())
			}
			h.AllowDrain = true
		default:
			return d.Errf("unrecognized option %q of load_balancer_dashboard; it has: allow_drain", d.Val())
		}
	}
	return nil
}

// parseCaddyfile is the load_balancer_dashboard directive's setup function.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	dash := new(Handler)
	if err := dash.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return dash, nil
}
