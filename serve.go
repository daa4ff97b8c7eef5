package caddylb

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/upstream"
)

// serve proxies r to the instance its sticky cookie names, if there is one
// and it is available, or else to an instance picked by the app's strategy
// (and then sets the sticky cookie, if the app has one). A failed attempt
// is retried on another instance when that is safe (see retryable), within
// the app's retries, try_duration and retry budget.
func (a *App) serve(w http.ResponseWriter, r *http.Request) error {
	start := backend.Now()
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set("http.load_balancer.app", a.nameValue)
		repl.Set("http.load_balancer.retries", zeroValue)
	}
	defer setDuration(repl, start)
	retries := a.res.retries > 0
	if retries {
		a.budget.request(start)
	}

	var body *retryBody
	if retries && r.Body != nil && r.Body != http.NoBody {
		body = newRetryBody(r.Body, idempotent(r))
		defer func(orig io.ReadCloser) { r.Body = orig }(r.Body)
	}
	var tried [MaxRetries + 1]*backend.Instance
	var failed error // the last attempt's
	for n := 0; ; n++ {
		in, trial, pinned := a.pick(r, tried[:n])
		if in == nil && failed != nil {
			return failed // no other instance to retry on
		}
		if in == nil {
			return caddyhttp.Error(http.StatusServiceUnavailable,
				fmt.Errorf("app %q: %w", a.name, ErrNoHealthyInstances))
		}
		if n > 0 {
			// A retry: it counts for the instance that failed the attempt.
			tried[n-1].RecordRetry()
			if repl != nil {
				repl.Set("http.load_balancer.retries", n)
			}
		}
		t := a.targets[in]
		if repl != nil {
			repl.Set("http.load_balancer.instance", in) // a fmt.Stringer: its redacted URL
		}
		if accessLogged(r) {
			if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
				extra.Set(t.logField)
			}
		}
		var cookie string // pins the client to in, unless its cookie did
		if a.sticky != nil && !pinned {
			cookie = t.cookie
			if r.TLS != nil {
				cookie = t.secureCookie
			}
		}
		if body != nil {
			r.Body = body.attempt()
		}
		status, err := a.proxy(t, in, trial, cookie, w, r)
		if err == nil {
			return nil
		}
		failed = caddyhttp.Error(status, fmt.Errorf("instance %s: %w", in, err))
		if n >= a.res.retries || !retryable(r, status, err, body) {
			return failed
		}
		now := backend.Now()
		if a.res.try > 0 && time.Duration(now-start) >= a.res.try {
			return failed
		}
		if !a.budget.allowRetry(now) {
			return failed
		}
		tried[n] = in
	}
}

// pick returns the instance for r's next attempt, none of tried if
// possible, and whether it is an ejected instance's trial request and
// whether r's sticky cookie named it. nil means no instance is available.
func (a *App) pick(r *http.Request, tried []*backend.Instance) (in *backend.Instance, trial, pinned bool) {
	if a.sticky != nil && len(tried) == 0 {
		if in = a.sticky.pinned(r); in != nil {
			if ok, trial := a.pool.Admit(in); ok {
				return in, trial, true
			}
		}
	}
	// A strategy picks again and again while it lands on instances tried
	// already, or an ejected instance whose trial another request took:
	// most move on by themselves (round robin, random); those that would
	// not (hash, first) are helped by a scan.
	for range 3 {
		if in = a.strategy.Select(a.pool, r); in == nil {
			return nil, false, false
		}
		if contains(tried, in) {
			continue
		}
		if ok, trial := a.pool.Admit(in); ok {
			return in, trial, false
		}
	}
	for _, c := range a.pool.Available() {
		if contains(tried, c) {
			continue
		}
		if ok, trial := a.pool.Admit(c); ok {
			return c, trial, false
		}
	}
	if len(tried) == 0 {
		return nil, false, false
	}
	// Every available instance was tried: a retry may go to one again,
	// but never to the one that just failed.
	for _, c := range a.pool.Available() {
		if c == tried[len(tried)-1] {
			continue
		}
		if ok, trial := a.pool.Admit(c); ok {
			return c, trial, false
		}
	}
	return nil, false, false
}

func contains(list []*backend.Instance, in *backend.Instance) bool {
	for _, x := range list {
		if x == in {
			return true
		}
	}
	return false
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
		return body.rewind(false)
	}
	return idempotent(r) && body.rewind(true)
}

// notSent reports whether err says no byte of the request reached the
// instance.
func notSent(err error) bool {
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "dial" {
		return true
	}
	return upstream.NotSent(err)
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
