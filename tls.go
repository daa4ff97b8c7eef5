package caddylb

import (
	"crypto/tls"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// InstanceTLS says how the load balancer speaks TLS to https instances.
type InstanceTLS struct {
	// How connections to https instances (proxied requests and health
	// checks alike) verify the instances and present themselves: Caddy's
	// TLS client options, as reverse_proxy's http transport takes them (a
	// trust pool, a client certificate, the server name to verify,
	// insecure_skip_verify). In the Caddyfile: tls_trust_pool file
	// <pem_files...>, tls_client_auth <cert_file> <key_file>,
	// tls_server_name <name>, tls_insecure_skip_verify. Default: the
	// system's roots, and the instance's host name.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`
}

// loadTLS builds the TLS client config of the app's https instances from
// its tls options (reading the files they name), or leaves it nil for the
// defaults.
func (a *App) loadTLS(ctx caddy.Context) error {
	if a.TLS == nil {
		return nil
	}
	cfg, err := a.TLS.MakeTLSClientConfig(ctx)
	if err != nil {
		return &fieldError{app: a.name, field: "tls", err: err}
	}
	a.tlsConfig = cfg
	return nil
}

// probeTLS returns the TLS config of health checks to https instances:
// the app's, offering HTTP/1.1 only (checks speak it); nil for the
// defaults.
func probeTLS(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	c := cfg.Clone()
	c.NextProtos = []string{"http/1.1"}
	return c
}
