package backend

import (
	"fmt"
	"net/url"
	"time"
)

// How an instance's state changes. The state lives in flags, one atomic
// word that the request path reads, and in the bookkeeping of the state
// machine (streaks, ejection times, slow start), kept under the
// instance's mutex; every transition takes the mutex, updates both, bumps
// the epoch so pools rebuild their lists, and reports the change to the
// instance's OnChange callback, outside the mutex.
//
// Every transition takes the time as an argument (Now's time base), so
// tests drive the state machine with a clock of their own; only the
// timers that end an ejection and step slow start read the real clock.

// Flags of an instance's state.
const (
	flagUnhealthy uint32 = 1 << iota // failed its active health checks
	flagEjected                      // ejected by passive checks
	flagTrial                        // ejected, and one trial request may go to it
	flagDraining                     // no new requests, by the operator
	flagFleetDown                    // failing the checks another node of its fleet makes (see SetFleetDown)
)

// down is the flags that take an instance out as failing health checks:
// its own, or those of another node of its fleet.
const down = flagUnhealthy | flagFleetDown

// available reports whether an instance with flags f may get new
// requests.
func available(f uint32) bool {
	return f&(down|flagDraining) == 0 && (f&flagEjected == 0 || f&flagTrial != 0)
}

// rampSteps is how many steps slow start ramps an instance's weight in:
// from 1/rampSteps of it to all of it.
const rampSteps = 10

// State is what the report says an instance is doing.
type State string

// States, in the order of precedence the report shows them in: a draining
// instance is draining whatever its health.
const (
	StateDraining  State = "draining"  // no new requests, by the operator
	StateUnhealthy State = "unhealthy" // failing its active health checks
	StateEjected   State = "ejected"   // ejected by passive health checks
	StateStarting  State = "starting"  // healthy, ramping up in slow start
	StateHealthy   State = "healthy"
)

// Policy is how an instance reacts to failures of real traffic, and how it
// comes back. It is an app's setting, shared by its instances; the zero
// Policy turns passive checks and slow start off.
type Policy struct {
	// InitiallyUnhealthy: a new instance waits for a passing health check.
	InitiallyUnhealthy bool
	// MaxFails consecutive failures eject an instance; 0: never.
	MaxFails int
	// UnhealthyStatus are the response statuses that count as failures.
	UnhealthyStatus StatusSet
	// FailDuration is the first ejection's length; each further one
	// doubles it, up to MaxFailDuration.
	FailDuration, MaxFailDuration time.Duration
	// MaxEjectedPercent of a pool's instances may be ejected at once
	// (always at least one).
	MaxEjectedPercent int
	// SlowStart is how long an instance ramps up for; 0: no ramp.
	SlowStart time.Duration
}

// Event is the kind of a Change.
type Event string

// Events, each named as the suffix of the Caddy event emitted for it
// ("load_balancer.instance_" + Event).
const (
	EventHealthy   Event = "healthy"   // back in: health checks pass, or an ejection ended
	EventUnhealthy Event = "unhealthy" // failing active health checks
	EventEjected   Event = "ejected"   // ejected by passive checks
	EventDraining  Event = "draining"  // drained by the operator: no new requests
	EventDrained   Event = "drained"   // draining, and its last request ended
	EventAdded     Event = "added"     // a discovered instance joined its app
	EventRemoved   Event = "removed"   // a discovered instance left its app
	EventUndrained Event = "undrained" // back from draining
)

// Change is a change of an instance's state, for logs and events.
type Change struct {
	Instance *Instance
	Event    Event
	Reason   string
	// Until is when an ejection ends (zero for other events).
	Until time.Time
}

// state is the state machine's bookkeeping, guarded by Instance.mu.
type state struct {
	checked       bool  // some health check finished
	passes, fails int   // consecutive health checks passed, failed
	ejections     int   // consecutive ejections, for the doubling
	ejectedUntil  int64 // when the ejection ends (Now's base); 0 if not ejected
	returnedAt    int64 // when the last ejection ended; 0 if in one or none
	trialInFlight bool  // the trial request of an ejection is under way
	rampStart     int64 // when slow start began; -1 if not ramping
	step          int64 // slow start step, 1..rampSteps
	reason        string
	changedAt     int64
	ejectTimer    *time.Timer
	rampTimer     *time.Timer
	closed        bool
	configured    bool // Configure has run
}

