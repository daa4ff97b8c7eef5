package caddylb

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http2"
)

// newH2CTransport returns the transport of one h2c instance: HTTP/2 over
// cleartext TCP, with prior knowledge. Its requests share its connections,
// a new one opening when the instance's SETTINGS_MAX_CONCURRENT_STREAMS
// is reached on the others; idle ones close after 90 s, and those of an
// instance drained or removed as soon as they are idle. A connection
// silent for 30 s is pinged, and closed if the ping gets no answer within
// 15 s.
//
// The app's timeout applies to dialing and, but for gRPC calls, to the
// wait for response headers: a gRPC server sends a unary call's headers
// with its answer, and the call's own deadline (grpc-timeout) bounds it.
func newH2CTransport(timeout time.Duration, dial dialFunc) *h2cTransport {
	t := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return dial(ctx, network, addr)
		},
		DisableCompression: true,
		IdleConnTimeout:    90 * time.Second,
		ReadIdleTimeout:    30 * time.Second,
		PingTimeout:        15 * time.Second,
	}
	return &h2cTransport{h2: t, timeout: timeout}
}

// h2cTransport is an h2c instance's transport, with the app's response
// header timeout on top of http2.Transport, which has none.
type h2cTransport struct {
	h2      *http2.Transport
	timeout time.Duration
}

// errHeaderTimeout ends a request whose response headers took longer than
// the app's timeout; RoundTrip returns it as a timeout.
var errHeaderTimeout = errors.New("timeout awaiting response headers")

// headerTimeoutError is the net.Error RoundTrip returns for it.
type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return errHeaderTimeout.Error() }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

func (t *h2cTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if isGRPC(req.Header) {
		return t.h2.RoundTrip(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(t.timeout, func() { cancel(errHeaderTimeout) })
	resp, err := t.h2.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if err != nil {
		if context.Cause(ctx) == errHeaderTimeout {
			err = headerTimeoutError{}
		}
		cancel(nil)
	}
	return resp, err
}

// CloseIdleConnections closes the instance's idle connections.
func (t *h2cTransport) CloseIdleConnections() { t.h2.CloseIdleConnections() }

// isGRPC reports whether a message's headers say it is gRPC's
// (application/grpc, or a subtype such as application/grpc+proto).
func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	v := ct[0]
	return len(v) >= len("application/grpc") && strings.EqualFold(v[:len("application/grpc")], "application/grpc") &&
		(len(v) == len("application/grpc") || v[len("application/grpc")] == '+' || v[len("application/grpc")] == ';')
}
