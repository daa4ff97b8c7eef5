// Package etcd is an upstream source that reads a set of instances from an
// etcd registry: http.reverse_proxy.upstreams.etcd. Each key under a prefix
// is one instance; its value is a URL ("http://10.0.0.7:8080"), an address
// ("10.0.0.7:8080", taking the app's dynamic_scheme), or a JSON object:
//
//	{"url": "http://10.0.0.7:8080", "weight": 2, "draining": true}
//
// Under load_balancer it watches the prefix (no polling: a put, a delete
// or a lease expiry takes effect at once), listing then watching from the
// next revision so that no change is missed, and listing again after a
// compaction or a lost connection. Instances that register with a lease
// and keep it alive (the registrator pattern) vanish when their process
// stops. Under reverse_proxy it serves the same watched set as upstreams.
package etcd

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/discovery"
	"github.com/golb/caddy-lb/internal/etcdclient"
)

func init() {
	caddy.RegisterModule(new(Source))
}

// DefaultDialTimeout is the default of dial_timeout.
const DefaultDialTimeout = etcdclient.DefaultDialTimeout

// ErrBadPrefix is a prefix the source cannot watch.
var ErrBadPrefix = errors.New("bad prefix")

// Source is the etcd upstream source.
type Source struct {
	// The key prefix the instances are registered under, such as
	// "/services/api/". Required.
	Prefix string `json:"prefix,omitempty"`

	// How to reach the etcd cluster: endpoints, dial_timeout, username,
	// password, tls.
	etcdclient.Config

	client  *clientv3.Client
	logger  *zap.Logger
	ctx     caddy.Context
	timeout time.Duration

	// For reverse_proxy: the set a watch started on first use keeps.
	once    sync.Once
	mu      sync.Mutex
	current discovery.Set
	first   chan struct{} // closed when the first set is in
}

// CaddyModule returns the Caddy module information.
func (*Source) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.etcd",
		New: func() caddy.Module { return new(Source) },
	}
}

// Provision checks the config and makes the client. It does not connect:
// a config whose registry is down loads, and its instances arrive when
// the registry answers.
func (s *Source) Provision(ctx caddy.Context) error {
	s.ctx = ctx
	s.logger = ctx.Logger()
	if s.Prefix == "" || strings.TrimSpace(s.Prefix) != s.Prefix {
		return fmt.Errorf("%w %q: want a key prefix such as /services/api/", ErrBadPrefix, s.Prefix)
	}
	client, err := s.Config.New(ctx, s.logger, nil)
	if err != nil {
		return err
	}
	s.timeout = s.Timeout()
	s.client = client
	s.first = make(chan struct{})
	return nil
}

// Cleanup closes the client.
func (s *Source) Cleanup() error {
	if s.client != nil {
		return s.client.Close()
	}
	return nil
}

// GetUpstreams implements reverseproxy.UpstreamSource, for reverse_proxy:
// the instances of the set the source watches (started on first use), but
// those draining. The first call waits for the first set, at most
// dial_timeout.
func (s *Source) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	s.once.Do(func() {
		go s.Watch(s.ctx, "http", func(set discovery.Set) {
			s.mu.Lock()
			first := s.current.Updated.IsZero() && s.current.Err == nil
			s.current = set
			s.mu.Unlock()
			if first {
				close(s.first)
			}
		})
	})
	select {
	case <-s.first:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-time.After(s.timeout):
	}
	s.mu.Lock()
	set := s.current
	s.mu.Unlock()
	if set.Updated.IsZero() {
		return nil, set.Err
	}
	ups := make([]*reverseproxy.Upstream, 0, len(set.Instances))
	for _, in := range set.Instances {
		if !in.Draining {
			ups = append(ups, &reverseproxy.Upstream{Dial: in.URL.Host})
		}
	}
	return ups, nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens:
//
//	etcd <prefix> {
//	    endpoints    <urls...>
//	    dial_timeout <duration>
//	    username     <name>
//	    password     <password>
//	    tls_client_auth          <cert_file> <key_file>
//	    tls_trust_pool           file <pem_files...>
//	    tls_insecure_skip_verify
//	    tls_server_name          <name>
//	}
func (s *Source) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the source's name
	if !d.NextArg() {
		return d.ArgErr()
	}
	s.Prefix = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		ok, err := s.Config.UnmarshalOption(d, opt)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized etcd option %q (want %s)", opt, etcdclient.Options)
		}
		if d.NextArg() {
			return d.Errf("%s: too many arguments", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Source)(nil)
	_ caddy.CleanerUpper          = (*Source)(nil)
	_ caddyfile.Unmarshaler       = (*Source)(nil)
	_ reverseproxy.UpstreamSource = (*Source)(nil)
	_ discovery.Watcher           = (*Source)(nil)
)
