package caddylb

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/upstream"
	"golang.org/x/net/http2"
)

// Defaults and bounds of retries.
const (
	DefaultRetries            = 2
	DefaultRetryBudgetPercent = 20
	// MaxRetries bounds retries: more would only multiply the load a
	// failing fleet gets.
	MaxRetries = 10
)

// RetryPolicy holds the options of retries: a request an instance failed
// is sent to another when that is safe.
type RetryPolicy struct {
	// How many times a failed request may be retried on another instance.
	// A request that never reached an instance (no connection, or
	// reset before any byte was sent) is retried whatever its method,
	// body intact. A request that failed after it was sent (timeout,
	// reset) is retried only if it is idempotent (GET, HEAD, OPTIONS,
	// TRACE, PUT, DELETE, or with an Idempotency-Key header) and its body
	// was empty (or fully read, up to 64 KiB). Never once the response has
	// begun, nor when the client broke it. 0 turns retries off; at most
	// 10. Default: 2.
	Retries *int `json:"retries,omitempty"`

	// The time from the start of a request after which it is no longer
	// retried. Default: none (only retries bounds them).
	TryDuration *Duration `json:"try_duration,omitempty"`

	// Retries allowed, as a percentage of the requests of the last 10
	// seconds, above a floor of 10 retries in that window: a failing fleet
	// is not hammered by retry storms. Default: 20.
	RetryBudgetPercent *int `json:"retry_budget_percent,omitempty"`

	// Statuses that have an idempotent request sent to another instance
	// before anything reaches the client (Envoy's retry_on 5xx, Caddy's
	// lb_retry_match on statuses): codes ("503") or classes ("5xx"). The
	// response is discarded, within retries, try_duration and the retry
	// budget; when no retry is possible it goes to the client as sent.
	// Such a response counts for passive checks as one of
	// unhealthy_status. Default: none.
	RetryStatus Statuses `json:"retry_status,omitempty"`
}

// retrySettings are a RetryPolicy, checked, with defaults.
type retrySettings struct {
	retries int
	try     time.Duration // 0: no limit
	budget  int           // retry budget, percent of recent requests
	status  backend.StatusSet
}

func (p *RetryPolicy) compile() (r retrySettings, err error) {
	if r.retries, err = count(p.Retries, DefaultRetries, 0, MaxRetries); err != nil {
		return r, optionError("retries", err)
	}
	if r.try, err = nonNegative(p.TryDuration); err != nil {
		return r, optionError("try_duration", err)
	}
	if r.budget, err = percent(p.RetryBudgetPercent, DefaultRetryBudgetPercent); err != nil {
		return r, optionError("retry_budget_percent", err)
	}
	if len(p.RetryStatus) > 0 {
		if r.status, err = p.RetryStatus.parse(); err != nil {
			return r, optionError("retry_status", err)
		}
		if r.retries == 0 {
			return r, optionError("retry_status", fmt.Errorf("%w: it retries, and retries is 0", ErrInapplicableOption))
		}
	}
	return r, nil
}

// retryable reports whether a request that failed with status and err may
// be sent to another instance. One that never reached the instance (no
// connection, or the connection failed before any byte of it was
// written) may, whatever its method, if its body is intact. One that
// failed later (a timeout, a reset) may only if its method is idempotent
// and its body can be sent again. A request whose client went away may
// not, nor one whose body the client broke; nor may one whose response has
// begun (proxy never returns an error for those: it aborts the response).
func retryable(r *http.Request, status int, err error, body *retryBody) bool {
	if status < 500 || r.Context().Err() != nil {
		return false // the client's doing: 499, or a broken body (400, 413...)
	}
	if notSent(err) {
		return body.rewind(true) // the body, if read, reached nobody
	}
	return idempotent(r) && body.rewind(true)
}

// notSent reports whether err says no byte of the request reached the
// instance, or (HTTP/2's REFUSED_STREAM) that it did not process any.
func notSent(err error) bool {
	if se, ok := errors.AsType[http2.StreamError](err); ok && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	return dialFailed(err) || upstream.NotSent(err)
}

