// Package backend holds the backend instances a load balancer sends traffic
// to, with the live state that selection, health checking and the report
// share: health, requests in flight, latency, totals and the last check.
//
// Every field of that state is read on the request path, so each is a
// single atomic value: a request never takes a lock to pick an instance.
package backend

import (
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// MaxWeight is the largest weight an instance may have. It keeps sums of
// weights and products of a weight with a request count far from overflow.
const MaxWeight = 1_000_000

// Instance is one backend server: where it is, and how it is doing.
//
// An Instance is safe for concurrent use. Its URL and weight never change;
// everything else is live state.
type Instance struct {
	url      *url.URL
	redacted string
	weight   int

	healthy   atomic.Bool
	inFlight  atomic.Int64
	requests  atomic.Uint64
	failures  atomic.Uint64
	pickStamp atomic.Uint64 // set by the strategy that picks the instance, for fair tie-breaking
	latency   atomic.Uint64 // peak EWMA of response-header latency, see latency.go; 0 = no sample
	lastCheck atomic.Int64  // unix nanoseconds of the last health check; 0 = never
	lastError atomic.Pointer[string]

	stats stats // for the metrics and the report, see stats.go

	// checking is held while a health check of this instance runs, so that
	// checks never stack up behind a slow backend.
	checking sync.Mutex
}

// New returns a healthy instance of weight 1 for the backend at u. u must be
// absolute (scheme and host); New does not validate it.
func New(u *url.URL) *Instance { return NewWeighted(u, 1) }

// NewWeighted returns a healthy instance of the given weight for the
// backend at u. A weight of 0 (or less) means the instance takes no new
// requests; callers check weights against MaxWeight.
func NewWeighted(u *url.URL, weight int) *Instance {
	in := &Instance{url: u, redacted: Redact(u), weight: max(weight, 0)}
	in.healthy.Store(true)
	return in
}

// URL returns the instance's address. Callers must not modify it.
func (in *Instance) URL() *url.URL { return in.url }

// String returns the instance's URL with any userinfo redacted, fit for logs
// and reports.
func (in *Instance) String() string { return in.redacted }

// Weight returns the instance's share of traffic relative to the other
// instances of its pool; 0 means no new requests.
func (in *Instance) Weight() int { return in.weight }

// Healthy reports whether the instance passes its health checks.
func (in *Instance) Healthy() bool { return in.healthy.Load() }

// Available reports whether the instance may receive new requests: it is
// healthy and its weight is above 0.
func (in *Instance) Available() bool { return in.weight > 0 && in.healthy.Load() }

// SetHealthy records the instance's health and reports whether it changed.
// An instance that recovers starts with no latency history: what it
// measured before it went down says nothing about it now.
func (in *Instance) SetHealthy(healthy bool) (changed bool) {
	if in.healthy.Swap(healthy) == healthy {
		return false
	}
	if healthy {
		in.latency.Store(0)
	}
	epoch.Add(1)
	return true
}

// InFlight returns the number of requests the instance is serving now.
func (in *Instance) InFlight() int64 { return in.inFlight.Load() }

// Acquire counts a request that is about to be sent to the instance. Every
// Acquire must be paired with exactly one Release, on every exit path.
func (in *Instance) Acquire() {
	in.inFlight.Add(1)
	in.requests.Add(1)
}

// Release ends a request counted by Acquire.
func (in *Instance) Release() { in.inFlight.Add(-1) }

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
// TryStartCheck (err == nil means it passed) and reports whether the
// instance's health changed.
func (in *Instance) FinishCheck(at time.Time, err error) (changed bool) {
	defer in.checking.Unlock()
	in.lastCheck.Store(at.UnixNano())
	if err != nil {
		in.stats.checksFailed.Add(1)
		msg := err.Error()
		in.lastError.Store(&msg)
	} else {
		in.stats.checksPassed.Add(1)
		in.lastError.Store(nil)
	}
	return in.SetHealthy(err == nil)
}

// AbandonCheck ends a check started with TryStartCheck without recording
// an outcome, for a check cut short by its caller.
func (in *Instance) AbandonCheck() { in.checking.Unlock() }

// Status is a point-in-time copy of an instance's state.
type Status struct {
	URL           string
	Healthy       bool
	InFlight      int64
	TotalRequests uint64
	Failures      uint64
	LastChecked   time.Time // zero if never checked
	LastError     string
}

// Status returns a copy of the instance's current state.
func (in *Instance) Status() Status {
	s := Status{
		URL:           in.redacted,
		Healthy:       in.healthy.Load(),
		InFlight:      in.inFlight.Load(),
		TotalRequests: in.requests.Load(),
		Failures:      in.failures.Load(),
	}
	if ns := in.lastCheck.Load(); ns != 0 {
		s.LastChecked = time.Unix(0, ns)
	}
	if msg := in.lastError.Load(); msg != nil {
		s.LastError = *msg
	}
	return s
}

// Redact returns u as a string with any userinfo replaced by "xxxxx", so that
// credentials in a backend URL never reach a log line or a report.
func Redact(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	c := *u
	c.User = url.User("xxxxx")
	return c.String()
}
