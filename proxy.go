package caddylb

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
	"github.com/golb/caddy-lb/upstream"
)

// StatusClientClosedRequest is the status logged for a request whose client
// went away before the backend answered (nginx's 499). The client never
// sees it.
const StatusClientClosedRequest = 499

// proxy sends r to the instance in (acquired by pick, released here)
// through t once, and returns the status the client got or should get,
// and the error that failed the exchange (nil if the instance answered;
// the response is then under way or done; a *retryStatusError if it
// answered with a status of retry_status that was discarded for a retry).
// cookie, if not empty, is the sticky cookie's Set-Cookie value,
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
func (a *App) proxy(t *target, in *backend.Instance, trial bool, cookie string, rs retryState, w http.ResponseWriter, r *http.Request) (status int, err error) {
	at := a.newAttempt(t, in, trial, cookie, rs, w)
	res, err := at.send(r)
	return at.finish(res, err, r)
}

// newAttempt starts an attempt of a request on in (acquired by pick, to
// release by finish or abandon) through t: see proxy.
func (a *App) newAttempt(t *target, in *backend.Instance, trial bool, cookie string, rs retryState, w http.ResponseWriter) *attempt {
	return &attempt{app: a, t: t, trial: trial, rs: rs, w: w, obs: a.observer, in: in, start: backend.Now(),
		cookie: cookie, inFlight: in.InFlight()}
}

// send builds the request to the attempt's instance from the client's r and
// sends it, and returns the instance's response (its headers) or why there
// is none. It writes nothing to the client but the 1xx responses the
// instance sends (none when the attempt is quiet).
func (at *attempt) send(r *http.Request) (*http.Response, error) {
	if err := at.outbound(at.t, r); err != nil {
		return nil, err
	}
	return at.t.rt.RoundTrip(&at.out)
}

// finish relays res to the client (or, when send failed with err, maps
// the failure to a status) and records the attempt's outcome, as proxy
// says, and releases its instance.
func (at *attempt) finish(res *http.Response, err error, r *http.Request) (status int, _ error) {
	a, in, trial := at.app, at.in, at.trial
	defer a.done(in) // also when the response is aborted with a panic

	// Caddy's own Server header gives way to the backend's, as with
	// reverse_proxy; it is put back should the attempt fail unanswered.
	h := at.w.Header()
	server := h["Server"]
	delete(h, "Server")
	defer func() {
		// Also when the response is aborted with a panic: the status the
		// client got is the one written, if any.
		status := at.status
		switch {
		case status == 0:
			status = http.StatusBadGateway
		case at.cutShort:
			// The client got a status, but the instance broke off its
			// body: a failed exchange.
			status = http.StatusBadGateway
			in.RecordFailure()
		}
		now := backend.Now()
		in.RecordResponse(status, now)
		failure := at.err
		if _, ok := failure.(*retryStatusError); ok {
			failure = nil // an answer: judged by its status, as any other
		}
		p := in.Policy()
		if a.limits.auto {
			o := limitOutcome(status, failure, p.UnhealthyStatus.Has(status), at.cutShort)
			// Requests sent after this one may have reached the instance
			// first: its in-flight count as it answered bounds what the
			// instance had better than the count it was sent with.
			in.ObserveLimit(o, max(at.inFlight, in.InFlight()), at.rtt, now)
		}
		switch {
		case status == StatusClientClosedRequest || clientsFault(failure):
			if trial {
				in.AbandonTrial()
			}
		case at.cutShort:
			a.pool.Failed(in, now, "response cut short", trial)
		case failure != nil:
			a.pool.Failed(in, now, failure.Error(), trial)
		case p.UnhealthyStatus.Has(status):
			a.pool.Failed(in, now, "status "+strconv.Itoa(status), trial)
		default:
			in.Succeeded(trial, now)
		}
		if !at.started && server != nil {
			h["Server"] = server
		}
	}()

	if at.err = err; at.err == nil {
		at.err = at.relay(res, r)
	}
	if at.cutShort {
		// The status line is out: all that is left is to abort the
		// response, so that the client sees it incomplete.
		panic(http.ErrAbortHandler)
	}
	if at.err == nil || at.started {
		return at.status, nil
	}
	if rse, ok := at.err.(*retryStatusError); ok {
		// The instance answered, with a status to retry on elsewhere.
		at.observe()
		return rse.status, at.err
	}
	status = statusFor(r, at.err)
	at.status = status
	if status < 500 {
		return status, at.err // the client's doing
	}
	in.RecordFailure()
	at.observeAtLeast(a.timeout)
	return status, at.err
}

