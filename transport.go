package caddylb

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/golb/caddy-lb/upstream"
)

// newTransport returns the transport an app proxies through. Plain http
// backends go through upstream.Transport, which does each exchange in the
// handler's goroutine over pooled keep-alive connections (up to 256 idle
// per instance) instead of handing it to http.Transport's per-connection
// goroutines: that hand-off is most of a proxied request's cost. https
// backends (which may speak HTTP/2) and whatever else the fast path leaves
// out go through a standard http.Transport. The app's timeout applies to
// dialing, the TLS handshake and waiting for response headers either way.
//
// dial dials the backends: a net.Dialer with the timeout, or the resolver
// of discovered instances.
func newTransport(timeout time.Duration, dial dialFunc, tlsConfig *tls.Config) *upstream.Transport {
	return &upstream.Transport{
		Fallback:              newStdTransport(timeout, dial, tlsConfig),
		DialContext:           dial,
		DialTimeout:           timeout,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		MaxIdlePerHost:        256,
		IdleTimeout:           90 * time.Second,
	}
}

// newStdTransport returns a standard transport with the same settings. It
// speaks HTTP/2 to https instances that offer it (ALPN), HTTP/1.1 to the
// others.
func newStdTransport(timeout time.Duration, dial dialFunc, tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig: tlsConfig,
		// Backends are addressed directly: HTTP_PROXY and friends in
		// Caddy's environment are not meant for them.
		Proxy:                 nil,
		DialContext:           dial,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		// A proxy passes bodies through as the backend encoded them.
		DisableCompression: true,
	}
}

// closeIdle closes the idle connections of the app's transports.
func (a *App) closeIdle() {
	a.transport.CloseIdleConnections()
	if m := a.members.Load(); m != nil {
		for _, t := range m.targets {
			t.closeIdle()
		}
	}
}

// dialFunc dials backends, as net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dialer returns the dialer of backends, with timeout.
func dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
}
