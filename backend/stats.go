package backend

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// What the metrics and the report read of an instance besides its live
// state: responses by status class, response-header and health-check
// latency histograms, health checks by result, retries and ejections,
// and the last minute's request and error counts and latencies. Every
// record is a few atomic adds (a compare-and-swap for the last minute's
// counts); memory is fixed per instance (the last minute's window,
// about 3 KB, is allocated with the instance's first response).

// HistogramBounds are the upper bounds, in seconds, of the buckets of the
// response-header and health-check latency histograms (Prometheus's
// default buckets). A last bucket, +Inf, takes the rest.
var HistogramBounds = [...]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// histogramBoundsNs are HistogramBounds in nanoseconds.
var histogramBoundsNs = func() (ns [len(HistogramBounds)]int64) {
	for i, b := range HistogramBounds {
		ns[i] = int64(b * float64(time.Second))
	}
	return ns
}()

// Histogram is a latency histogram with the fixed buckets HistogramBounds,
// safe for concurrent use. Its zero value is empty.
type Histogram struct {
	counts [len(HistogramBounds) + 1]atomic.Uint64 // not cumulative; the last one is +Inf
	sumNs  atomic.Int64
}

// Observe adds a sample.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(histogramBoundsNs) && int64(d) > histogramBoundsNs[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// HistogramSnapshot is a copy of a Histogram: Buckets[i] counts the samples
// of at most HistogramBounds[i] seconds (cumulative, as Prometheus has
// them), Count all of them, Sum their total in seconds.
type HistogramSnapshot struct {
	Count   uint64
	Sum     float64
	Buckets [len(HistogramBounds)]uint64
}

// Snapshot returns a copy of the histogram. Samples recorded while it is
// taken may be in Sum and not in the counts or the other way round; the
// counts are consistent with each other.
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	for i := range h.counts {
		s.Count += h.counts[i].Load()
		if i < len(s.Buckets) {
			s.Buckets[i] = s.Count
		}
	}
	s.Sum = float64(h.sumNs.Load()) / float64(time.Second)
	return s
}

// StatusClasses are the classes of response statuses counted per instance;
// Metrics.Responses[i] counts those of StatusClasses[i].
var StatusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// statusClass returns the index in StatusClasses of a status; statuses out
// of the range 100–599 count as 5xx.
func statusClass(status int) int {
	if status < 100 || status > 599 {
		return 4
	}
	return status/100 - 1
}

// stats is what an Instance counts for its metrics and the report.
type stats struct {
	responses      [len(StatusClasses)]atomic.Uint64
	responseHeader Histogram
	checksPassed   atomic.Uint64
	checksFailed   atomic.Uint64
	checkDuration  Histogram
	retries        atomic.Uint64
	ejections      atomic.Uint64
	recent         atomic.Pointer[window]
}

// ObserveResponseHeader records the time an instance took to send its
// response headers (from just before the request was sent, dialing
// included) for a request whose headers arrived at now (as returned by
// Now).
func (in *Instance) ObserveResponseHeader(d time.Duration, now int64) {
	in.stats.responseHeader.Observe(d)
	in.window().observeLatency(d, now)
}

// ObserveLatencyFloor records d as a response-header latency of the
// instance's last minute (Recent and the latency quantiles), for a request
// given up on after d without an answer: its latency was d at least. The
// response_header_seconds metric takes only real latencies.
func (in *Instance) ObserveLatencyFloor(d time.Duration, now int64) {
	in.window().observeLatency(d, now)
}

// RecordResponse records how a request sent to the instance ended, at now
// (as returned by Now): the status the client got, from the instance or,
// when the instance failed, from the load balancer (502, 504, 499). A
// status of 500 or more counts as an error in the last minute's window.
func (in *Instance) RecordResponse(status int, now int64) {
	in.stats.responses[statusClass(status)].Add(1)
	in.window().record(status >= 500, now)
}

// ObserveCheck records the duration of a health check of the instance; its
// result is counted by FinishCheck.
func (in *Instance) ObserveCheck(d time.Duration) { in.stats.checkDuration.Observe(d) }

