package backend

import (
	"testing"
	"time"
)

// limitSim drives an instance's adaptive limit with a simulated backend:
// clients keep as many requests in flight as the limit lets them; the
// backend serves capacity at once, each in service, and refuses the rest
// at once with an overload (as bench/backend -cap does), or (queueing)
// serves them all, one capacity's worth per service time.
type limitSim struct {
	t        *testing.T
	in       *Instance
	now      int64
	service  time.Duration
	capacity int
	queueing bool
	busy     []int64 // completion times of the requests in flight
	refused  int     // overloaded answers
	served   int
}

// run simulates d in steps of a tenth of a millisecond.
func (s *limitSim) run(d time.Duration) {
	end := s.now + int64(d)
	for ; s.now < end; s.now += int64(100 * time.Microsecond) {
		// Completions.
		kept := s.busy[:0]
		for _, done := range s.busy {
			if done <= s.now {
				s.in.ObserveLimit(OutcomeOK, int64(len(s.busy)), s.latency(), s.now)
				s.served++
				continue
			}
			kept = append(kept, done)
		}
		s.busy = kept
		// New requests, up to the limit.
		for len(s.busy) < s.in.AutoLimit() {
			inFlight := int64(len(s.busy) + 1)
			if !s.queueing && len(s.busy) >= s.capacity {
				s.refused++
				s.in.ObserveLimit(OutcomeOverloaded, inFlight, time.Millisecond/10, s.now)
				continue
			}
			s.busy = append(s.busy, s.now+int64(s.latency()))
		}
	}
}

// latency is a request's time in the backend now: its service time, and
// for a queueing backend the wait behind the requests beyond its capacity.
func (s *limitSim) latency() time.Duration {
	if !s.queueing || len(s.busy) <= s.capacity {
		return s.service
	}
	return s.service * time.Duration(len(s.busy)) / time.Duration(s.capacity)
}

// TestAutoLimit: the limit finds a refusing backend's capacity as it
// changes (8, then 16, then 4), at the cost of a few refused requests a
// second once found; a queueing backend's limit stops where its latency
// doubles; a failing instance's limit shrinks; the bounds hold.
func TestAutoLimit(t *testing.T) {
	in, _ := newTest(t, 1, &Policy{})
	in.SetAutoLimit(1, 1000, t0)
	if got := in.AutoLimit(); got != 1 {
		t.Fatalf("initial limit %d, want the minimum, 1", got)
	}
	s := &limitSim{t: t, in: in, now: t0, service: 5 * time.Millisecond}
	for _, capacity := range []int{8, 16, 4} {
		s.capacity = capacity
		s.run(3 * time.Second) // to find it
		s.refused, s.served = 0, 0
		near, hi := 0, 0
		for range 100 { // over 5 s, every 50 ms
			s.run(50 * time.Millisecond)
			if l := in.AutoLimit(); l >= capacity-1 && l <= capacity+2 {
				near++
			}
			hi = max(hi, in.AutoLimit())
		}
		// Drains halve it for a moment every 10 s.
		if near < 95 || hi > capacity+2 {
			t.Errorf("capacity %d: the limit was within [%d, %d] in %d of 100 samples once found, and at most %d", capacity, capacity-1, capacity+2, near, hi)
		}
		ideal := 5 * time.Second / s.service * time.Duration(capacity)
		if float64(s.served) < 0.95*float64(ideal) {
			t.Errorf("capacity %d: %d served in 5 s, want at least 95%% of %d", capacity, s.served, ideal)
		}
		if share := float64(s.refused) / float64(s.served+s.refused); share > 0.005 {
			t.Errorf("capacity %d: %d refused of %d (%.2f%%) once found, want at most 0.5%%", capacity, s.refused, s.served+s.refused, 100*share)
		}
		t.Logf("capacity %d: %d served of %d possible, %d refused", capacity, s.served, ideal, s.refused)
	}

	// A backend that queues rather than refuses: latency doubles at twice
	// its capacity, where the limit stops.
	q, _ := newTest(t, 1, &Policy{})
	q.SetAutoLimit(1, 1000, t0)
	qs := &limitSim{t: t, in: q, now: t0, service: 5 * time.Millisecond, capacity: 8, queueing: true}
	hi := 0
	for range 30 {
		qs.run(time.Second)
		hi = max(hi, q.AutoLimit())
	}
	lo := 1000
	for range 30 { // settled, through drains
		qs.run(time.Second)
		lo, hi = min(lo, q.AutoLimit()), max(hi, q.AutoLimit())
	}
	if lo < 8 || hi > 24 {
		t.Errorf("a queueing backend of capacity 8: the limit reached %d, and %d after 30 s; want at most 3 times its capacity, and at least its capacity once settled", hi, lo)
	}
	if l := q.AutoLimit(); l > 16 {
		t.Errorf("a queueing backend of capacity 8: the limit settled at %d, want at most twice its capacity", l)
	}

	// Failures shrink the limit, at most once a period.
	f, _ := newTest(t, 1, &Policy{})
	f.SetAutoLimit(2, 1000, t0)
	now := t0
	for range 30 {
		now += int64(limitPeriod)
		f.ObserveLimit(OutcomeFailed, 1, 0, now)
		f.ObserveLimit(OutcomeFailed, 1, 0, now)
	}
	if got := f.AutoLimit(); got != 2 {
		t.Errorf("after 30 periods of failures: limit %d, want the minimum, 2", got)
	}

	// Bounds: the maximum caps probing; turning it off reads 0.
	b, _ := newTest(t, 1, &Policy{})
	b.SetAutoLimit(1, 12, t0)
	bs := &limitSim{t: t, in: b, now: t0, service: 5 * time.Millisecond, capacity: 100}
	bs.run(2 * time.Second)
	if got := b.AutoLimit(); got != 12 {
		t.Errorf("capacity 100, max 12: limit %d", got)
	}
	b.SetAutoLimit(0, 0, bs.now)
	if got := b.AutoLimit(); got != 0 {
		t.Errorf("turned off: limit %d", got)
	}
}
