package backend

import (
	"math"
	"sync"
	"time"
)

// Adaptive concurrency limits (max_requests auto): each instance's limit
// on requests in flight follows what the instance can take, learnt from
// the requests sent to it, within bounds.
//
// The limiter probes upward and cuts on evidence, period by period:
//
//   - Loss: an answer that says the instance is overloaded (503, 429)
//     came with n requests in flight to it (the larger of the counts as
//     it was sent and as it answered: requests sent later may reach the
//     instance first), so the instance takes fewer than n: the limit
//     drops to n-1 at once (and back to the last good limit, if it was
//     probing above it). Other failures (no connection, timeouts,
//     unhealthy statuses) shrink it by a tenth, once a period: a failing
//     instance gets fewer requests at a time.
//   - Delay: every 10 s (the first time after 1 s) the limit is halved
//     for a moment (a drain, as BBR's ProbeRTT): requests queued in the
//     instance drain, and the mean latency of those sent meanwhile is its
//     latency at half the load, the reference. When a period's mean
//     latency is more than 1.5 times the reference, requests queue in the
//     instance: the limit is cut in proportion (the gradient, reference
//     × 1.5 over the mean), by a tenth at most a period. Latency that
//     grows for another reason (a busy machine) grows at half the load
//     too, and cuts nothing. While a period's mean latency is more than
//     1.5 times the reference (before the first drain: the lowest
//     latency seen), the limit is not raised: an instance that queues
//     stops it growing before the first drain.
//   - Probe: a period in which the limit was reached, with neither loss
//     nor delay, raises the limit by a step, which doubles with each
//     successful probe in a row (1, 2, 4, ...) and is 1 again after a cut;
//     after a probe that failed, probing waits twice as long (100 ms up to
//     1 s), so that an instance at its capacity costs about one refused
//     request a second.
//
// The limit starts at its minimum (1 by default) and grows by probing
// (1, 2, 4, 8, ... a period apart).
const (
	limitPeriod    = 100 * time.Millisecond // between probes, at first
	maxLimitPeriod = time.Second            // between probes, after failed ones
	drainEvery     = 10 * time.Second       // between drains, which measure the reference latency again
	firstDrain     = time.Second            // after the limit is turned on
	delayTolerance = 1.5                    // mean latency over the reference that means queueing
	maxDelayCut    = 0.9                    // the most a delay cuts in a period
	minDelaySample = 10                     // latencies in a period for its mean to count
)

// Outcome is what a request sent to an instance says about its capacity.
type Outcome int

// Outcomes of requests, for the adaptive limit.
const (
	OutcomeOK         Outcome = iota // answered, not overloaded
	OutcomeOverloaded                // answered 503 or 429: beyond its capacity
	OutcomeFailed                    // no answer, or an unhealthy status
	OutcomeNone                      // says nothing (the client left, or broke its request)
)

// limiter is an instance's adaptive limit. Its value is read on the
// request path without the lock (Instance.autoLimit).
type limiter struct {
	mu       sync.Mutex
	on       bool
	min, max float64
	limit    float64
	base     float64       // the limit before the current probe: known good
	step     float64       // the next probe's
	every    time.Duration // the wait before a probe
	probing  bool          // the limit is above base: the period judges the probe
	start    int64         // of the period
	reached  bool          // the limit was reached in the period
	cut      bool          // the limit was cut in the period
	sum      time.Duration
	samples  int
	ref      time.Duration // mean latency at half the load, of the last drain; 0: none yet
	drained  int64         // when the last drain began (or the limit was turned on)
	draining float64       // the limit to go back to after the drain; 0 if none
	drainEnd int64         // when the drain ends
	drainSum time.Duration // latencies of the requests sent in the drain
	drainN   int
	minCur   time.Duration // the lowest latency since the last drain began; 0: none
	minPrev  time.Duration // of the cycle before
}

// SetAutoLimit turns the instance's adaptive limit on, within [min, max]
// (a limit already learnt is kept, brought within them), or off (max 0).
func (in *Instance) SetAutoLimit(min, max int, now int64) {
	l := &in.limiter
	l.mu.Lock()
	defer l.mu.Unlock()
	if max <= 0 {
		l.on = false
		in.autoLimit.Store(0)
		return
	}
	if !l.on {
		l.on, l.limit, l.step, l.every, l.start = true, float64(min), 1, limitPeriod, now
		l.drained = now - int64(drainEvery-firstDrain)
		l.base, l.ref, l.draining = 0, 0, 0
	}
	l.min, l.max = float64(min), float64(max)
	l.limit = math.Min(math.Max(l.limit, l.min), l.max)
	l.base = math.Min(l.base, l.limit)
	in.autoLimit.Store(int64(l.limit))
}

