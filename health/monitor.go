// Package health checks backend instances actively: it asks each one for a
// health URI on an interval and feeds the answers to the instance's state
// machine (backend.Instance.FinishCheck), which applies the streaks.
package health

import (
	"context"
	"math/rand/v2"
	"net/http"
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
	url      string // the probe's URL
	client   *http.Client

	spec atomic.Pointer[Spec]

	ctx    context.Context // ends with Stop, cutting a probe short
	cancel context.CancelFunc
	probes sync.WaitGroup

	mu      sync.Mutex // guards timer, started, stopped
	timer   *time.Timer
	started bool
	stopped bool
}

// NewMonitor returns a stopped monitor of in that probes target (the
// health URI on the instance) through rt. rt should keep its own
// connections, apart from proxied traffic's; Stop closes its idle ones.
func NewMonitor(in *backend.Instance, target string, rt http.RoundTripper) *Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{instance: in, url: target, client: newClient(rt), ctx: ctx, cancel: cancel}
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
	m.timer = time.AfterFunc(rand.N(spread+1), m.round)
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
	if m.timer != nil {
		m.timer.Stop()
	}
	m.mu.Unlock()
	m.cancel()
	m.probes.Wait()
	m.client.CloseIdleConnections()
}

// round is one scheduled check: it arms the next one, then probes.
func (m *Monitor) round() {
	spec := m.spec.Load()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.probes.Add(1)
	m.timer.Reset(jitter(spec.Interval))
	m.mu.Unlock()
	defer m.probes.Done()

	in := m.instance
	if !in.TryStartCheck() {
		return
	}
	start := time.Now()
	err := Probe(m.ctx, m.client, m.url, spec)
	took := time.Since(start)
	if m.ctx.Err() != nil {
		// Stopped: the probe was cut short by us, so it says nothing
		// about the instance.
		in.AbandonCheck()
		return
	}
	in.ObserveCheck(took)
	in.FinishCheck(backend.Now(), err, spec.Passes, spec.Fails)
}

// jitter returns d ± 10%, at random.
func jitter(d time.Duration) time.Duration {
	spread := d / 5
	return d - spread/2 + rand.N(spread+1)
}