// afterFunc schedules the ejection and slow start timers; tests replace
// it to run what a timer would, when they choose.
var afterFunc = time.AfterFunc

// New returns an instance of the given weight for the backend
// at u, following policy p from now (Now's time base). It starts healthy,
// or unhealthy if p says so.
func New(u *url.URL, weight int, p *Policy, now int64) *Instance {
	in := &Instance{url: u, redacted: Redact(u)}
	weight = max(weight, 0)
	in.weight.Store(int64(weight))
	in.selWeight.Store(int64(weight) * rampSteps)
	in.policy.Store(p)
	in.st = state{rampStart: -1, step: rampSteps, reason: "added", changedAt: now}
	if p.InitiallyUnhealthy {
		in.flags.Store(flagUnhealthy)
		in.st.reason = "awaiting its first health check"
	}
	return in
}

// Configure applies a config's weight and policy to the instance, at now:
// the config that runs it is the one in charge. It reports whether this
// was the instance's first config.
func (in *Instance) Configure(weight int, p *Policy, now int64) (first bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	old := in.policy.Swap(p)
	first = !in.st.configured
	in.st.configured = true
	changed := in.weight.Swap(int64(max(weight, 0))) != int64(max(weight, 0))
	if in.st.rampStart >= 0 && p.SlowStart != old.SlowStart {
		// A ramp under way follows the new slow_start (or ends, without
		// one) from where it stands.
		in.stepRampLocked(now)
		changed = true
	}
	if changed {
		in.selWeight.Store(in.weight.Load() * in.st.step)
		epoch.Add(1)
	}
	return first
}

// StartSlowStart ramps the instance up from now, if its policy has slow
// start and it is healthy: for an instance added to an app that serves
// already. (Those of a config that starts from nothing start together:
// ramping them all would change nothing but the report.)
func (in *Instance) StartSlowStart(now int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.flags.Load()&(down|flagEjected) == 0 && !in.st.closed {
		in.startRampLocked(now)
	}
}

// Policy returns the policy the instance follows.
func (in *Instance) Policy() *Policy { return in.policy.Load() }

// SetOnChange sets the function every change of the instance's state is
// reported to, from the goroutine that made it; nil reports nothing.
func (in *Instance) SetOnChange(f func(Change)) {
	if f == nil {
		in.onChange.Store(nil)
		return
	}
	in.onChange.Store(&f)
}

func (in *Instance) notify(c Change) {
	c.Instance = in
	if f := in.onChange.Load(); f != nil {
		(*f)(c)
	}
}

// Close stops the instance's timers: it is no longer used.
func (in *Instance) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.st.closed = true
	if in.st.ejectTimer != nil {
		in.st.ejectTimer.Stop()
	}
	if in.st.rampTimer != nil {
		in.st.rampTimer.Stop()
	}
}

// checked applies the outcome of a health check at now with the given
// streak thresholds.
func (in *Instance) checked(now int64, err error, passes, fails int) {
	var changes []Change
	in.mu.Lock()
	first := !in.st.checked
	in.st.checked = true
	f := in.flags.Load()
	if err == nil {
		in.st.fails = 0
		in.st.passes++
		if f&flagUnhealthy != 0 && (in.st.passes >= passes || first) {
			in.setActiveLocked(true, "health check passed", now)
			if f&flagFleetDown == 0 { // else still out, by the fleet's verdict
				changes = append(changes, Change{Event: EventHealthy, Reason: in.st.reason})
				if f&flagEjected == 0 {
					in.startRampLocked(now)
				}
			}
		}
		if f&flagEjected != 0 {
			c := in.endEjectionLocked(now, "health check passed")
			// Reported only if the instance is back in: not a second time
			// when this check also ended its unhealthy state (reported
			// above), not at all while it is still unhealthy.
			if f&down == 0 {
				changes = append(changes, c)
			}
		}
	} else {
		in.st.passes = 0
		in.st.fails++
		if f&flagUnhealthy == 0 && in.st.fails >= fails {
			in.setActiveLocked(false, err.Error(), now)
			in.stopRampLocked()
			if f&flagFleetDown == 0 { // else out already, by the fleet's verdict
				changes = append(changes, Change{Event: EventUnhealthy, Reason: in.st.reason})
			}
		}
	}
	in.mu.Unlock()
	for _, c := range changes {
		in.notify(c)
	}
}