// RecordRetry counts a request retried on another instance after this one
// failed it.
func (in *Instance) RecordRetry() { in.stats.retries.Add(1) }

// window returns the instance's last-minute window, allocating it on first
// use.
func (in *Instance) window() *window {
	if w := in.stats.recent.Load(); w != nil {
		return w
	}
	in.stats.recent.CompareAndSwap(nil, new(window))
	return in.stats.recent.Load()
}

// Metrics is a copy of an instance's counters and histograms.
type Metrics struct {
	Responses      [len(StatusClasses)]uint64 // by StatusClasses
	ResponseHeader HistogramSnapshot
	ChecksPassed   uint64
	ChecksFailed   uint64
	CheckDuration  HistogramSnapshot
	Retries        uint64
	Ejections      uint64
}

// Metrics returns a copy of the instance's counters and histograms.
func (in *Instance) Metrics() Metrics {
	m := Metrics{
		ResponseHeader: in.stats.responseHeader.Snapshot(),
		ChecksPassed:   in.stats.checksPassed.Load(),
		ChecksFailed:   in.stats.checksFailed.Load(),
		CheckDuration:  in.stats.checkDuration.Snapshot(),
		Retries:        in.stats.retries.Load(),
		Ejections:      in.stats.ejections.Load(),
	}
	for i := range m.Responses {
		m.Responses[i] = in.stats.responses[i].Load()
	}
	return m
}

// Recent is what an instance did over the last minute.
type Recent struct {
	// Requests and Errors count the requests that ended within the last
	// WindowSeconds (the current second and the 59 before it), and those of
	// them whose status was 500 or more.
	Requests, Errors uint64
	// Latencies counts the response-header latencies recorded in the last
	// 50 to 60 s (the current 10-second slot and the five before it); P50
	// and P99 are their median and 99th percentile, estimated from buckets
	// a half octave wide (off by at most a quarter), and 0 if Latencies is 0.
	Latencies uint64
	P50, P99  time.Duration
}

// Recent returns what the instance did over the last minute, as of now (as
// returned by Now).
func (in *Instance) Recent(now int64) Recent {
	w := in.stats.recent.Load()
	if w == nil {
		return Recent{}
	}
	return w.read(now)
}

// WindowSeconds is the length of the window of Recent's request counts.
const WindowSeconds = 60

// The last minute's latencies are kept in slots of latencySlotSeconds, the
// current one and latencySlots-1 before it, each a histogram of
// latencyBuckets buckets: [0, 2^17 ns), then two per octave from 2^17 ns
// (131 µs) to 2^36 ns (68.7 s), then [2^36 ns, ∞).
const (
	latencySlotSeconds = 10
	latencySlots       = WindowSeconds / latencySlotSeconds
	latencyMinShift    = 17
	latencyMaxShift    = 36
	latencyBuckets     = 2 + 2*(latencyMaxShift-latencyMinShift)
)

// window holds the last minute's counts. Each word packs the time slot it
// counts for (high 32 bits: the slot's number since the process started,
// plus 1, so an empty word is 0) and the count (low 32 bits), so a writer
// that finds a stale slot restarts it with one compare-and-swap and no
// reader ever sees a count of the wrong time.
type window struct {
	requests [WindowSeconds]atomic.Uint64
	errors   [WindowSeconds]atomic.Uint64
	latency  [latencySlots][latencyBuckets]atomic.Uint64
}

func (w *window) record(failed bool, now int64) {
	sec := uint32(now/int64(time.Second)) + 1
	bump(&w.requests[sec%WindowSeconds], sec)
	if failed {
		bump(&w.errors[sec%WindowSeconds], sec)
	}
}

func (w *window) observeLatency(d time.Duration, now int64) {
	slot := uint32(now/int64(latencySlotSeconds*time.Second)) + 1
	bump(&w.latency[slot%latencySlots][latencyBucket(d)], slot)
}

