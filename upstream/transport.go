package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults of the Transport's settings.
const (
	DefaultIdleTimeout            = 90 * time.Second
	DefaultMaxIdlePerHost         = 100
	DefaultMaxResponseHeaderBytes = 1 << 20
)

// Transport sends requests to HTTP/1.1 backends over pooled keep-alive
// connections, in the caller's goroutine (see the package documentation
// for what it takes and what it passes to Fallback). It implements
// http.RoundTripper and is safe for concurrent use; its fields must be
// set before its first use and not changed after. The zero value is
// usable: plain http only, no timeouts beyond the requests' contexts.
//
// The request written upstream is the one http.Transport with
// DisableCompression writes for the same *http.Request: Transport never
// adds "Accept-Encoding: gzip" nor decompresses. Pools are per URL host
// (as written, with or without port) and scheme, for the Transport's
// lifetime: meant for a fixed set of backends.
//
// Not supported: proxies (HTTP_PROXY and friends), Request.Cancel (use the
// request's context), HTTP/2, limits on connections per host, and the
// httptrace hooks about connections (GetConn, GotConn, DNS*, Connect*,
// TLSHandshake*). Those it calls: Got1xxResponse, Got100Continue,
// Wait100Continue, GotFirstResponseByte, and through (*http.Request).Write
// (used for every request whose trace has them) WroteHeaderField,
// WroteHeaders and WroteRequest.
type Transport struct {
	// Fallback carries the requests the fast path does not take (see
	// above). Nil: such requests fail with an error.
	Fallback http.RoundTripper

	// UseFallback, if set, is asked about each request the fast path
	// would take: true sends it to Fallback instead (for a backend to be
	// spoken to over HTTP/2, say).
	UseFallback func(*http.Request) bool

	// DialContext dials backends. Nil: a net.Dialer with DialTimeout and
	// TCP keep-alive probes every 30s. An error that is not a
	// *net.OpError is wrapped in one with Op "dial".
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// DialTimeout bounds dialing a connection; zero means no limit beyond
	// the request's context.
	DialTimeout time.Duration

	// TLSHandshakeTimeout bounds the TLS handshake of https connections;
	// zero means no limit beyond the request's context.
	TLSHandshakeTimeout time.Duration

	// ResponseHeaderTimeout, if non-zero, is how long to wait for the
	// response headers once the request (with its body) has been written.
	// Past it, RoundTrip fails with a net.Error whose Timeout() is true.
	ResponseHeaderTimeout time.Duration

	// ExpectContinueTimeout, if non-zero, is how long to wait for a
	// "100 Continue" before sending the body of a request with
	// "Expect: 100-continue". Zero sends the body at once.
	ExpectContinueTimeout time.Duration

	// IdleTimeout is how long a connection may stay idle in the pool.
	// Zero means DefaultIdleTimeout; negative means no limit.
	IdleTimeout time.Duration

	// MaxIdlePerHost caps the idle connections kept per host. Zero means
	// DefaultMaxIdlePerHost; negative disables keep-alive (every
	// connection is closed after its response).
	MaxIdlePerHost int

	// MaxResponseHeaderBytes caps the bytes read before the final
	// response's headers end. Zero means DefaultMaxResponseHeaderBytes.
	// The count restarts after each 1xx response given to a
	// Got1xxResponse hook, as in http.Transport.
	MaxResponseHeaderBytes int64

	// TLSClientConfig, if non-nil, enables https on the fast path with
	// this configuration. ServerName defaults to the URL's host name
	// (SNI), and NextProtos is replaced by "http/1.1". Nil: https
	// requests go to Fallback.
	TLSClientConfig *tls.Config

	initOnce sync.Once
	dialer   net.Dialer

	mu    sync.Mutex                            // serialises adding pools
	pools atomic.Pointer[map[poolKey]*hostPool] // copy on write

	// For tests.
	now             func() time.Time
	testHookRelease func(pooled bool) // a connection's exchange ended
}

// poolKey names the connections a request may use: by the URL's host as
// written (with or without a port), and whether it is TLS.
type poolKey struct {
	tls  bool
	host string
}

var (
	errNoFallback = errors.New("upstream: request not handled on the fast path and no Fallback is set")
	aLongTimeAgo  = time.Unix(1, 0)
)

// timeoutError is a net.Error that says it is a timeout.
type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

