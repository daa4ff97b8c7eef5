// Package health checks backend instances actively: it asks each one for a
// health URI on an interval and feeds the answers to the instance's state
// machine (backend.Instance.FinishCheck), which applies the streaks.
//
// It is built for many instances: one schedule for every monitor of the
// process (schedule.go) hands due checks to a pool of worker goroutines,
// and each probe writes pre-built request bytes on a kept-alive
// connection and parses the answer itself through the worker's buffer
// (probe.go, response.go). An idle monitor holds its connection, its
// request's bytes and a place in the schedule: no timer, no goroutine, no
// buffer.
package health

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// firstProbeSpread bounds the random delay of an instance's first probe,
// so that a config with many instances does not probe them all at once,
// nor wait long for a first verdict.
const firstProbeSpread = 2 * time.Second

// Monitor checks one instance on its own schedule, for as long as it is
// in use. An instance shared across config reloads has exactly one
// Monitor, whatever the number of configs using it: the config that runs
// sets the Spec with Run.
type Monitor struct {
	instance *backend.Instance
	prober   *Prober

	spec atomic.Pointer[Spec]

	mu      sync.Mutex // guards started, stopped and probes.Add
	started bool
	stopped bool
	probes  sync.WaitGroup

	// Its place in the schedule, under schedule.mu.
	due   int64 // backend.Now time of the next round
	index int   // in the queue; -1 when not in it
}

// NewMonitor returns a stopped monitor of in that probes target (the
// health URI on the instance, http or https) with connections dialed by
// dial (nil: a net.Dialer). A target that is not a URL fails every check
// with the parse error.
func NewMonitor(in *backend.Instance, target string, dial DialFunc) *Monitor {
	p, err := NewProber(target, dial)
	if err != nil {
		p = &Prober{dial: failingDial(err)}
	}
	return &Monitor{instance: in, prober: p, index: -1}
}

// Run makes spec the monitor's Spec and, the first time, starts probing:
// the first probe comes after a random delay of up to the interval (at
// most two seconds), each next one an interval (±10%) after the one
// before. A probe still running when the next is due is not stacked with
// another (see backend.Instance.TryStartCheck); that round is skipped.
func (m *Monitor) Run(spec *Spec) {
	m.spec.Store(spec)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.stopped {
		return
	}
	m.started = true
	spread := min(spec.Interval, firstProbeSpread)
	schedule.add(m, backend.Now()+int64(rand.N(spread+1)))
}

// Running reports whether the monitor is probing: Run was called, and
// Stop was not.
func (m *Monitor) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.started && !m.stopped
}

// Stop stops probing, cuts a probe under way short, and returns once it
// has ended. The monitor cannot be restarted.
func (m *Monitor) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	schedule.remove(m)
	m.prober.abort()
	m.probes.Wait()
	m.prober.Close()
}

// round is one scheduled check, run by a worker with its buffers.
func (m *Monitor) round(b *buffers) {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.probes.Add(1)
	m.mu.Unlock()
	defer m.probes.Done()

	in := m.instance
	if !in.TryStartCheck() {
		return
	}
	spec := m.spec.Load()
	start := time.Now()
	err := m.prober.probe(spec, b)
	took := time.Since(start)
	if m.prober.isAborted() {
		// Stopped: the probe was cut short by us, so it says nothing
		// about the instance.
		in.AbandonCheck()
		return
	}
	in.ObserveCheck(took)
	in.FinishCheck(backend.Now(), err, spec.Passes, spec.Fails)
}

// interval is the time to the monitor's next round.
func (m *Monitor) interval() time.Duration { return jitter(m.spec.Load().Interval) }

// jitter returns d ± 10%, at random.
func jitter(d time.Duration) time.Duration {
	spread := d / 5
	return d - spread/2 + rand.N(spread+1)
}
