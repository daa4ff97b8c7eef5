// Package discovery finds an app's instances at run time: it asks a source
// (any of Caddy's dynamic upstream modules, polled; or a Watcher, such as
// the etcd source, which pushes its changes) for the current set of
// instances, in the background, and hands each new set to the load
// balancer. Discovery says who exists; health checks (package health) say
// who is fit.
//
// A source that fails (DNS SERVFAIL, a timeout, etcd unreachable) never
// empties a set: the last good one stays and the error is reported with
// it. An answer that is validly empty empties it.
package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Instance is an instance a source says exists.
type Instance struct {
	// URL is the instance's base URL: a scheme (http, https or h2c), a
	// host (an IP, or a name resolved by Resolver) and a port.
	URL *url.URL
	// Key is URL as a string, made once: sets are compared by it.
	Key string
	// Weight is the instance's weight, 1 unless the source gives one.
	Weight int
	// Priority is the instance's failover tier (0 the first, higher
	// numbers backups), 0 unless the source gives one (an SRV record's
	// priority).
	Priority int
	// Draining says the source wants the instance to take no new
	// requests.
	Draining bool
}

// Set is what a source said at one time.
type Set struct {
	// Instances are those the source gives, in its order, each URL once.
	Instances []Instance
	// Err is why the last attempt to learn the set failed; Instances are
	// then the last good set. nil when the last attempt succeeded.
	Err error
	// Updated is when the source last answered with a set.
	Updated time.Time
	// Skipped counts the entries of the source's last answer that were
	// left out (malformed; a name that does not resolve).
	Skipped int
}

// Schemes are the schemes of discovered instances.
var Schemes = []string{"http", "https", "h2c"}

// ErrScheme is a scheme discovered instances cannot have.
var ErrScheme = errors.New("scheme must be http, https or h2c")

// CheckScheme checks a scheme of discovered instances.
func CheckScheme(scheme string) error {
	for _, s := range Schemes {
		if scheme == s {
			return nil
		}
	}
	return fmt.Errorf("%w, got %q", ErrScheme, scheme)
}

// InstanceURL returns the URL of an instance at addr ("host:port", or
// "network/host:port" as Caddy's upstream sources may give it), with
// scheme.
func InstanceURL(scheme, addr string) (*url.URL, error) {
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[i+1:] // the network: tcp, tcp4, tcp6
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" || port == "" {
		return nil, fmt.Errorf("address %q: want a host and a port", addr)
	}
	return &url.URL{Scheme: scheme, Host: net.JoinHostPort(strings.TrimSuffix(host, "."), port)}, nil
}

// NewInstance returns the instance at u, of weight 1.
func NewInstance(u *url.URL) Instance {
	return Instance{URL: u, Key: u.String(), Weight: 1}
}