var (
	errHeaderTimeout = &timeoutError{"upstream: timeout awaiting response headers"}
	errTLSTimeout    = &timeoutError{"upstream: TLS handshake timeout"}
)

func (t *Transport) init() {
	t.dialer = net.Dialer{Timeout: t.DialTimeout, KeepAlive: 30 * time.Second}
}

func (t *Transport) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleTimeout == 0 {
		return DefaultIdleTimeout
	}
	return t.IdleTimeout
}

func (t *Transport) maxIdle() int {
	if t.MaxIdlePerHost == 0 {
		return DefaultMaxIdlePerHost
	}
	return t.MaxIdlePerHost
}

func (t *Transport) maxHeaderBytes() int64 {
	if t.MaxResponseHeaderBytes <= 0 {
		return DefaultMaxResponseHeaderBytes
	}
	return t.MaxResponseHeaderBytes
}

// RoundTrip implements http.RoundTripper. It returns once the response
// headers are in; the connection goes back to the pool when the body has
// been read to its end. The request body is always closed, possibly after
// RoundTrip returns.
//
// Errors: a dial failure is a *net.OpError with Op "dial"; no response
// headers within ResponseHeaderTimeout is a net.Error with Timeout() true;
// when the request's context ends first, the context's error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	hp, err := t.route(req)
	if err != nil {
		closeBody(req.Body)
		return nil, err
	}
	if hp == nil {
		if t.Fallback == nil {
			closeBody(req.Body)
			return nil, errNoFallback
		}
		req = withInterimTrace(req)
		if hasBody(req) {
			r := new(http.Request)
			*r = *req
			r.Body = taggedBody{req.Body}
			req = r
		}
		return t.Fallback.RoundTrip(req)
	}

	ctx := req.Context()
	var rb *reqBody
	wreq := req
	if hasBody(req) {
		rb = &reqBody{rc: req.Body}
		wreq = withBody(req, rb)
	}
	fresh := false
	for {
		if err := ctx.Err(); err != nil {
			rb.closeOwned(req)
			return nil, err
		}
		c, err := hp.get(ctx, fresh)
		if err != nil {
			rb.closeOwned(req)
			return nil, err
		}
		resp, err := t.exchange(c, req, wreq, rb)
		if err == nil {
			return resp, nil
		}
		ae, ok := err.(*attemptError)
		if !ok {
			return nil, err
		}
		if !c.reused || !ae.retryable(req, rb) {
			if rb != nil && rb.isDetached() {
				rb.closeOwned(req)
			}
			if ae.nothingWritten && !ae.final {
				return nil, &notSentError{ae.err}
			}
			return nil, ae.err
		}
		// Replay on a fresh connection: the idle one was stale.
		if rb != nil {
			switch {
			case rb.isDetached():
				rb = &reqBody{rc: rb.rc}
			case req.GetBody != nil:
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				rb = &reqBody{rc: body}
			default:
				return nil, ae.err
			}
			wreq = withBody(req, rb)
		}
		fresh = true
	}
}

// route checks req and returns the pool it goes through on the fast path,
// or nil for Fallback.
func (t *Transport) route(req *http.Request) (*hostPool, error) {
	if req.URL == nil {
		return nil, errors.New("upstream: nil Request.URL")
	}
	if req.Header == nil {
		return nil, errors.New("upstream: nil Request.Header")
	}
	var useTLS bool
	switch req.URL.Scheme {
	case "http":
	case "https":
		if t.TLSClientConfig == nil {
			return nil, nil
		}
		useTLS = true
	default:
		return nil, nil
	}
	if req.Method == http.MethodConnect || (isUpgrade(req.Header) && hasBody(req)) {
		return nil, nil
	}
	if t.UseFallback != nil && t.UseFallback(req) {
		return nil, nil
	}
	if err := validateHeaders(req.Header); err != "" {
		return nil, fmt.Errorf("upstream: invalid header %s", err)
	}
	if err := validateHeaders(req.Trailer); err != "" {
		return nil, fmt.Errorf("upstream: invalid trailer %s", err)
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) {
		return nil, fmt.Errorf("upstream: invalid method %q", req.Method)
	}
	if req.URL.Host == "" {
		return nil, errors.New("upstream: no Host in request URL")
	}
	if req.ContentLength != 0 && req.Body == nil {
		return nil, fmt.Errorf("upstream: Request.ContentLength=%d with nil Body", req.ContentLength)
	}
	hp := t.pool(poolKey{useTLS, req.URL.Host})
	if hp.fallback {
		return nil, nil
	}
	return hp, nil
}