// abandon ends an attempt that lost a race (see hedging) once its send
// has returned res or err: its response, if any, is closed unread, its
// instance released. It counts for no failure of the instance: it is
// recorded as a request the client left (499), and the time it had taken
// when given up as its latency at least, for the latency quantiles only,
// so that hedging does not hide the slow answers it cut short.
func (at *attempt) abandon(res *http.Response, err error) {
	if res != nil {
		res.Body.Close()
	}
	now := backend.Now()
	in := at.in
	if res == nil {
		in.ObserveLatencyFloor(time.Duration(now-at.start), now)
	}
	in.RecordResponse(StatusClientClosedRequest, now)
	if at.trial {
		in.AbandonTrial()
	}
	at.app.done(in)
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
	if errors.Is(err, errBadUpgrade) {
		return http.StatusBadRequest
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

// clientsFault reports whether the client's request caused err: its body
// broke, or it asked for something that cannot be sent.
func clientsFault(err error) bool {
	return errors.Is(err, upstream.ErrRequestBody) || errors.Is(err, errBadUpgrade)
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

// attempt is one try of a request on one instance: the request sent to
// it and the response relayed to the client.
type attempt struct {
	app    *App
	t      *target
	trial  bool       // the request is the instance's trial (see backend.Pool.Admit)
	rs     retryState // the request's attempts so far, for retry_status
	w      http.ResponseWriter
	cookie string // Set-Cookie value for the final response; "" for none
	quiet  bool   // 1xx responses are not relayed: the attempt races another

	out     http.Request // to the instance
	url     url.URL      // out's
	values  [4]string    // X-Forwarded-For, -Host, Via and Upgrade of out
	via     [1]string    // the final response's Via, if the instance sent none
	upgrade string       // the protocol the client asks to switch to, if any

	started  bool  // the final status or a protocol switch were written
	hijacked bool  // the connection was taken for a protocol switch
	cutShort bool  // the instance broke off the response's body
	status   int   // the final status written, or the error's
	err      error // what failed the attempt before its response started

	// Latency observation.
	obs      strategy.Observer // nil unless the strategy wants it
	in       *backend.Instance
	start    int64         // backend.Now before the request was sent
	rtt      time.Duration // to the response headers, once observed
	inFlight int64         // the instance's requests in flight as it was sent, itself included
	observed bool
}

// observe records the time since the request was sent as the instance's
// response-header latency, once, and reports it to the strategy if it
// wants it.
func (at *attempt) observe() {
	if at.observed {
		return
	}
	at.observed = true
	now := backend.Now()
	d := time.Duration(now - at.start)
	at.rtt = d
	at.in.ObserveResponseHeader(d, now)
	if at.obs != nil {
		at.obs.Observe(at.in, d)
	}
}

// observeAtLeast reports the time since the request was sent to the
// strategy, at least floor, once, for a request the instance failed: it
// records no response-header latency, there was no response.
func (at *attempt) observeAtLeast(floor time.Duration) {
	if at.obs != nil && !at.observed {
		at.observed = true
		at.obs.Observe(at.in, max(time.Duration(backend.Now()-at.start), floor))
	}
}

// done ends a request to in, which pick acquired.
func (a *App) done(in *backend.Instance) {
	in.Release()
	if q := a.overload.queue; q != nil {
		q.freed()
	}
	if a.retired.Load() {
		// Caddy finishes the requests of an unloaded config on it, after
		// Cleanup: the connection this one gave back must not linger.
		a.closeIdle()
	}
}
