package backend

import (
	"math"
	"time"
)

// An instance's latency estimate is a peak EWMA (Finagle's PeakEwma, also
// used by Linkerd and Envoy). It decays toward 0 while no sample arrives:
// Δt after it was last set it reads v·w with w = exp(−Δt/τ), so an idle
// slow instance is tried again after a while, and the sample it then gives
// tells whether it is still slow. A sample x taken then replaces the
// decayed estimate v·w at once if it is higher (peak sensitivity: a
// backend that turns slow is noticed with its first slow answer), and
// otherwise moves it toward x by 1 − w: v' = v·w·w + x·(1 − w). So samples
// close together move the estimate a little each, and one sample after a
// long silence counts for nearly everything. (Finagle and tower store the
// decayed value on every read and reach the same behaviour; here reads
// write nothing.)
//
// Estimate and time live in one 64-bit word, updated with compare-and-swap,
// so a reader always sees a consistent pair and a writer never takes a
// lock:
//
//	bits 63..32  the estimate in nanoseconds, as a float32 (at least 1, so
//	             the word is never 0 once set)
//	bits 31..0   the time of the last update, in units of 2^16 ns (65.5 µs)
//	             of Now, modulo 2^32 (about 78 hours)
//
// The word is 0 while the instance has no estimate: before its first
// sample, and again after it recovers from being unhealthy.
//
// Time differences are taken modulo the 78-hour wrap: an estimate left
// untouched for longer than that may look younger than it is, and so decay
// less than it should, until its next update. By then it has decayed to
// nothing anyway unless the idle time is within a few τ of a multiple of
// 78 hours, and a single sample sets it right again.

// timeShift converts Now's nanoseconds to the stored time unit.
const timeShift = 16

// start anchors Now; time.Since on a monotonic time reads only the
// monotonic clock.
var start = time.Now()

// Now returns the nanoseconds elapsed on the monotonic clock since the
// process started: the time base of latency samples and estimates.
func Now() int64 { return int64(time.Since(start)) }

// WallTime converts a time of Now's base to wall-clock time.
func WallTime(now int64) time.Time { return wallTime(now) }

// ObserveLatency records a response-header latency sample taken at now (as
// returned by Now), with decay window tau (> 0).
func (in *Instance) ObserveLatency(sample time.Duration, now int64, tau time.Duration) {
	x := float64(sample)
	t := uint32(now >> timeShift)
	for {
		old := in.latency.Load()
		v := x
		if old != 0 {
			prev, then := unpackLatency(old)
			w := decayFactor(t-then, tau)
			if d := prev * w; x < d {
				v = d*w + x*(1-w)
			}
		}
		if in.latency.CompareAndSwap(old, packLatency(v, t)) {
			return
		}
	}
}

// Latency returns the instance's latency estimate in nanoseconds, decayed
// to now (as returned by Now) with decay window tau (> 0); ok is false
// while the instance has none.
func (in *Instance) Latency(now int64, tau time.Duration) (ns float64, ok bool) {
	word := in.latency.Load()
	if word == 0 {
		return 0, false
	}
	v, then := unpackLatency(word)
	return v * decayFactor(uint32(now>>timeShift)-then, tau), true
}

// SeedLatency gives an instance with no estimate the estimate ns as of now
// (as returned by Now), so a new or recovered instance starts from a
// plausible value (its pool's median) rather than from nothing. It does
// nothing if the instance has an estimate already.
func (in *Instance) SeedLatency(ns float64, now int64) {
	in.latency.CompareAndSwap(0, packLatency(ns, uint32(now>>timeShift)))
}

// decayFactor returns exp(−Δt/τ) for Δt given in stored time units.
func decayFactor(units uint32, tau time.Duration) float64 {
	if units == 0 {
		return 1
	}
	return expNeg(-float64(uint64(units)<<timeShift) / float64(tau))
}

// expNeg returns e^x for x ≤ 0 to within a few parts in 10^10: the
// estimates need nothing like math.Exp's last bit, and selection, which
// decays two estimates, is the hot path.
func expNeg(x float64) float64 {
	if x < -708 {
		return 0
	}
	// e^x = 2^k · e^r with k the integer nearest x·log2(e), |r| ≤ ln2/2.
	t := x * math.Log2E
	k := math.Floor(t + 0.5)
	r := (t - k) * math.Ln2
	// Taylor series of e^r to r^8/8!; the rest is below 3e-10.
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040+r*(1.0/40320))))))))
	return p * math.Float64frombits(uint64(int64(k)+1023)<<52)
}

func packLatency(ns float64, t uint32) uint64 {
	v := float32(min(max(ns, 1), math.MaxFloat32))
	return uint64(math.Float32bits(v))<<32 | uint64(t)
}

func unpackLatency(word uint64) (ns float64, t uint32) {
	return float64(math.Float32frombits(uint32(word >> 32))), uint32(word)
}