// setActiveLocked sets the active health at once, and reports whether it
// changed. It is the one place the unhealthy flag changes.
func (in *Instance) setActiveLocked(healthy bool, reason string, now int64) bool {
	f := in.flags.Load()
	if (f&flagUnhealthy == 0) == healthy {
		return false
	}
	if healthy {
		in.flags.And(^flagUnhealthy)
		// What it measured before it went down says nothing about it now.
		in.latency.Store(0)
	} else {
		in.flags.Or(flagUnhealthy)
	}
	in.st.reason, in.st.changedAt = reason, now
	epoch.Add(1)
	return true
}

// Admit is called for a request about to be sent to the instance, after a
// strategy picked it. It reports whether the request may go (false: pick
// another), and whether it is the trial request that decides whether an
// ejected instance is back; the caller reports its outcome with
// Succeeded, Failed or AbandonTrial. An ejected instance takes no request
// but its trial, unless the pool is in panic (see Pool.Admit).
func (in *Instance) Admit(panicking bool) (ok, trial bool) {
	f := in.flags.Load()
	if f&flagEjected == 0 {
		return true, false
	}
	if f&flagTrial != 0 && in.flags.CompareAndSwap(f, f&^flagTrial) {
		in.mu.Lock()
		in.st.trialInFlight = true
		in.mu.Unlock()
		epoch.Add(1)
		return true, true
	}
	return panicking, false
}

// Succeeded records a request the instance answered well; trial says it
// was the trial request of an ejection (see Admit), which ends it.
func (in *Instance) Succeeded(trial bool, now int64) {
	if in.consec.Load() != 0 {
		in.consec.Store(0)
	}
	if !trial {
		return
	}
	in.mu.Lock()
	in.st.trialInFlight = false
	var c Change
	ended := in.flags.Load()&flagEjected != 0
	if ended {
		c = in.endEjectionLocked(now, "trial request succeeded")
	}
	// An instance still failing its active checks (tried in panic) is
	// not back in: its passing checks will say when it is.
	back := ended && in.flags.Load()&down == 0
	in.mu.Unlock()
	if back {
		in.notify(c)
	}
}

// AbandonTrial reopens the trial of an ejected instance whose trial
// request ended without a verdict (its client went away).
func (in *Instance) AbandonTrial() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.st.trialInFlight = false
	if in.flags.Load()&flagEjected != 0 && !in.st.closed {
		in.flags.Or(flagTrial)
		epoch.Add(1)
	}
}

// failed records a failed request (see Pool.Failed, which serializes
// ejections per pool): room reports whether the pool may eject one more
// instance.
func (in *Instance) failed(now int64, reason string, trial bool, room func() bool) {
	n := in.consec.Add(1)
	p := in.policy.Load()
	in.mu.Lock()
	if trial {
		// The trial's verdict is in, even if its ejection has ended
		// meanwhile (a passing health check): left set, trialInFlight
		// would keep openTrial from opening the next ejection's trial.
		in.st.trialInFlight = false
	}
	var c Change
	changed := false
	switch f := in.flags.Load(); {
	case trial && f&flagEjected != 0:
		// The trial failed: ejected again, for longer.
		c, changed = in.ejectLocked(now, p, "trial request failed: "+reason), true
	case f&flagEjected != 0:
		// A request from before the ejection, or sent in panic.
	case p.MaxFails > 0 && n >= int64(p.MaxFails) && room():
		c, changed = in.ejectLocked(now, p, fmt.Sprintf("%d consecutive failures, the last: %s", n, reason)), true
	}
	in.mu.Unlock()
	if changed {
		in.notify(c)
	}
}

