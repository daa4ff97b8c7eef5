// Package backend holds the backend instances a load balancer sends traffic
// to, with the live state that selection, health checking and the report
// share: health, requests in flight, latency, totals and the last check.
//
// Every field of that state is read on the request path, so each is a
// single atomic value: a request never takes a lock to pick an instance.
package backend

import (
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// MaxWeight is the largest weight an instance may have. It keeps sums of
// weights and products of a weight with a request count far from overflow.
const MaxWeight = 1_000_000

// Instance is one backend server: where it is, and how it is doing.
//
// An Instance is safe for concurrent use. Its URL never changes; its
// weight and policy follow the config that runs it (an Instance may be
// kept across config reloads); everything else is live state, see
// state.go for how it changes.
type Instance struct {
	url      *url.URL
	redacted string

	weight    atomic.Int64 // as configured
	selWeight atomic.Int64 // for selection: weight × slow-start step (1..rampSteps)
	flags     atomic.Uint32

	inFlight  atomic.Int64
	requests  atomic.Uint64
	failures  atomic.Uint64
	consec    atomic.Int64  // consecutive failures of real requests
	pickStamp atomic.Uint64 // set by the strategy that picks the instance, for fair tie-breaking
	latency   atomic.Uint64 // peak EWMA of response-header latency, see latency.go; 0 = no sample
	lastCheck atomic.Int64  // unix nanoseconds of the last health check; 0 = never
	lastError atomic.Pointer[string]

	policy      atomic.Pointer[Policy]
	onChange    atomic.Pointer[func(Change)]
	drainedSent atomic.Bool // EventDrained reported for the current drain

	mu sync.Mutex // guards st, the state machine's bookkeeping
	st state

	stats stats // for the metrics and the report, see stats.go

	autoLimit atomic.Int64 // the adaptive limit now, 0 without one (see limit.go)
	limiter   limiter

	// checking is held while a health check of this instance runs, so that
	// checks never stack up behind a slow backend.
	checking sync.Mutex
}

// URL returns the instance's address. Callers must not modify it.
func (in *Instance) URL() *url.URL { return in.url }

// String returns the instance's URL with any userinfo redacted, fit for logs
// and reports.
func (in *Instance) String() string { return in.redacted }

// Weight returns the instance's configured share of traffic relative to
// the other instances of its pool; 0 means no new requests.
func (in *Instance) Weight() int { return int(in.weight.Load()) }

// SelectionWeight is the weight strategies balance by: the configured
// weight scaled by rampSteps, lower while the instance ramps up in slow
// start. Only ratios between instances mean anything.
func (in *Instance) SelectionWeight() int { return int(in.selWeight.Load()) }

// Healthy reports whether the instance passes its active health checks
// and is not ejected by passive ones.
func (in *Instance) Healthy() bool { return in.flags.Load()&(down|flagEjected) == 0 }

// Available reports whether the instance may receive new requests: it is
// healthy (or ejected with its trial request open), not draining, and its
// weight is above 0.
func (in *Instance) Available() bool {
	return available(in.flags.Load()) && in.selWeight.Load() > 0
}

// SetHealthy sets the instance's active health at once, without the
// streaks of health checks, and reports whether it changed.
func (in *Instance) SetHealthy(healthy bool) (changed bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	reason := "set unhealthy"
	if healthy {
		reason = "set healthy"
	}
	return in.setActiveLocked(healthy, reason, Now())
}

// TryAcquire is Acquire if the instance has fewer requests in flight than
// its limit, and reports whether it acquired: limit (0: none), scaled down
// with the weight while the instance ramps up in slow start, to at least
// 1. Two racing callers cannot both take the last slot.
func (in *Instance) TryAcquire(limit int) bool {
	if limit <= 0 {
		in.Acquire()
		return true
	}
	max := in.Limit(limit)
	for {
		n := in.inFlight.Load()
		if n >= max {
			return false
		}
		if in.inFlight.CompareAndSwap(n, n+1) {
			in.requests.Add(1)
			return true
		}
	}
}

// Limit returns limit (a number of requests in flight) as it applies to
// the instance now: scaled down like its weight while it ramps up in slow
// start, to at least 1.
func (in *Instance) Limit(limit int) int64 {
	w := in.weight.Load()
	sel := in.selWeight.Load()
	if w <= 0 || sel >= w*rampSteps {
		return int64(limit)
	}
	return max(1, (int64(limit)*sel+w*rampSteps-1)/(w*rampSteps))
}

// InFlight returns the number of requests the instance is serving now.
func (in *Instance) InFlight() int64 { return in.inFlight.Load() }

// Acquire counts a request that is about to be sent to the instance. Every
// Acquire must be paired with exactly one Release, on every exit path.
func (in *Instance) Acquire() {
	in.inFlight.Add(1)
	in.requests.Add(1)
}

// Release ends a request counted by Acquire. The last request of a
// draining instance to end reports that it is drained.
func (in *Instance) Release() {
	if in.inFlight.Add(-1) == 0 && in.flags.Load()&flagDraining != 0 {
		in.reportDrained()
	}
}

// RecordFailure counts a request the instance failed to answer.
func (in *Instance) RecordFailure() { in.failures.Add(1) }

// PickStamp returns the stamp the last SetPickStamp left, 0 if none. What
// it means is up to the strategy that sets it (least_connections keeps the
// position in its sequence at which the instance is due next).
func (in *Instance) PickStamp() uint64 { return in.pickStamp.Load() }

// SetPickStamp stamps the instance when a strategy picks it, so that the
// strategy can break ties between otherwise equal instances fairly.
func (in *Instance) SetPickStamp(stamp uint64) { in.pickStamp.Store(stamp) }

// TryStartCheck reports whether the caller may check the instance now. It
// returns false while another check of it is still running; a true result
// must be followed by FinishCheck.
func (in *Instance) TryStartCheck() bool { return in.checking.TryLock() }

// FinishCheck records the outcome of a health check started with
// TryStartCheck (err == nil means it passed) at now (as returned by Now),
// and applies it with the given streak thresholds: passes consecutive
// passing checks bring an unhealthy instance back (its first check is
// enough), fails consecutive failing ones take a healthy one out. A
// passing check also ends an ejection.
func (in *Instance) FinishCheck(now int64, err error, passes, fails int) {
	defer in.checking.Unlock()
	in.lastCheck.Store(wallNanos(now))
	if err != nil {
		in.stats.checksFailed.Add(1)
		msg := err.Error()
		in.lastError.Store(&msg)
	} else {
		in.stats.checksPassed.Add(1)
		in.lastError.Store(nil)
	}
	in.checked(now, err, passes, fails)
}

// AbandonCheck ends a check started with TryStartCheck without recording
// an outcome, for a check cut short by its caller.
func (in *Instance) AbandonCheck() { in.checking.Unlock() }

// Redact returns u as a string with its userinfo and the values of its
// query replaced by "xxxxx" (the query's keys kept), so that credentials
// and tokens in a backend URL never reach a log line, a metric label or a
// report.
func Redact(u *url.URL) string {
	if u.User == nil && u.RawQuery == "" {
		return u.String()
	}
	c := *u
	if u.User != nil {
		c.User = url.User("xxxxx")
	}
	c.RawQuery = redactQuery(u.RawQuery)
	return c.String()
}

// redactQuery replaces each non-empty value of a raw query with "xxxxx".
func redactQuery(q string) string {
	var b strings.Builder
	for i, pair := range strings.Split(q, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		key, value, _ := strings.Cut(pair, "=")
		b.WriteString(key)
		if value != "" {
			b.WriteString("=xxxxx")
		} else if strings.Contains(pair, "=") {
			b.WriteByte('=')
		}
	}
	return b.String()
}