// AutoLimit returns the instance's adaptive limit now (0 when it has
// none), before slow start scales it (see Limit).
func (in *Instance) AutoLimit() int { return int(in.autoLimit.Load()) }

// ObserveLimit feeds a request's outcome, at now, to the instance's
// adaptive limit: the instance had inFlight requests in flight with it
// (itself included), and it took rtt to its response headers (0 for
// none).
func (in *Instance) ObserveLimit(o Outcome, inFlight int64, rtt time.Duration, now int64) {
	if o == OutcomeNone || in.autoLimit.Load() == 0 {
		return
	}
	l := &in.limiter
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.on {
		return
	}
	switch o {
	case OutcomeOverloaded:
		target := math.Min(l.limit, float64(inFlight-1))
		if l.probing {
			target = math.Min(target, l.base) // the probe failed
			l.every = min(2*l.every, maxLimitPeriod)
		}
		l.cutTo(target)
	case OutcomeFailed:
		if !l.cut {
			l.cutTo(l.limit * 0.9)
		}
	case OutcomeOK:
		if rtt > 0 {
			l.sum += rtt
			l.samples++
			if l.minCur == 0 || rtt < l.minCur {
				l.minCur = rtt
			}
			if l.draining > 0 && now-int64(rtt) >= l.drained {
				l.drainSum += rtt
				l.drainN++
			}
		}
		if float64(inFlight) >= math.Floor(l.limit) {
			l.reached = true
		}
	}
	if l.draining > 0 && now >= l.drainEnd {
		// The drain is over: back to the limit before it.
		if l.drainN > 0 {
			l.ref = l.drainSum / time.Duration(l.drainN)
		}
		l.limit, l.draining = l.draining, 0
		l.start, l.reached, l.cut, l.sum, l.samples = now, false, false, 0, 0
	}
	period := l.every
	if l.probing {
		period = limitPeriod
	}
	if l.draining == 0 && now-l.start >= int64(period) {
		l.endPeriod(now)
	}
	in.autoLimit.Store(int64(l.limit))
}

// cutTo lowers the limit to target (within the bounds) and ends probing
// (and a drain: the limit cut is the one to keep).
func (l *limiter) cutTo(target float64) {
	l.limit = math.Max(l.min, math.Min(l.limit, target))
	l.base, l.step, l.cut, l.draining, l.probing = l.limit, 1, true, 0, false
}

// endPeriod judges the period that ends at now: delay cuts, a reached
// limit without loss or delay probes upward.
func (l *limiter) endPeriod(now int64) {
	var mean time.Duration
	if l.samples >= minDelaySample {
		mean = l.sum / time.Duration(l.samples)
	}
	switch {
	case now-l.drained >= int64(drainEvery) && l.limit >= 2*l.min && mean > 0:
		// Long enough for what was queued to drain and for requests sent
		// meanwhile to come back: three mean latencies, from 10 ms to a
		// second.
		d := min(max(3*mean, 10*time.Millisecond), time.Second)
		l.drained, l.drainEnd, l.draining, l.drainSum, l.drainN = now, now+int64(d), l.limit, 0, 0
		l.minPrev, l.minCur = l.minCur, 0
		l.limit = math.Max(l.min, math.Floor(l.limit/2))
	case l.cut:
	case mean > 0 && l.ref > 0 && float64(mean) > delayTolerance*float64(l.ref):
		l.cutTo(l.limit * max(maxDelayCut, delayTolerance*float64(l.ref)/float64(mean)))
	case mean > 0 && float64(mean) > delayTolerance*float64(l.holdAbove()):
		// Queueing, or a busy machine: hold.
		l.probing = false
	case l.reached && l.limit < l.max:
		if l.probing {
			l.every = limitPeriod // the last probe held
		}
		l.base = l.limit
		l.limit = math.Min(l.max, l.limit+l.step)
		l.step *= 2
		l.probing = true
	default:
		l.probing = false // held, but not reached: nothing learnt
	}
	l.start, l.reached, l.cut, l.sum, l.samples = now, false, false, 0, 0
}

// holdAbove is the latency that, times delayTolerance, stops the limit
// growing: the reference, or before the first drain the lowest latency
// seen.
func (l *limiter) holdAbove() time.Duration {
	if l.ref > 0 {
		return l.ref
	}
	if l.minPrev > 0 && (l.minCur == 0 || l.minPrev < l.minCur) {
		return l.minPrev
	}
	return l.minCur
}