// idempotent reports whether r may be sent twice with the same effect as
// once: its method is idempotent (RFC 9110, 9.2.2), or it carries an
// Idempotency-Key (or X-Idempotency-Key) header, as http.Transport also
// takes it.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}

// retryState is what deciding on a retry_status retry takes of the
// request's attempts so far.
type retryState struct {
	attempt int   // 0 for the first
	start   int64 // backend.Now when the request started
	body    *retryBody
}

// mayRetry reports whether r's attempt rs, which failed with status and
// err, is to be retried: if it is retryable, and retries, try_duration and
// the retry budget allow one more attempt (which the budget then counts).
// An answer discarded for retry_status was decided on already.
func (a *App) mayRetry(r *http.Request, rs retryState, status int, err error) bool {
	if _, ok := err.(*retryStatusError); ok {
		return rs.body.rewind(true)
	}
	now := backend.Now()
	return a.retryWithin(&rs, now) && retryable(r, status, err, rs.body) && a.budget.allowRetry(now)
}

// retryWithin reports whether retries and try_duration allow an attempt
// after rs at now.
func (a *App) retryWithin(rs *retryState, now int64) bool {
	return rs.attempt < a.retry.retries && (a.retry.try <= 0 || time.Duration(now-rs.start) < a.retry.try)
}

// retryStatusError is the outcome of an attempt whose response had a
// status of retry_status and was discarded for a retry (again: one the
// same instance may take, see resendOverloaded).
type retryStatusError struct {
	status int
	again  bool
}

func (e *retryStatusError) Error() string { return "status " + strconv.Itoa(e.status) }

// retryOnStatus reports whether the response of status that in sent to
// r's attempt rs is to be discarded for a retry on another instance: the
// status is one of retry_status, r is idempotent, its body can be sent
// again, and retries, try_duration, another available instance and the
// retry budget allow a retry. The retry is then counted in the budget
// (serve does not count it again): deciding and counting at once keeps
// the response from being discarded for a retry the budget then refuses.
func (a *App) retryOnStatus(r *http.Request, in *backend.Instance, status int, rs *retryState) bool {
	if !a.retry.status.Has(status) || !idempotent(r) || !rs.body.replayable() {
		return false
	}
	now := backend.Now()
	if !a.retryWithin(rs, now) || !a.otherAvailable(in) {
		return false
	}
	return a.budget.allowRetry(now)
}

// otherAvailable reports whether an instance other than in is available.
func (a *App) otherAvailable(in *backend.Instance) bool {
	for _, c := range a.pool.Available() {
		if c != in {
			return true
		}
	}
	return false
}

// maxReplayBody is the largest request body kept to be sent again.
const maxReplayBody = 64 << 10

// retryBody stands between a request's body and the attempts to send it,
// so that a failed attempt leaves it fit for another: each attempt reads
// through its own view (a view of an attempt given up on reads nothing
// more, whatever goroutine of the transport still holds it), closing a view
// closes nothing, and the bytes read are kept (up to maxReplayBody, if
// record) so that a body read whole can be sent again.
type retryBody struct {
	rc     io.ReadCloser
	record bool

	mu      sync.Mutex
	current *bodyView
	read    int64 // bytes read from rc
	reading bool  // a Read of rc is under way
	eof     bool  // rc is read to its end
	kept    []byte
	dropped bool // kept does not hold all that was read
}

func newRetryBody(rc io.ReadCloser, record bool) *retryBody {
	return &retryBody{rc: rc, record: record}
}

// attempt returns the view of the body for the next attempt.
func (b *retryBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := &bodyView{b: b}
	if b.read > 0 {
		v.replay = b.kept // rewind made sure it holds the whole body
	}
	b.current = v
	return v
}