// bump adds 1 to the count of word for slot, restarting it if it counts an
// older slot. A sample for a slot older than the word's is dropped.
func bump(word *atomic.Uint64, slot uint32) {
	for {
		old := word.Load()
		var next uint64
		switch at := uint32(old >> 32); {
		case at == slot:
			if uint32(old) == ^uint32(0) {
				return
			}
			next = old + 1
		case at < slot:
			next = uint64(slot)<<32 | 1
		default:
			return
		}
		if word.CompareAndSwap(old, next) {
			return
		}
	}
}

// count returns word's count if it counts a slot in (from, to].
func count(word *atomic.Uint64, from, to uint32) uint64 {
	v := word.Load()
	if at := uint32(v >> 32); at > from && at <= to {
		return uint64(uint32(v))
	}
	return 0
}

func (w *window) read(now int64) Recent {
	var r Recent
	sec := uint32(now/int64(time.Second)) + 1
	for i := range w.requests {
		r.Requests += count(&w.requests[i], back(sec, WindowSeconds), sec)
		r.Errors += count(&w.errors[i], back(sec, WindowSeconds), sec)
	}
	slot := uint32(now/int64(latencySlotSeconds*time.Second)) + 1
	var hist [latencyBuckets]uint64
	for s := range w.latency {
		for b := range w.latency[s] {
			hist[b] += count(&w.latency[s][b], back(slot, latencySlots), slot)
		}
	}
	for _, c := range hist {
		r.Latencies += c
	}
	if r.Latencies > 0 {
		r.P50 = quantile(&hist, r.Latencies, 0.5)
		r.P99 = quantile(&hist, r.Latencies, 0.99)
	}
	return r
}

// back returns slot - n, or 0 if that is below 0.
func back(slot, n uint32) uint32 {
	if slot < n {
		return 0
	}
	return slot - n
}

// latencyBucket returns the bucket of the last minute's histogram d falls
// in.
func latencyBucket(d time.Duration) int {
	if d < 1<<latencyMinShift {
		return 0
	}
	l := bits.Len64(uint64(d)) // d is in [2^(l-1), 2^l)
	if l > latencyMaxShift {
		return latencyBuckets - 1
	}
	half := int(uint64(d)>>(l-2)) & 1 // which half of the octave
	return 1 + 2*(l-1-latencyMinShift) + half
}

// latencyBucketBounds returns the bounds [lo, hi) of bucket b; hi is lo for
// the last, unbounded, bucket.
func latencyBucketBounds(b int) (lo, hi float64) {
	switch {
	case b == 0:
		return 0, 1 << latencyMinShift
	case b == latencyBuckets-1:
		return 1 << latencyMaxShift, 1 << latencyMaxShift
	}
	octave := float64(uint64(1) << (latencyMinShift + (b-1)/2))
	lo = octave * (1 + 0.5*float64((b-1)%2))
	return lo, lo + octave/2
}

// quantile estimates the q-quantile of the n samples in hist, by linear
// interpolation within the bucket it falls in.
func quantile(hist *[latencyBuckets]uint64, n uint64, q float64) time.Duration {
	rank := q * float64(n)
	var cum float64
	for b, c := range hist {
		if c == 0 {
			continue
		}
		if cum+float64(c) >= rank {
			lo, hi := latencyBucketBounds(b)
			return time.Duration(lo + (hi-lo)*(rank-cum)/float64(c))
		}
		cum += float64(c)
	}
	lo, _ := latencyBucketBounds(latencyBuckets - 1)
	return time.Duration(lo)
}

// LatencyQuantile estimates the q-quantile of the response-header
// latencies of instances over the last minute (see Recent), at now, and
// returns it with the number of latencies it was estimated from.
func LatencyQuantile(instances []*Instance, q float64, now int64) (time.Duration, uint64) {
	var hist [latencyBuckets]uint64
	slot := uint32(now/int64(latencySlotSeconds*time.Second)) + 1
	for _, in := range instances {
		w := in.stats.recent.Load()
		if w == nil {
			continue
		}
		for s := range w.latency {
			for b := range w.latency[s] {
				hist[b] += count(&w.latency[s][b], back(slot, latencySlots), slot)
			}
		}
	}
	var n uint64
	for _, c := range hist {
		n += c
	}
	if n == 0 {
		return 0, 0
	}
	return quantile(&hist, n, q), n
}
