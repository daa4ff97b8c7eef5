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
	"crypto/tls"
	"math/rand/v2"
	"net/http"
	"net/url"
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
	http1    *Prober   // HTTP checks of http and https instances; nil for h2c
	rt       *rtProber // gRPC checks, and HTTP checks of h2c instances; nil without a Transport

	spec    atomic.Pointer[Spec]
	sharing atomic.Pointer[sharingBox]

	mu      sync.Mutex // guards started, stopped and probes.Add
	started bool
	stopped bool
	probes  sync.WaitGroup

	// Its place in the schedule, under schedule.mu.
	due   int64 // backend.Now time of the next round
	index int   // in the queue; -1 when not in it
}

// Target is what a monitor probes, and how.
type Target struct {
	// The health URL of HTTP checks (the instance's URL joined with the
	// health URI, on the health port), or the instance's URL for gRPC
	// checks: http, https or h2c.
	URL string
	// Dial dials the connections of HTTP checks of http and https
	// instances (nil: a net.Dialer); TLS is their TLS config (nil: the
	// system's roots and the URL's host name).
	Dial DialFunc
	TLS  *tls.Config
	// ViaTransport sends the checks through the instance's own transport,
	// given to Run, sharing its connections: for gRPC checks, and every
	// check of an h2c instance.
	ViaTransport bool
}

// NewMonitor returns a stopped monitor of in that probes t. A URL that
// cannot be probed fails every check with the reason.
func NewMonitor(in *backend.Instance, t Target) *Monitor {
	m := &Monitor{instance: in, index: -1}
	u, err := url.Parse(t.URL)
	switch {
	case err != nil:
	case t.ViaTransport:
		if u.Scheme == "h2c" {
			h := *u
			h.Scheme = "http"
			u = &h
		}
		m.rt = newRTProber(u)
		return m
	default:
		if m.http1, err = NewProber(t.URL, t.Dial, t.TLS); err == nil {
			return m
		}
	}
	m.http1 = &Prober{dial: failingDial(err)}
	return m
}

// prober returns the monitor's prober.
func (m *Monitor) prober() prober {
	if m.rt != nil {
		return m.rt
	}
	return m.http1
}

// prober is a kind of probe: raw HTTP/1.1 (Prober), or through the
// instance's transport (rtProber).
type prober interface {
	probe(spec *Spec, b *buffers) error
	abort()
	isAborted() bool
	Close()
}

// Run makes spec the monitor's Spec (and rt the transport of checks
// ViaTransport) and, the first time, starts probing:
// the first probe comes after a random delay of up to the interval (at
// most two seconds), each next one an interval (±10%) after the one
// before. A probe still running when the next is due is not stacked with
// another (see backend.Instance.TryStartCheck); that round is skipped.
func (m *Monitor) Run(spec *Spec, rt http.RoundTripper) {
	if m.rt != nil && rt != nil {
		m.rt.transport.Store(&rt)
	}
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
	for _, p := range m.probers() {
		p.abort()
	}
	m.probes.Wait()
	for _, p := range m.probers() {
		p.Close()
	}
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
	sh := m.sharing.Load()
	if sh != nil && !sh.s.ShouldProbe() {
		return // others probe it, and their verdicts are fresh
	}
	if !in.TryStartCheck() {
		return
	}
	spec := m.spec.Load()
	p := m.prober()
	start := time.Now()
	err := p.probe(spec, b)
	took := time.Since(start)
	if p.isAborted() {
		// Stopped: the probe was cut short by us, so it says nothing
		// about the instance.
		in.AbandonCheck()
		return
	}
	probesSent.Add(1)
	in.ObserveCheck(took)
	in.FinishCheck(backend.Now(), err, spec.Passes, spec.Fails)
	if sh != nil {
		sh.s.Probed(err)
	}
}

// Sharing shares the checks of an instance with other load balancers (a
// fleet, see package fleet): round by round it says whether this process
// probes the instance, and it hears the outcome of every probe this
// process makes.
type Sharing interface {
	// ShouldProbe reports whether this process probes the instance in
	// this round; false skips the round (the instance's health then
	// follows what others find). It is called by a worker of the
	// schedule, and must not block.
	ShouldProbe() bool
	// Probed is told that a probe this process made ended with err (nil:
	// it passed), once the instance's state has taken it in.
	Probed(err error)
}

type sharingBox struct{ s Sharing }

// Share makes s decide, from the next round on, whether the monitor
// probes; nil makes it probe every round (the default).
func (m *Monitor) Share(s Sharing) {
	if s == nil {
		m.sharing.Store(nil)
		return
	}
	m.sharing.Store(&sharingBox{s})
}

// probesSent counts the probes this process has sent.
var probesSent atomic.Uint64

// ProbesSent returns the number of health probes this process has sent.
func ProbesSent() uint64 { return probesSent.Load() }

// NodeHeader is the header a probe names the load balancer that sends it
// in (Spec.Node), so that a backend can tell the nodes of a fleet apart.
const NodeHeader = "X-Lb-Node"

// probers returns the monitor's probers.
func (m *Monitor) probers() []prober {
	var ps []prober
	if m.http1 != nil {
		ps = append(ps, m.http1)
	}
	if m.rt != nil {
		ps = append(ps, m.rt)
	}
	return ps
}

// interval is the time to the monitor's next round.
func (m *Monitor) interval() time.Duration { return jitter(m.spec.Load().Interval) }

// jitter returns d ± 10%, at random.
func jitter(d time.Duration) time.Duration {
	spread := d / 5
	return d - spread/2 + rand.N(spread+1)
}