// rewind reports whether the body can be sent again: nothing of it was
// read, or (if whole) it was all read and kept. A nil body can.
func (b *retryBody) rewind(whole bool) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reading {
		return false
	}
	b.current = nil // the failed attempt's view reads no more
	if b.read == 0 {
		return true
	}
	return whole && b.eof && !b.dropped
}

// replayable reports whether the body could be sent again now, as
// rewind(true) would, without changing anything. A nil body can.
func (b *retryBody) replayable() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.reading && (b.read == 0 || (b.eof && !b.dropped))
}

// errAttemptOver is what the view of a failed attempt reads.
var errAttemptOver = errors.New("request body: the attempt it was read for is over")

// bodyView is one attempt's view of a retryBody.
type bodyView struct {
	b      *retryBody
	replay []byte // the kept body, sent again instead of reading rc
	off    int
}

func (v *bodyView) Read(p []byte) (int, error) {
	b := v.b
	b.mu.Lock()
	if b.current != v {
		b.mu.Unlock()
		return 0, errAttemptOver
	}
	if v.replay != nil {
		n := copy(p, v.replay[v.off:])
		v.off += n
		b.mu.Unlock()
		if v.off == len(v.replay) {
			return n, io.EOF
		}
		return n, nil
	}
	b.reading = true
	b.mu.Unlock()

	n, err := b.rc.Read(p)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.reading = false
	b.read += int64(n)
	if b.record && !b.dropped {
		if len(b.kept)+n <= maxReplayBody {
			b.kept = append(b.kept, p[:n]...)
		} else {
			b.dropped, b.kept = true, nil
		}
	} else if !b.record {
		b.dropped = true
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// again is the GetBody of an outbound HTTP/2 request: the body anew, for
// the transport to send again on another connection when the instance
// refused the stream unprocessed; possible if nothing of it was read yet,
// or all of it, kept.
func (v *bodyView) again() (io.ReadCloser, error) {
	if !v.b.rewind(true) {
		return nil, errNoReplay
	}
	return v.b.attempt(), nil
}

var errNoReplay = errors.New("request body: read in part, cannot be sent again")

// Close closes nothing: the server closes the request's own body.
func (v *bodyView) Close() error { return nil }

// retryBudget bounds an app's retries to a share of its recent requests,
// above a floor, so that a failing fleet is not hammered by retry storms:
// over the last budgetWindow seconds, retries may be up to percent of the
// requests, and budgetFloor at least. It is lock-free and approximate:
// concurrent retries may overshoot it by as many as race, and a count made
// while a slot turns to the next second may be lost.
type retryBudget struct {
	percent int
	slots   [budgetWindow]budgetSlot
}

const (
	budgetWindow = 10 // seconds
	budgetFloor  = 10 // retries per window
)

type budgetSlot struct {
	second            atomic.Int64 // the second it counts, plus 1 (0: never used)
	requests, retries atomic.Int64
}

// request counts a request at now (backend.Now's base).
func (b *retryBudget) request(now int64) { b.slot(now).requests.Add(1) }

// allowRetry reports whether a retry at now fits the budget, and counts
// it if so.
func (b *retryBudget) allowRetry(now int64) bool {
	sec := now/int64(time.Second) + 1
	var requests, retries int64
	for i := range b.slots {
		s := &b.slots[i]
		if age := sec - s.second.Load(); age >= 0 && age < budgetWindow {
			requests += s.requests.Load()
			retries += s.retries.Load()
		}
	}
	if retries >= max(budgetFloor, requests*int64(b.percent)/100) {
		return false
	}
	b.slot(now).retries.Add(1)
	return true
}

// slot returns the slot of the second of now, emptied if it last counted
// an older second.
func (b *retryBudget) slot(now int64) *budgetSlot {
	sec := now/int64(time.Second) + 1
	s := &b.slots[sec%budgetWindow]
	if old := s.second.Load(); old != sec && s.second.CompareAndSwap(old, sec) {
		s.requests.Store(0)
		s.retries.Store(0)
	}
	return s
}
