package caddylb

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
	"github.com/golb/caddy-lb/upstream"
)

// StatusClientClosedRequest is the status logged for a request whose client
// went away before the backend answered (nginx's 499). The client never
// sees it.
const StatusClientClosedRequest = 499

// newTransport returns the transport an app proxies through. Plain http
// backends go through upstream.Transport, which does each exchange in the
// handler's goroutine over pooled keep-alive connections (up to 256 idle
// per instance) instead of handing it to http.Transport's per-connection
// goroutines: that hand-off is most of a proxied request's cost. https
// backends (which may speak HTTP/2) and whatever else the fast path leaves
// out go through a standard http.Transport. The app's timeout applies to
// dialing, the TLS handshake and waiting for response headers either way.
func newTransport(timeout time.Duration) *upstream.Transport {
	return &upstream.Transport{
		Fallback:              newStdTransport(timeout),
		DialContext:           dialer(timeout).DialContext,
		DialTimeout:           timeout,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		MaxIdlePerHost:        256,
		IdleTimeout:           90 * time.Second,
	}
}

// newStdTransport returns a standard transport with the same settings.
func newStdTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		// Backends are addressed directly: HTTP_PROXY and friends in
		// Caddy's environment are not meant for them.
		Proxy:                 nil,
		DialContext:           dialer(timeout).DialContext,
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

func dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
}

// newProbeTransport returns the transport an instance's health checks go
// through: its own single idle connection, so probes neither wait behind
// nor take connections from proxied traffic. It is the fast path too: an
// idle connection there costs no goroutine, which counts when an app
// checks thousands of instances. Each probe's context bounds it with the
// app's timeout.
func newProbeTransport() *upstream.Transport {
	std := newStdTransport(probeTimeout)
	std.MaxIdleConnsPerHost = 1
	t := newTransport(probeTimeout)
	t.Fallback, t.MaxIdlePerHost = std, 1
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

// proxy sends r to the instance through rp and returns the status the
// client got or should get, and the error that failed the exchange (nil if
// the instance answered; the response is then under way or done). The
// instance records how long it took to send its response headers (from
// just before the request is sent, dialing included), the status, and
// the outcome for passive health checks in pool (trial: the request is
// the trial of an ejected instance). If obs is not nil, it is told that
// latency too; a request the instance failed (502, 504) counts as taking
// at least penalty, so that a broken instance looks slow rather than fast.
// Requests the client gave up on count nothing for obs or passive checks.
func proxy(rp *httputil.ReverseProxy, in *backend.Instance, pool *backend.Pool, trial bool,
	obs strategy.Observer, penalty time.Duration, w http.ResponseWriter, r *http.Request) (status int, err error) {
	pw := writers.Get().(*proxyWriter)
	pw.ResponseWriter = w
	pw.obs, pw.in, pw.start = obs, in, backend.Now()
	defer func() {
		// Also when the response is aborted with a panic: the status the
		// client got is the one written, if any.
		status := pw.status
		if status == 0 {
			status = http.StatusBadGateway
		}
		now := backend.Now()
		in.RecordResponse(status, now)
		switch p := in.Policy(); {
		case status == StatusClientClosedRequest:
			if trial {
				in.AbandonTrial()
			}
		case pw.err != nil:
			pool.Failed(in, now, pw.err.Error(), trial)
		case p.UnhealthyStatus.Has(status):
			pool.Failed(in, now, "status "+strconv.Itoa(status), trial)
		default:
			in.Succeeded(trial, now)
		}
		*pw = proxyWriter{}
		writers.Put(pw)
	}()

	rp.ServeHTTP(pw, r)
	if pw.err == nil {
		return pw.status, nil
	}
	status = statusFor(r, pw.err)
	pw.status = status
	if status != StatusClientClosedRequest {
		in.RecordFailure()
		pw.observeAtLeast(penalty)
	}
	return status, pw.err
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
	status  int  // the final status written, or the error's
	err     error

	// Latency observation.
	obs      strategy.Observer // nil unless the strategy wants it
	in       *backend.Instance
	start    int64 // backend.Now before the request was sent
	observed bool
}

var writers = sync.Pool{New: func() any { return new(proxyWriter) }}

func (w *proxyWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		if !w.started {
			w.status = code
		}
		w.started = true
		w.observe()
	}
	w.ResponseWriter.WriteHeader(code)
}

// observe records the time since the request was sent as the instance's
// response-header latency, once, and reports it to the strategy if it
// wants it.
func (w *proxyWriter) observe() {
	if w.observed {
		return
	}
	w.observed = true
	now := backend.Now()
	d := time.Duration(now - w.start)
	w.in.ObserveResponseHeader(d, now)
	if w.obs != nil {
		w.obs.Observe(w.in, d)
	}
}

// observeAtLeast reports the time since the request was sent to the
// strategy, at least floor, once, for a request the instance failed: it
// records no response-header latency, there was no response.
func (w *proxyWriter) observeAtLeast(floor time.Duration) {
	if w.obs != nil && !w.observed {
		w.observed = true
		w.obs.Observe(w.in, max(time.Duration(backend.Now()-w.start), floor))
	}
}

func (w *proxyWriter) Write(b []byte) (int, error) {
	if !w.started {
		// A body without WriteHeader: 200, as the server will send.
		w.status = http.StatusOK
		w.started = true
		w.observe()
	}
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
