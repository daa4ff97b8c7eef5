package strategy

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// DefaultLatencyDecay is least_latency's decay window when none is set.
const DefaultLatencyDecay = 10 * time.Second

func init() {
	Register("least_latency", func(o Options) (Strategy, error) {
		if o.LatencyDecay < 0 {
			return nil, &OptionError{Option: OptionLatencyDecay,
				Err: fmt.Errorf("%w: must be positive, got %v", ErrInvalidOption, o.LatencyDecay)}
		}
		decay := o.LatencyDecay
		if decay == 0 {
			decay = DefaultLatencyDecay
		}
		return &LeastLatency{decay: decay, now: backend.Now}, nil
	}, OptionLatencyDecay)
}

// LeastLatency is Finagle's and Linkerd's peak-EWMA balancer: it draws two
// different available instances at random (in proportion to their
// weights) and picks the one with the lower cost, latency × (in flight +
// 1) / weight, where latency is the instance's peak EWMA of the time it
// took to send response headers (see backend.Instance.ObserveLatency).
//
// A slow instance's estimate jumps with its first slow answer, so it loses
// nearly every draw within a few requests; the estimate decays while it
// gets no traffic (window latency_decay, default 10s), so it is tried
// again now and then, and wins its share back as soon as its answers are
// fast again. Multiplying by the requests in flight keeps a fast instance
// from being flooded: it is preferred until its queue costs more than the
// slower instance's latency.
//
// A new instance, or one back from being unhealthy, has no estimate; it
// starts from the median estimate of the pool (computed at most every
// latency_decay/16, off the common path), not from zero, so it is not sent
// everything until its first answers arrive. While no instance has any
// estimate, the cost is just the load, as p2c.
//
// Selection is O(1) at any pool size: two random draws, a clock read and
// two estimates decayed to now.
type LeastLatency struct {
	rng
	decay    time.Duration
	now      func() int64 // backend.Now; tests set a fake clock
	samplers listCache[sampler]
	observed atomic.Bool // some instance has had a sample
	median   median
}

// Select implements Strategy.
func (s *LeastLatency) Select(pool *backend.Pool, _ *http.Request) *backend.Instance {
	list := pool.Available()
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	i, j := s.samplers.get(list, newSampler).pair(&s.rng)
	a, b := list[i], list[j]
	now := s.now()
	if s.cost(list, b, now) < s.cost(list, a, now) {
		return b
	}
	return a
}

// Observe implements Observer: it records a response-header latency.
func (s *LeastLatency) Observe(in *backend.Instance, latency time.Duration) {
	in.ObserveLatency(latency, s.now(), s.decay)
	if !s.observed.Load() {
		s.observed.Store(true)
	}
}

// cost returns latency × (in flight + 1) / weight for in, seeding its
// latency with the pool's median if it has none.
func (s *LeastLatency) cost(list []*backend.Instance, in *backend.Instance, now int64) float64 {
	lat, ok := in.Latency(now, s.decay)
	if !ok {
		lat = 1 // while nothing is known, compare loads only
		if m, ok := s.medianOf(list, now); ok {
			in.SeedLatency(m, now)
			lat = m
		}
	}
	return lat * float64(in.InFlight()+1) / float64(in.SelectionWeight())
}

// median caches the median latency estimate of a pool.
type median struct {
	mu      sync.Mutex    // held by the one goroutine that computes it
	value   atomic.Uint64 // float64 bits; 0: none yet
	at      atomic.Int64  // when it was computed, as backend.Now + 1; 0: never
	scratch []float64     // under mu
}

// medianOf returns the median latency estimate of the instances of list
// that have one, computed at most every decay/16; ok is false if none has.
// If another goroutine is computing it, the previous value is used.
func (s *LeastLatency) medianOf(list []*backend.Instance, now int64) (float64, bool) {
	m := &s.median
	v := math.Float64frombits(m.value.Load())
	if at := m.at.Load(); at != 0 && now-(at-1) < int64(s.decay/16) {
		return v, v > 0
	}
	if !s.observed.Load() || !m.mu.TryLock() {
		return v, v > 0
	}
	defer m.mu.Unlock()
	m.scratch = m.scratch[:0]
	for _, in := range list {
		if lat, ok := in.Latency(now, s.decay); ok {
			m.scratch = append(m.scratch, lat)
		}
	}
	if len(m.scratch) == 0 {
		return v, v > 0
	}
	slices.Sort(m.scratch)
	mid := len(m.scratch) / 2
	v = m.scratch[mid]
	if len(m.scratch)%2 == 0 {
		v = (m.scratch[mid-1] + v) / 2
	}
	m.value.Store(math.Float64bits(v))
	m.at.Store(now + 1)
	return v, true
}
