// Package backend holds the backend instances a load balancer sends traffic
// to, with the live state that selection, health checking and the report
// share: health, requests in flight, totals and the last check.
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

// Instance is one backend server: where it is, and how it is doing.
//
// An Instance is safe for concurrent use. Its URL never changes; everything
// else is live state.
type Instance struct {
	url      *url.URL
	redacted string

	healthy    atomic.Bool
	inFlight   atomic.Int64
	requests   atomic.Uint64
	failures   atomic.Uint64
	lastPicked atomic.Uint64 // selection sequence number, for fair tie-breaking
	lastCheck  atomic.Int64  // unix nanoseconds of the last health check; 0 = never
	lastError  atomic.Pointer[string]

	// checking is held while a health check of this instance runs, so that
	// checks never stack up behind a slow backend.
	checking sync.Mutex
}

// New returns a healthy instance for the backend at u. u must be absolute
// (scheme and host); New does not validate it.
func New(u *url.URL) *Instance {
	in := &Instance{url: u, redacted: Redact(u)}
	in.healthy.Store(true)
	return in
}

// URL returns the instance's address. Callers must not modify it.
func (in *Instance) URL() *url.URL { return in.url }

// String returns the instance's URL with any userinfo redacted, fit for logs
// and reports.
func (in *Instance) String() string { return in.redacted }

// Healthy reports whether the instance may receive new requests.
func (in *Instance) Healthy() bool { return in.healthy.Load() }

// SetHealthy records the instance's health and reports whether it changed.
func (in *Instance) SetHealthy(healthy bool) (changed bool) {
	if in.healthy.Swap(healthy) == healthy {
		return false
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

// LastPicked returns the stamp of the last MarkPicked; a larger stamp means
// a more recent pick.
func (in *Instance) LastPicked() uint64 { return in.lastPicked.Load() }

// MarkPicked stamps the instance as picked now, so a strategy can prefer the
// least recently picked of otherwise equal instances. The stamps come from
// one process-wide sequence, so they stay comparable when an instance's
// state outlives the strategy that stamped it.
func (in *Instance) MarkPicked() { in.lastPicked.Store(pickSeq.Add(1)) }

// pickSeq orders MarkPicked calls.
var pickSeq atomic.Uint64

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
		msg := err.Error()
		in.lastError.Store(&msg)
	} else {
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
