// Package etcdclient is how the modules of this project that talk to etcd
// (the etcd source of dynamic instances, the fleet) connect to it: the
// same options, spelled the same in JSON and the Caddyfile, and one way
// to make the client.
package etcdclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/golb/caddy-lb/internal/tlsopt"
)

// DefaultDialTimeout is the default of dial_timeout.
const DefaultDialTimeout = 2 * time.Second

// DefaultEndpoint is the member asked when no endpoints are given.
const DefaultEndpoint = "http://127.0.0.1:2379"

// Config is how to reach an etcd cluster.
type Config struct {
	// The etcd members' client URLs, such as "http://127.0.0.1:2379".
	// The client moves to another member when one fails. Default:
	// http://127.0.0.1:2379.
	Endpoints []string `json:"endpoints,omitempty"`

	// How long connecting to a member may take. Default: 2s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// Credentials of etcd's authentication, if it is on.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// TLS to the members, as Caddy's HTTP transport takes it (client
	// certificates, trusted CAs, server name). Endpoints then use https.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`
}

// Timeout returns the dial timeout, the default if none is set.
func (c *Config) Timeout() time.Duration {
	if c.DialTimeout == 0 {
		return DefaultDialTimeout
	}
	return time.Duration(c.DialTimeout)
}

// New checks the config and makes its client, which logs through logger
// at warnings and up (it retries on its own, and says so at info on every
// attempt). It does not connect: a config whose cluster is down loads,
// and the client connects when a member answers. ctx is the config's
// (for TLS files); the client ends with lifetime, or with ctx if lifetime
// is nil.
func (c *Config) New(ctx caddy.Context, logger *zap.Logger, lifetime context.Context) (*clientv3.Client, error) {
	if lifetime == nil {
		lifetime = ctx
	}
	endpoints := c.Endpoints
	if len(endpoints) == 0 {
		endpoints = []string{DefaultEndpoint}
	}
	for _, e := range endpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return nil, fmt.Errorf("endpoint %q: want a client URL such as %s", e, DefaultEndpoint)
		}
	}
	if c.DialTimeout < 0 {
		return nil, fmt.Errorf("dial_timeout: must not be negative, got %v", time.Duration(c.DialTimeout))
	}
	timeout := c.Timeout()
	var tlsConfig *tls.Config
	if c.TLS != nil {
		var err error
		if tlsConfig, err = c.TLS.MakeTLSClientConfig(ctx); err != nil {
			return nil, fmt.Errorf("tls: %v", err)
		}
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          timeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: timeout,
		Username:             c.Username,
		Password:             c.Password,
		TLS:                  tlsConfig,
		Logger:               logger.Named("client").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)),
		Context:              lifetime,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %v", err)
	}
	return client, nil
}

// Options is how UnmarshalOption's options read in the Caddyfile, for
// messages of the modules that take them.
const Options = "endpoints, dial_timeout, username, password or tls_*"

// UnmarshalOption reads the Caddyfile option opt (the token d is at) if it
// is one of Config's, and reports whether it was:
//
//	endpoints    <urls...>
//	dial_timeout <duration>
//	username     <name>
//	password     <password>
//	tls_client_auth          <cert_file> <key_file>
//	tls_trust_pool           file <pem_files...>
//	tls_insecure_skip_verify
//	tls_server_name          <name>
func (c *Config) UnmarshalOption(d *caddyfile.Dispenser, opt string) (bool, error) {
	switch opt {
	case "endpoints":
		c.Endpoints = append(c.Endpoints, d.RemainingArgs()...)
		if len(c.Endpoints) == 0 {
			return true, d.ArgErr()
		}
	case "dial_timeout":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return true, d.Errf("bad duration value %q: %v", d.Val(), err)
		}
		c.DialTimeout = caddy.Duration(dur)
	case "username", "password":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		if opt == "username" {
			c.Username = d.Val()
		} else {
			c.Password = d.Val()
		}
	case "tls_client_auth", "tls_trust_pool", "tls_insecure_skip_verify", "tls_server_name":
		if err := tlsopt.Set(&c.TLS, opt, d.RemainingArgs()); err != nil {
			return true, d.Errf("%v", err)
		}
	default:
		return false, nil
	}
	return true, nil
}
