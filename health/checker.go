// Package health checks backend instances actively: it asks each one for a
// health URI on an interval and feeds the answers to the instance's state
// machine (backend.Instance.FinishCheck), which applies the streaks.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// maxBodyRead bounds how much of a probe's response body is read: matched
// against Spec.Body, or discarded so the connection can be reused.
const maxBodyRead = 64 << 10

// firstProbeSpread bounds the random delay of an instance's first probe,
// so that a config with many instances does not probe them all at once,
// nor wait long for a first verdict.
const firstProbeSpread = 2 * time.Second

// Spec is how an app checks its instances.
type Spec struct {
	// Interval is the time between two checks of an instance; each is
	// jittered by up to a tenth of it either way.
	Interval time.Duration
	// Timeout bounds each probe, from dial to the end of the body read.
	Timeout time.Duration
	// Method of the probes; "" means GET.
	Method string
	// Headers sent with each probe; a "Host" value sets the Host header.
	Headers http.Header
	// Port the probes go to, 0 for the instance's.
	Port int
	// Status holds the statuses of a passing check.
	Status backend.StatusSet
	// Body, if set, must match the first 64 KiB of the response body.
	Body *regexp.Regexp
	// Passes and Fails are the consecutive checks that bring an instance
	// back or take it out.
	Passes, Fails int
}

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
	return &Monitor{instance: in, url: target, client: NewClient(rt), ctx: ctx, cancel: cancel}
}

// active counts the monitors that have started and not stopped.
var active atomic.Int64

// Active returns the number of monitors probing now, in the process: one
// per instance state with active health checks in a running config.
func Active() int { return int(active.Load()) }

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
	active.Add(1)
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
	if m.started && !m.stopped {
		active.Add(-1)
	}
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

// NewClient returns a client for probes on the given transport. It never
// follows a redirect, so a probe cannot be sent to another host: a 3xx
// answer is simply not healthy (unless the Spec's statuses say it is).
func NewClient(rt http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: rt,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Probe sends one check to target as spec says, and returns nil if the
// answer has one of spec's statuses (2xx if it has none) and a body
// matching spec's, within spec's timeout. The error otherwise says why,
// without the URL (callers know it, and it may carry credentials).
func Probe(ctx context.Context, client *http.Client, target string, spec *Spec) error {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return err
	}
	for name, values := range spec.Headers {
		if http.CanonicalHeaderKey(name) == "Host" {
			if len(values) > 0 {
				req.Host = values[0]
			}
			continue
		}
		req.Header[http.CanonicalHeaderKey(name)] = values
	}
	resp, err := client.Do(req)
	if err != nil {
		return probeError(err, spec.Timeout)
	}
	defer resp.Body.Close()
	var body []byte
	if spec.Body != nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, maxBodyRead))
	} else {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyRead))
	}
	if !statusOK(spec, resp.StatusCode) {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if err != nil {
		return fmt.Errorf("reading the body: %w", probeError(err, spec.Timeout))
	}
	if spec.Body != nil && !spec.Body.Match(body) {
		return fmt.Errorf("body does not match %q", spec.Body.String())
	}
	return nil
}

func statusOK(spec *Spec, code int) bool {
	if spec.Status.Empty() {
		return code >= 200 && code <= 299
	}
	return spec.Status.Has(code)
}

// probeError makes a probe's transport error short: no URL, and a
// timeout said as such.
func probeError(err error, timeout time.Duration) error {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		err = uerr.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	return err
}
