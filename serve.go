package caddylb

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
)

// route serves r with the app: a copy goes to its mirror, if it has one
// and r is among the share copied; then r goes to the pool its split
// picks, if it splits, or else to one of its instances.
func (a *App) route(w http.ResponseWriter, r *http.Request) error {
	if a.mirror != nil {
		a.mirror.copy(r)
	}
	if a.split != nil {
		return a.split.serve(w, r)
	}
	return a.serve(w, r)
}

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
	retries := a.retry.retries > 0
	if retries || a.hedge.on {
		a.budget.request(start)
	}

	var body *retryBody
	if retries && r.Body != nil && r.Body != http.NoBody {
		// Bodies that may be sent again are kept: those of idempotent
		// requests, and gRPC's (small, and sent again when an HTTP/2
		// instance refused the stream unprocessed).
		body = newRetryBody(r.Body, idempotent(r) || isGRPC(r.Header))
		defer func(orig io.ReadCloser) { r.Body = orig }(r.Body)
	}
	var tried [MaxRetries + 1]*backend.Instance
	var failed error               // the last attempt's
	var failedBy *backend.Instance // its instance
	gone := 0                      // picks of instances that had just left the app
	for n := 0; ; n++ {
		m, in, trial, pinned, err := a.next(w, r, tried[:n])
		if err == errRejected {
			return nil // answered
		}
		if err != nil {
			return err // the client left the queue
		}
		if in == nil && failed != nil {
			return failed // no other instance to retry on
		}
		if in == nil {
			return caddyhttp.Error(http.StatusServiceUnavailable, a.unavailable())
		}
		t := m.targets[in]
		if t == nil {
			// A discovered instance that left the app as it was picked:
			// the pool no longer has it, pick again.
			a.done(in)
			if trial {
				in.AbandonTrial()
			}
			if gone < 3 {
				gone++
				n--
				continue
			}
			return caddyhttp.Error(http.StatusServiceUnavailable, a.unavailable())
		}
		if n > 0 {
			// A retry: it counts for the instance that failed the attempt.
			failedBy.RecordRetry()
		}
		announce(r, repl, t, in, n)
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
		var status int
		if n == 0 && a.hedge.on && !pinned && hedgeable(r) {
			status, err = a.proxyHedged(t, in, trial, cookie, retryState{n, start, body}, w, r, m, repl)
		} else {
			status, err = a.proxy(t, in, trial, cookie, retryState{n, start, body}, w, r)
		}
		if err == nil {
			return nil
		}
		failed = caddyhttp.Error(status, fmt.Errorf("instance %s: %w", in, err))
		if !a.mayRetry(r, retryState{attempt: n, start: start, body: body}, status, err) {
			return failed
		}
		failedBy = in
		if rse, ok := err.(*retryStatusError); !ok || !rse.again {
			tried[n] = in // else it may take the request again
		}
	}
}

// announce makes attempt n of r, to in through t, known to the
// placeholders (repl, if not nil) and the access log.
func announce(r *http.Request, repl *caddy.Replacer, t *target, in *backend.Instance, n int) {
	if repl != nil {
		if n > 0 {
			repl.Set("http.load_balancer.retries", n)
		}
		repl.Set("http.load_balancer.instance", in) // a fmt.Stringer: its redacted URL
	}
	if accessLogged(r) {
		if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
			extra.Set(t.logField)
		}
	}
}

