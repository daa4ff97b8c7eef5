package caddylb

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
			pr.Out.Header["Via"] = append(pr.Out.Header["Via"], via(pr.In))
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

// proxy sends r to the instance in through t once, and returns the
// status the client got or should get, and the error that failed the
// exchange (nil if the instance answered; the response is then under way
// or done). cookie, if not empty, is the sticky cookie's Set-Cookie value,
// added to the final response only (never to a 1xx). trial says the
// request is an ejected instance's trial (see backend.Pool.Admit).
//
// The instance records how long it took to send its response headers
// (from just before the request was sent, dialing included), the status,
// and the outcome for passive health checks: a failure when it could not
// be reached, broke the exchange, did not answer in time, answered with
// one of unhealthy_status, or cut its response short; a success
// otherwise, a protocol switch (101) included. What the client caused (it
// went away, or sent a broken body) counts for nobody. The strategy, if it
// learns from latencies, is told that latency too; a request the instance
// failed counts as taking at least the app's timeout, so that a broken
// instance looks slow rather than fast.
func (a *App) proxy(t *target, in *backend.Instance, trial bool, cookie string, w http.ResponseWriter, r *http.Request) (status int, err error) {
	in.Acquire()
	defer a.done(in) // also when the proxy aborts the response with a panic

	// Caddy's own Server header gives way to the backend's, as with
	// reverse_proxy; it is put back should the attempt fail unanswered.
	h := w.Header()
	server := h["Server"]
	delete(h, "Server")

	pw := writers.Get().(*proxyWriter)
	pw.ResponseWriter = w
	pw.obs, pw.in, pw.start, pw.cookie = a.observer, in, backend.Now(), cookie
	completed := false
	defer func() {
		// Also when the response is aborted with a panic: the status the
		// client got is the one written, if any.
		status := pw.status
		cutShort := !completed && pw.started && !pw.hijacked && pw.writeErr == nil && r.Context().Err() == nil
		switch {
		case status == 0:
			status = http.StatusBadGateway
		case cutShort:
			// The client got a status, but the instance broke off its
			// body: a failed exchange.
			status = http.StatusBadGateway
			in.RecordFailure()
		}
		now := backend.Now()
		in.RecordResponse(status, now)
		switch p := in.Policy(); {
		case status == StatusClientClosedRequest || errors.Is(pw.err, upstream.ErrRequestBody):
			if trial {
				in.AbandonTrial()
			}
		case cutShort:
			a.pool.Failed(in, now, "response cut short", trial)
		case pw.err != nil:
			a.pool.Failed(in, now, pw.err.Error(), trial)
		case p.UnhealthyStatus.Has(status):
			a.pool.Failed(in, now, "status "+strconv.Itoa(status), trial)
		default:
			in.Succeeded(trial, now)
		}
		if !pw.started && server != nil {
			h["Server"] = server
		}
		*pw = proxyWriter{}
		writers.Put(pw)
	}()

	t.proxy.ServeHTTP(pw, r)
	completed = true
	if pw.err == nil {
		return pw.status, nil
	}
	status = statusFor(r, pw.err)
	pw.status = status
	if status < 500 {
		return status, pw.err // the client's doing
	}
	in.RecordFailure()
	pw.observeAtLeast(a.timeout)
	return status, pw.err
}

// statusFor maps a proxying error to a status: 499 if the client went
// away; for a request body the client broke, 400 (413 where Caddy's
// request_body limit stopped it, 408 where the client was too slow); 502 if
// the instance could not be reached or broke the exchange; 504 if it did
// not answer in time.
func statusFor(r *http.Request, err error) int {
	if r.Context().Err() != nil {
		return StatusClientClosedRequest
	}
	if errors.Is(err, upstream.ErrRequestBody) {
		return clientBodyStatus(err)
	}
	if dialFailed(err) {
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

// dialFailed reports whether err says the connection to the instance
// could not be made.
func dialFailed(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "dial"
}

// clientBodyStatus is the status for a failure to read the client's request
// body.
func clientBodyStatus(err error) int {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return http.StatusRequestEntityTooLarge
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return StatusClientClosedRequest // the connection ended mid-body
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// proxyWriter carries a proxying error from the ReverseProxy's error
// handler back to ServeHTTP, which returns it to Caddy so that
// handle_errors can render it, adds the sticky cookie to the final
// response, and records what the client got. It passes everything else
// through.
type proxyWriter struct {
	http.ResponseWriter
	started  bool   // a final status, body bytes or a protocol switch were written
	hijacked bool   // the connection was taken for a protocol switch
	status   int    // the final status written, or the error's
	cookie   string // Set-Cookie value for the final response; "" for none
	err      error
	writeErr error // the first failed write to the client

	// Latency observation.
	obs      strategy.Observer // nil unless the strategy wants it
	in       *backend.Instance
	start    int64 // backend.Now before the request was sent
	observed bool
}

var writers = sync.Pool{New: func() any { return new(proxyWriter) }}

func (w *proxyWriter) WriteHeader(code int) {
	if code >= 200 && !w.started {
		w.final(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

// final records the final response's status, once, and adds what goes on
// it only.
func (w *proxyWriter) final(code int) {
	w.status = code
	w.started = true
	w.observe()
	if _, ok := w.Header()["Content-Type"]; !ok {
		// A response the backend did not label stays unlabelled: a key
		// with no value stops net/http from sniffing one.
		w.Header()["Content-Type"] = nil
	}
	if w.cookie != "" {
		w.Header().Add("Set-Cookie", w.cookie)
	}
	w.Header()["Via"] = append(w.Header()["Via"], viaValue)
}

// Hijack takes the client's connection for a protocol switch: the
// ReverseProxy then writes the instance's 101 on it itself, with the
// headers of this writer's map, and copies both ways.
func (w *proxyWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && !w.started {
		w.final(http.StatusSwitchingProtocols)
		w.hijacked = true
	}
	return c, brw, err
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
		w.final(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	if err != nil && w.writeErr == nil {
		w.writeErr = err
	}
	return n, err
}

// Unwrap lets http.ResponseController reach Caddy's writer to flush.
func (w *proxyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// recordProxyError is the ReverseProxy's error handler.
func recordProxyError(w http.ResponseWriter, _ *http.Request, err error) {
	pw, ok := w.(*proxyWriter)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	if pw.started {
		// The client has a status line already (or its connection was
		// taken for a protocol switch): all that is left is to cut the
		// response short.
		panic(http.ErrAbortHandler)
	}
	pw.err = err
}

// viaValue is what the load balancer adds to the Via header of responses
// (RFC 9110, 7.6.3): the protocol it received them with, HTTP/1.1 for
// every instance today, and its name, as reverse_proxy does.
const viaValue = "1.1 Caddy"

// via returns what the load balancer adds to the Via header of a request it
// received as r.
func via(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return "1.1 Caddy"
	case r.ProtoMajor == 2:
		return "2.0 Caddy"
	case r.ProtoMajor == 3:
		return "3.0 Caddy"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0 Caddy"
	}
	return strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor) + " Caddy"
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

// done ends a request to in.
func (a *App) done(in *backend.Instance) {
	in.Release()
	if a.retired.Load() {
		// Caddy finishes the requests of an unloaded config on it, after
		// Cleanup: the connection this one gave back must not linger.
		a.transport.CloseIdleConnections()
	}
}