// pool returns the pool for key, making it on first use.
func (t *Transport) pool(key poolKey) *hostPool {
	if m := t.pools.Load(); m != nil {
		if hp := (*m)[key]; hp != nil {
			return hp
		}
	}
	t.initOnce.Do(t.init)
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.pools.Load()
	if old != nil {
		if hp := (*old)[key]; hp != nil {
			return hp
		}
	}
	m := make(map[poolKey]*hostPool, 1)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	hp := newHostPool(t, key)
	m[key] = hp
	t.pools.Store(&m)
	return hp
}

// CloseIdleConnections closes the idle connections of every host, and
// those of Fallback if it has such a method. Connections in use are not
// touched; they may become idle later.
func (t *Transport) CloseIdleConnections() {
	if m := t.pools.Load(); m != nil {
		for _, hp := range *m {
			hp.closeIdle()
		}
	}
	if ci, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// NotSent reports whether err, from RoundTrip, says that the connection
// failed before any byte of the request was written to it: the backend
// cannot have seen the request, so it may be sent elsewhere whatever its
// method (its body, if any, was not read). Dial errors are not reported
// here; they are *net.OpError with Op "dial".
func NotSent(err error) bool {
	_, ok := errors.AsType[*notSentError](err)
	return ok
}

// ErrRequestBody is wrapped by the errors of RoundTrip (on both paths) and
// of the request body's Read that come from reading the request body:
// the request failed because its body could not be read (its client sent
// a malformed one, was too slow, or went away), not because of the
// backend. errors.Is and errors.As also reach the body's own error.
var ErrRequestBody = errors.New("reading the request body")

// bodyReadError is an error from reading the request body.
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string   { return "upstream: reading the request body: " + e.err.Error() }
func (e *bodyReadError) Unwrap() []error { return []error{ErrRequestBody, e.err} }

// taggedBody wraps the body of a request for Fallback, so that the errors
// of reading it wrap ErrRequestBody there too.
type taggedBody struct{ io.ReadCloser }

func (b taggedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		if _, ok := err.(*bodyReadError); !ok {
			err = &bodyReadError{err}
		}
	}
	return n, err
}

// notSentError is an error after which nothing of the request was sent.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// attemptError is a failed exchange on one connection, with what RoundTrip
// needs to decide whether to replay the request on a fresh connection.
type attemptError struct {
	err            error
	nothingWritten bool // no byte of the request reached the connection
	gotBytes       bool // some byte of the response arrived
	final          bool // canceled, timed out, or the request body failed
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// retryable reports whether req may be replayed after e on a reused
// connection, by http.Transport's rules: never once a response byte has
// arrived; if nothing was written, any request whose body can be replayed;
// otherwise only idempotent requests (GET, HEAD, OPTIONS, TRACE or with an
// Idempotency-Key) whose body can be replayed. A body can be replayed if
// there is none, if GetBody is set, or if it has not been read yet.
func (e *attemptError) retryable(req *http.Request, rb *reqBody) bool {
	if e.gotBytes || e.final {
		return false
	}
	if rb != nil && !rb.isDetached() && req.GetBody == nil {
		return false
	}
	if e.nothingWritten {
		return true
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return hasHeader(req.Header, "Idempotency-Key") || hasHeader(req.Header, "X-Idempotency-Key")
}

func hasHeader(h http.Header, key string) bool {
	_, ok := h[key]
	return ok
}

func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// withBody returns a shallow copy of req with body rb.
func withBody(req *http.Request, rb *reqBody) *http.Request {
	r := new(http.Request)
	*r = *req
	r.Body = rb
	return r
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		_ = b.Close()
	}
}

// isUpgrade reports whether h asks for a protocol switch.
func isUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != "" && httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade")
}

// wantsClose reports whether req asks that its connection be closed.
func wantsClose(req *http.Request) bool {
	return req.Close || httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close")
}

// validateHeaders is http.Transport's check of outgoing header fields: it
// returns what is wrong, or "".
func validateHeaders(h http.Header) string {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Sprintf("field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Sprintf("field value for %q", k)
			}
		}
	}
	return ""
}