// ejectLocked ejects the instance at now. Each ejection lasts twice as
// long as the one before, up to p.MaxFailDuration; the doubling unwinds
// one step for each FailDuration the instance stayed in since its last
// ejection.
func (in *Instance) ejectLocked(now int64, p *Policy, reason string) Change {
	k := in.st.ejections
	if in.st.returnedAt != 0 && p.FailDuration > 0 {
		k = max(0, k-int((now-in.st.returnedAt)/int64(p.FailDuration)))
	}
	d := ejectionTime(p, k)
	in.st.ejections = k + 1
	in.st.returnedAt = 0
	in.st.ejectedUntil = now + int64(d)
	in.st.reason, in.st.changedAt = reason, now
	in.consec.Store(0)
	in.flags.Or(flagEjected) // atomically: Admit changes flags without the mutex
	in.flags.And(^flagTrial)
	in.stopRampLocked()
	in.stats.ejections.Add(1)
	epoch.Add(1)
	if !in.st.closed {
		if in.st.ejectTimer != nil {
			in.st.ejectTimer.Stop()
		}
		until := in.st.ejectedUntil
		in.st.ejectTimer = afterFunc(d, func() { in.openTrial(until) })
	}
	return Change{Event: EventEjected, Reason: reason, Until: wallTime(in.st.ejectedUntil)}
}

// ejectionTime is how long the k+1-th consecutive ejection lasts. A
// MaxFailDuration below FailDuration caps nothing: no ejection is shorter
// than the first.
func ejectionTime(p *Policy, k int) time.Duration {
	d, most := p.FailDuration, max(p.MaxFailDuration, p.FailDuration)
	for range k {
		if d >= most/2 {
			return most
		}
		d *= 2
	}
	return min(d, most)
}

// openTrial opens the trial of the ejection that was to end at until, if
// it is still the current one.
func (in *Instance) openTrial(until int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.st.closed || in.st.ejectedUntil != until || in.flags.Load()&flagEjected == 0 || in.st.trialInFlight {
		return
	}
	in.flags.Or(flagTrial)
	in.st.reason = "ejection over: the next request is its trial"
	epoch.Add(1)
}

// endEjectionLocked puts an ejected instance back at now.
func (in *Instance) endEjectionLocked(now int64, reason string) Change {
	in.flags.And(^(flagEjected | flagTrial))
	in.st.ejectedUntil = 0
	in.st.returnedAt = now
	in.st.reason, in.st.changedAt = reason, now
	if in.st.ejectTimer != nil {
		in.st.ejectTimer.Stop()
	}
	in.consec.Store(0)
	if in.flags.Load()&down == 0 {
		in.startRampLocked(now)
	}
	epoch.Add(1)
	return Change{Event: EventHealthy, Reason: reason}
}

// startRampLocked starts slow start at now, if the policy has it.
func (in *Instance) startRampLocked(now int64) {
	p := in.policy.Load()
	if p.SlowStart <= 0 {
		return
	}
	in.st.rampStart = now
	in.setStepLocked(1)
	in.scheduleRampLocked(p.SlowStart / (rampSteps - 1))
}

// stopRampLocked ends slow start: full weight.
func (in *Instance) stopRampLocked() {
	in.st.rampStart = -1
	if in.st.rampTimer != nil {
		in.st.rampTimer.Stop()
	}
	in.setStepLocked(rampSteps)
}

// StepRamp moves slow start to the step due at now: from 1 at the start
// to rampSteps once SlowStart has passed.
func (in *Instance) StepRamp(now int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stepRampLocked(now)
}

func (in *Instance) stepRampLocked(now int64) {
	if in.st.rampStart < 0 || in.st.closed {
		return
	}
	window := in.policy.Load().SlowStart
	elapsed := max(now-in.st.rampStart, 0) // a stale timer's now may predate the ramp
	if window <= 0 || elapsed >= int64(window) {
		in.stopRampLocked()
		return
	}
	in.setStepLocked(1 + elapsed*(rampSteps-1)/int64(window))
	in.scheduleRampLocked(window / (rampSteps - 1))
}

func (in *Instance) setStepLocked(step int64) {
	if in.st.step == step {
		return
	}
	in.st.step = step
	in.selWeight.Store(in.weight.Load() * step)
	epoch.Add(1)
}

func (in *Instance) scheduleRampLocked(d time.Duration) {
	if in.st.closed {
		return
	}
	if in.st.rampTimer != nil {
		in.st.rampTimer.Stop()
	}
	in.st.rampTimer = afterFunc(max(d, time.Millisecond), func() { in.StepRamp(Now()) })
}

