package caddylb

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// StatusClientClosedRequest is the status logged for a request whose client
// went away before the backend answered (nginx's 499). The client never
// sees it.
const StatusClientClosedRequest = 499

// newTransport returns the transport an app proxies through: one keep-alive
// pool per instance, sized for a busy backend, and the app's timeout
// applied to dialing, the TLS handshake and waiting for response headers.
func newTransport(timeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		// Backends are addressed directly: HTTP_PROXY and friends in
		// Caddy's environment are not meant for them.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
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

// newProbeTransport returns the transport health checks go through: its
// own small pool, so probes neither wait behind nor take connections from
// proxied traffic.
func newProbeTransport(timeout time.Duration) *http.Transport {
	t := newTransport(timeout)
	t.MaxIdleConnsPerHost = 1
	return t
}

// newProxy returns the reverse proxy to the instance at target.
//
// httputil.ReverseProxy strips hop-by-hop headers (and those named in
// Connection) both ways, streams bodies both ways, keeps trailers, forwards
// 1xx responses, flushes event streams and responses of unknown length at
// once, and hijacks for protocol upgrades such as WebSocket; after the
// response has started it aborts the stream on error instead of writing a
// second status. The Rewrite here adds what a load balancer in Caddy needs
// on top: the client's Host kept, X-Forwarded-* set with Caddy's trusted
// proxies, the instance's base path joined with the request's path.
func newProxy(target *url.URL, transport http.RoundTripper, errorLog *log.Logger) *httputil.ReverseProxy {
	var user, pass string
	var hasAuth bool
	if target.User != nil {
		user = target.User.Username()
		pass, _ = target.User.Password()
		hasAuth = true
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// ReverseProxy drops query parameters it cannot parse and
			// re-encodes the rest; a load balancer passes the query on
			// exactly as the client sent it, as Caddy's reverse_proxy does.
			pr.Out.URL.RawQuery = pr.In.URL.RawQuery
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			// The server fills in request trailers as the body reaches its
			// end; the outbound request's copy of the map, made before,
			// would stay empty. Sharing the map sends them on.
			pr.Out.Trailer = pr.In.Trailer
			setForwarded(pr)
			if hasAuth && pr.Out.Header.Get("Authorization") == "" {
				pr.Out.SetBasicAuth(user, pass)
			}
		},
		Transport:    transport,
		BufferPool:   copyBuffers,
		ErrorHandler: recordProxyError,
		ErrorLog:     errorLog,
	}
}

// setForwarded sets X-Forwarded-For, -Proto and -Host on the outbound
// request. Values the client sent are kept (and X-Forwarded-For extended)
// only when Caddy counts the client as a trusted proxy (the server's
// trusted_proxies); otherwise they are replaced, so a client cannot spoof
// its address to the backend.
func setForwarded(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	clientIP, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		clientIP = in.RemoteAddr
	}
	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	trusted, _ := caddyhttp.GetVar(in.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	if !trusted {
		out.Header.Set("X-Forwarded-For", clientIP)
		out.Header.Set("X-Forwarded-Proto", proto)
		out.Header.Set("X-Forwarded-Host", in.Host)
		return
	}
	if prior := in.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		clientIP = strings.Join(prior, ", ") + ", " + clientIP
	}
	out.Header.Set("X-Forwarded-For", clientIP)
	if v := in.Header.Get("X-Forwarded-Proto"); v != "" {
		proto = v
	}
	out.Header.Set("X-Forwarded-Proto", proto)
	host := in.Host
	if v := in.Header.Get("X-Forwarded-Host"); v != "" {
		host = v
	}
	out.Header.Set("X-Forwarded-Host", host)
}

// proxy sends r to the instance through rp and turns a failure into the
// error Caddy should answer with. If obs is not nil, it is told how long
// the instance took to send its response headers (from just before the
// request is sent, dialing included); a request the instance failed (502,
// 504) counts as taking at least penalty, so that a broken instance looks
// slow rather than fast. Requests the client gave up on count nothing.
func proxy(rp *httputil.ReverseProxy, in *backend.Instance, obs strategy.Observer, penalty time.Duration,
	w http.ResponseWriter, r *http.Request) error {
	pw := writers.Get().(*proxyWriter)
	pw.ResponseWriter = w
	defer func() {
		*pw = proxyWriter{}
		writers.Put(pw)
	}()
	if obs != nil {
		pw.obs, pw.in, pw.start = obs, in, backend.Now()
	}

	rp.ServeHTTP(pw, r)
	if pw.err == nil {
		return nil
	}
	status := statusFor(r, pw.err)
	if status != StatusClientClosedRequest {
		in.RecordFailure()
		pw.observeAtLeast(penalty)
	}
	return caddyhttp.Error(status, fmt.Errorf("instance %s: %w", in, pw.err))
}

// statusFor maps a proxying error to a status: 499 if the client went
// away, 502 if the instance could not be reached or broke the exchange,
// 504 if it did not answer in time.
func statusFor(r *http.Request, err error) int {
	if r.Context().Err() != nil {
		return StatusClientClosedRequest
	}
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "dial" {
		return http.StatusBadGateway
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return http.StatusGatewayTimeout
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// proxyWriter carries a proxying error from the ReverseProxy's error
// handler back to ServeHTTP, which returns it to Caddy so that
// handle_errors can render it. It passes everything else through.
type proxyWriter struct {
	http.ResponseWriter
	started bool // a final status or body bytes were written
	err     error

	// Latency observation, when the strategy wants it (obs not nil).
	obs      strategy.Observer
	in       *backend.Instance
	start    int64 // backend.Now before the request was sent
	observed bool
}

var writers = sync.Pool{New: func() any { return new(proxyWriter) }}

func (w *proxyWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.started = true
		w.observe()
	}
	w.ResponseWriter.WriteHeader(code)
}

// observe reports the time since the request was sent, once, if the
// strategy wants it.
func (w *proxyWriter) observe() { w.observeAtLeast(0) }

// observeAtLeast is observe with a floor on the time reported.
func (w *proxyWriter) observeAtLeast(floor time.Duration) {
	if w.obs != nil && !w.observed {
		w.observed = true
		w.obs.Observe(w.in, max(time.Duration(backend.Now()-w.start), floor))
	}
}

func (w *proxyWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Caddy's writer to flush and to
// hijack for upgrades.
func (w *proxyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// recordProxyError is the ReverseProxy's error handler.
func recordProxyError(w http.ResponseWriter, _ *http.Request, err error) {
	pw, ok := w.(*proxyWriter)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	if pw.started {
		// The client has a status line already: all that is left is to
		// cut the response short.
		panic(http.ErrAbortHandler)
	}
	pw.err = err
}

// copyBuffers pools the 32 KiB buffers response bodies are copied through.
var copyBuffers = &bufferPool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(s []byte) { b.p.Put(&s) }

// joinPath joins an instance's base path and a request or health path with
// exactly one slash between them.
func joinPath(base, p string) string {
	switch {
	case base == "" || base == "/":
		return p
	case strings.HasSuffix(base, "/") && strings.HasPrefix(p, "/"):
		return base + p[1:]
	case !strings.HasSuffix(base, "/") && !strings.HasPrefix(p, "/"):
		return base + "/" + p
	}
	return base + p
}
