package discovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Resolver resolves the names of discovered instances (an SRV record's
// targets, say) in the background, through the DNS servers their source
// was configured with, and dials instances by the addresses it found: a
// request never waits on a lookup. Names it was never asked about are
// dialed as usual (the machine's resolver, as for configured instances).
type Resolver struct {
	servers []string // host:port of DNS servers; none: the machine's resolver
	net     *net.Resolver
	dialer  net.Dialer // dials instances

	mu    sync.RWMutex
	addrs map[string][]netip.Addr // by name, without trailing dot
}

// NewResolver returns a resolver through servers ("127.0.0.1:53",
// "udp/10.0.0.2", as Caddy's resolvers options take them; none for the
// machine's resolver), whose dialer dials with timeout.
func NewResolver(servers []string, timeout time.Duration) (*Resolver, error) {
	r := &Resolver{dialer: net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}, addrs: map[string][]netip.Addr{}}
	var netAddrs []caddy.NetworkAddress
	for _, s := range servers {
		addr, err := caddy.ParseNetworkAddressWithDefaults(s, "udp", 53)
		if err != nil {
			return nil, fmt.Errorf("resolver %q: %w", s, err)
		}
		if addr.PortRangeSize() != 1 {
			return nil, fmt.Errorf("resolver %q: want one address", s)
		}
		netAddrs = append(netAddrs, addr)
		r.servers = append(r.servers, addr.JoinHostPort(0))
	}
	r.net = net.DefaultResolver
	if len(netAddrs) > 0 {
		d := net.Dialer{Timeout: timeout}
		r.net = &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				a := netAddrs[rand.N(len(netAddrs))]
				return d.DialContext(ctx, a.Network, a.JoinHostPort(0))
			},
		}
	}
	return r, nil
}

// Servers returns the DNS servers the resolver asks, none for the
// machine's resolver.
func (r *Resolver) Servers() []string { return r.servers }

// Resolve looks name up (A and AAAA) and keeps its addresses for dialing.
// A name that fails to resolve keeps the addresses it had.
func (r *Resolver) Resolve(ctx context.Context, name string) error {
	name = strings.TrimSuffix(name, ".")
	if _, err := netip.ParseAddr(name); err == nil {
		return nil
	}
	// As a fully qualified name: no search domains of the machine's
	// resolv.conf are tried.
	ips, err := r.net.LookupNetIP(ctx, "ip", name+".")
	if err != nil {
		return err
	}
	if len(ips) == 0 {
		return fmt.Errorf("%s: no addresses", name)
	}
	for i, ip := range ips {
		ips[i] = ip.Unmap()
	}
	r.mu.Lock()
	r.addrs[name] = ips
	r.mu.Unlock()
	return nil
}

// Known reports whether name has resolved.
func (r *Resolver) Known(name string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.addrs[strings.TrimSuffix(name, ".")]
	return ok
}

// Forget drops the addresses of names not in keep.
func (r *Resolver) Forget(keep map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.addrs {
		if !keep[name] {
			delete(r.addrs, name)
		}
	}
}

// DialContext dials addr ("host:port"): by the addresses its host resolved
// to, in turn until one answers, if it is a name the resolver knows; as
// the net package does otherwise.
func (r *Resolver) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return r.dialer.DialContext(ctx, network, addr)
	}
	r.mu.RLock()
	ips := r.addrs[strings.TrimSuffix(host, ".")]
	r.mu.RUnlock()
	if len(ips) == 0 {
		return r.dialer.DialContext(ctx, network, addr)
	}
	var errs []error
	for _, ip := range ips {
		c, err := r.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}