// SetDraining drains the instance (no new requests; those in flight
// finish) or puts it back, at now, and reports whether that changed
// anything.
func (in *Instance) SetDraining(drain bool, now int64) bool {
	in.mu.Lock()
	f := in.flags.Load()
	if (f&flagDraining != 0) == drain {
		in.mu.Unlock()
		return false
	}
	c := Change{Event: EventUndrained, Reason: "undrained"}
	if drain {
		in.drainedSent.Store(false)
		in.flags.Or(flagDraining)
		c = Change{Event: EventDraining, Reason: "drained by the operator"}
	} else {
		in.flags.And(^flagDraining)
	}
	in.st.reason, in.st.changedAt = c.Reason, now
	epoch.Add(1)
	in.mu.Unlock()
	in.notify(c)
	if drain && in.inFlight.Load() == 0 {
		in.reportDrained()
	}
	return true
}

// reportDrained reports that a draining instance has no request left, once
// per drain: the last request to end and SetDraining may both see it.
func (in *Instance) reportDrained() {
	if in.drainedSent.CompareAndSwap(false, true) {
		in.notify(Change{Event: EventDrained, Reason: "drained: no request in flight"})
	}
}

// Draining reports whether the instance is draining.
func (in *Instance) Draining() bool { return in.flags.Load()&flagDraining != 0 }

// Status is a point-in-time copy of an instance's state.
type Status struct {
	URL      string
	State    State
	Reason   string    // of the last change of state
	Since    time.Time // of the last change of state
	Healthy  bool      // passes active checks and not ejected
	InFlight int64

	TotalRequests uint64
	Failures      uint64
	LastChecked   time.Time // zero if never checked
	LastError     string

	ConsecutivePasses int // health checks
	ConsecutiveFails  int // health checks
	PassiveFails      int // consecutive failures of real requests
	EjectedUntil      time.Time

	Weight          int
	EffectiveWeight float64 // Weight, reduced during slow start
}

// Status returns a copy of the instance's current state.
func (in *Instance) Status() Status {
	in.mu.Lock()
	st := in.st
	f := in.flags.Load() // with the bookkeeping: the two agree
	in.mu.Unlock()
	s := Status{
		URL:               in.redacted,
		Reason:            st.reason,
		Since:             wallTime(st.changedAt),
		Healthy:           f&(down|flagEjected) == 0,
		InFlight:          in.inFlight.Load(),
		TotalRequests:     in.requests.Load(),
		Failures:          in.failures.Load(),
		ConsecutivePasses: st.passes,
		ConsecutiveFails:  st.fails,
		PassiveFails:      int(in.consec.Load()),
		Weight:            int(in.weight.Load()),
	}
	s.EffectiveWeight = float64(s.Weight) * float64(st.step) / rampSteps
	switch {
	case f&flagDraining != 0:
		s.State = StateDraining
	case f&down != 0:
		s.State = StateUnhealthy
	case f&flagEjected != 0:
		s.State = StateEjected
	case st.rampStart >= 0:
		s.State = StateStarting
	default:
		s.State = StateHealthy
	}
	if f&flagEjected != 0 {
		s.EjectedUntil = wallTime(st.ejectedUntil)
	}
	if ns := in.lastCheck.Load(); ns != 0 {
		s.LastChecked = time.Unix(0, ns)
	}
	if msg := in.lastError.Load(); msg != nil {
		s.LastError = *msg
	}
	return s
}

// wallTime converts a time of Now's base to wall-clock time.
func wallTime(now int64) time.Time { return start.Add(time.Duration(now)) }

// wallNanos is wallTime in Unix nanoseconds.
func wallNanos(now int64) int64 { return wallTime(now).UnixNano() }

// StatusSet is a set of HTTP status codes, 100 to 599. Its zero value is
// empty.
type StatusSet [10]uint64

// Add adds code to the set; codes out of range are ignored.
func (s *StatusSet) Add(code int) {
	if code >= 0 && code < 640 {
		s[code/64] |= 1 << (code % 64)
	}
}

// Has reports whether code is in the set.
func (s *StatusSet) Has(code int) bool {
	return code >= 0 && code < 640 && s[code/64]&(1<<(code%64)) != 0
}

// Empty reports whether the set has no code.
func (s *StatusSet) Empty() bool { return *s == StatusSet{} }
