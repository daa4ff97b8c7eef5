package health

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// TestRoundSkipsWhileCheckRuns runs rounds by hand, with no schedule: a
// round due while the previous one's probe is blocked returns at once,
// sending nothing; the next round after the probe ended probes again.
func TestRoundSkipsWhileCheckRuns(t *testing.T) {
	var hits atomic.Int64
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			arrived <- struct{}{}
			<-release
		}
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	in := backend.New(u, 1, &backend.Policy{}, backend.Now())
	m := NewMonitor(in, Target{URL: srv.URL + "/health"})
	// Not in the schedule: the test runs the rounds.
	m.spec.Store(&Spec{Interval: time.Hour, Timeout: time.Hour, Passes: 1, Fails: 1})
	t.Cleanup(m.Stop)

	first := make(chan struct{})
	go func() {
		defer close(first)
		m.round(getBuffers())
	}()
	<-arrived
	for i := range 3 {
		m.round(getBuffers()) // returns with the first probe still blocked
		if n := hits.Load(); n != 1 {
			t.Fatalf("round %d while a probe runs: %d probes sent, want 1", i, n)
		}
	}
	close(release)
	<-first
	if got := in.Metrics().ChecksPassed; got != 1 {
		t.Errorf("%d checks recorded, want the 1 that ran", got)
	}
	m.round(getBuffers())
	if n := hits.Load(); n != 2 {
		t.Errorf("a round after the probe ended sent %d probes in all, want 2", n)
	}
	if got := in.Metrics().ChecksPassed; got != 2 {
		t.Errorf("%d checks recorded, want 2", got)
	}
}

// TestRoundAfterStop: a round whose timer fired as Stop ran does nothing.
func TestRoundAfterStop(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	m := NewMonitor(backend.New(u, 1, &backend.Policy{}, backend.Now()), Target{URL: srv.URL})
	m.spec.Store(&Spec{Interval: time.Hour, Timeout: time.Hour})
	m.Stop()
	m.round(getBuffers())
	if n := hits.Load(); n != 0 {
		t.Errorf("a round after Stop sent %d probes", n)
	}
}

func TestJitter(t *testing.T) {
	if got := jitter(0); got != 0 {
		t.Errorf("jitter(0) = %v", got)
	}
	for _, d := range []time.Duration{time.Millisecond, time.Second, time.Hour} {
		lo, hi := d-d/10, d+d/10
		seen := map[time.Duration]bool{}
		for range 1000 {
			got := jitter(d)
			if got < lo || got > hi {
				t.Fatalf("jitter(%v) = %v, want within [%v, %v]", d, got, lo, hi)
			}
			seen[got] = true
		}
		if len(seen) < 2 {
			t.Errorf("jitter(%v) always %v", d, jitter(d))
		}
	}
}

// TestMonitorQueue: the schedule's heap keeps monitors in order of their
// next round through pushes, removals and changed keys, and their index
// always says where they are.
func TestMonitorQueue(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q monitorQueue
	var in []*Monitor
	check := func() {
		t.Helper()
		for i, e := range q {
			if e.m.index != i || e.due != e.m.due {
				t.Fatalf("entry %d: index %d, key %d, due %d", i, e.m.index, e.due, e.m.due)
			}
			if i > 0 && q[(i-1)/4].due > e.due {
				t.Fatalf("entry %d (%d) before its parent (%d)", i, e.due, q[(i-1)/4].due)
			}
		}
	}
	for range 2000 {
		switch op := r.IntN(4); {
		case op <= 1 || len(in) == 0:
			m := &Monitor{due: r.Int64N(1000), index: -1}
			q.push(m)
			in = append(in, m)
		case op == 2:
			k := r.IntN(len(in))
			q.remove(in[k].index)
			if in[k].index != -1 {
				t.Fatal("a removed monitor keeps an index")
			}
			in = slices.Delete(in, k, k+1)
		default:
			m := in[r.IntN(len(in))]
			m.due = r.Int64N(1000)
			q.fix(m.index)
		}
		check()
	}
	var last int64 = -1
	for len(q) > 0 {
		if q[0].due < last {
			t.Fatalf("taken out of order: %d after %d", q[0].due, last)
		}
		last = q[0].due
		q.remove(0)
		check()
	}
}