// next is pick for r's next attempt, under the app's overload protection:
// when every available instance is at max_requests (or others wait for a
// slot already: no barging), it waits in the queue for one, and returns
// the error for the client when it may not (no queue, the queue full, the
// wait over: errRejected, the response written; or the client gone). It
// returns the members it picked from.
func (a *App) next(w http.ResponseWriter, r *http.Request, tried []*backend.Instance) (m *members, in *backend.Instance, trial, pinned bool, err error) {
	m = a.members.Load()
	q := a.overload.queue
	full := true
	if q == nil || !q.waiting() {
		if in, trial, pinned, full = a.pick(r, m, tried); in != nil || !full {
			return m, in, trial, pinned, nil
		}
	}
	if q == nil {
		return m, nil, false, false, a.reject(w, errAtLimit)
	}
	waited := backend.Now()
	err = q.wait(r.Context(), func() bool {
		m = a.members.Load()
		in, trial, pinned, full = a.pick(r, m, tried)
		return in != nil || !full // taken, or none left to wait for
	})
	a.overload.waits.Observe(time.Duration(backend.Now() - waited))
	switch {
	case err == nil:
		return m, in, trial, pinned, nil
	case r.Context().Err() != nil:
		return m, nil, false, false, caddyhttp.Error(StatusClientClosedRequest, err)
	default:
		return m, nil, false, false, a.reject(w, err)
	}
}

// pick returns the instance for r's next attempt, of the app's active
// tier (a worse tier's only for a retry that tried every available
// instance of the active tier), none of tried if possible, acquired (the caller must release it, with done), and whether
// it is an ejected instance's trial request and whether r's sticky cookie
// named it. nil means no instance is available, or (full) that every one
// that is is at max_requests.
func (a *App) pick(r *http.Request, m *members, tried []*backend.Instance) (in *backend.Instance, trial, pinned, full bool) {
	take := func(c *backend.Instance) (ok, trial bool) {
		if ok, trial = a.pool.Admit(c); !ok {
			return false, false
		}
		if !c.TryAcquire(a.limits.of(c)) {
			if trial {
				c.AbandonTrial()
			}
			full = true
			return false, false
		}
		return true, trial
	}
	if a.sticky != nil && len(tried) == 0 {
		if in = a.sticky.pinned(r, m); in != nil && a.inActiveTier(in) {
			if ok, trial := take(in); ok {
				return in, trial, true, false
			}
		}
	}
	// A strategy picks again and again while it lands on instances tried
	// already, instances at their limit, or an ejected instance whose trial
	// another request took: most move on by themselves (round robin,
	// random); those that would not (hash, first) are helped by a scan.
	for range 3 {
		if in = a.strategy.Select(a.pool, r); in == nil {
			return nil, false, false, full
		}
		if contains(tried, in) {
			continue
		}
		if ok, trial := take(in); ok {
			return in, trial, false, false
		}
	}
	untried := false // an available instance of the active tier not tried yet
	for _, c := range a.pool.Available() {
		if contains(tried, c) {
			continue
		}
		untried = true
		if ok, trial := take(c); ok {
			return c, trial, false, false
		}
	}
	if len(tried) == 0 {
		return nil, false, false, full
	}
	if !untried {
		// Every available instance of the active tier was tried: a retry
		// goes to the next tiers' before one is tried again.
		for _, c := range a.pool.Fallback() {
			if contains(tried, c) {
				continue
			}
			if ok, trial := take(c); ok {
				return c, trial, false, false
			}
		}
	}
	// Every available instance was tried: a retry may go to one again,
	// but never to the one that just failed.
	for _, c := range a.pool.Available() {
		if c == tried[len(tried)-1] {
			continue
		}
		if ok, trial := take(c); ok {
			return c, trial, false, false
		}
	}
	return nil, false, false, full
}

// inActiveTier reports whether in may take requests of the app's active
// tier: always with one tier, else if the tier lists it. A sticky cookie
// pins a client only within the active tier, so that traffic returns to
// a better tier when it qualifies again.
func (a *App) inActiveTier(in *backend.Instance) bool {
	return a.pool.Tiers() == 1 || contains(a.pool.Available(), in)
}

func contains(list []*backend.Instance, in *backend.Instance) bool {
	for _, x := range list {
		if x == in {
			return true
		}
	}
	return false
}

// unavailable is why no instance of the app can take a request: none is
// available, or it has none at all (its source gave an empty set).
func (a *App) unavailable() error {
	if len(a.pool.All()) == 0 && a.dynamic != nil {
		return fmt.Errorf("app %q: %w: its source %s has none", a.name, ErrNoInstances, a.dynamic.state.name)
	}
	return fmt.Errorf("app %q: %w", a.name, ErrNoHealthyInstances)
}
