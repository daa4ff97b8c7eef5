package health_test

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/health"
)

// newInstance returns an instance for a test server's URL, with credentials
// added so that reasons can be checked for redaction, and a channel
// receiving every change of its state.
func newInstance(t *testing.T, serverURL string) (*backend.Instance, <-chan backend.Change) {
	t.Helper()
	u, err := url.Parse(withUserinfo(serverURL))
	if err != nil {
		t.Fatal(err)
	}
	in := backend.New(u, 1, &backend.Policy{}, backend.Now())
	t.Cleanup(in.Close)
	changes := make(chan backend.Change, 64)
	in.SetOnChange(func(c backend.Change) {
		select {
		case changes <- c:
		default: // more changes than any test expects: the counts will say so
		}
	})
	return in, changes
}

// newMonitor returns a monitor of in probing path on srv, stopped when the
// test ends.
func newMonitor(t *testing.T, in *backend.Instance, srv string, path string) *health.Monitor {
	t.Helper()
	m := health.NewMonitor(in, health.Target{URL: withUserinfo(srv) + path})
	t.Cleanup(m.Stop)
	return m
}

// receive waits for a value on ch, failing the test if abort is closed
// first (by a failure the test detects).
func receive[T any](t *testing.T, ch <-chan T, abort <-chan struct{}, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-abort:
		t.Fatalf("the test failed while waiting for %s", what)
		panic("unreachable")
	}
}

// send hands v to ch, failing the test if abort is closed first (by a
// failure the test detects).
func send[T any](t *testing.T, ch chan<- T, v T, abort <-chan struct{}, what string) {
	t.Helper()
	select {
	case ch <- v:
	case <-abort:
		t.Fatalf("the test failed while waiting for %s", what)
	}
}

// TestMonitorFirstRound starts monitors of many instances, one after the
// other, with an interval no test waits for (so that every probe seen is
// a first one): their first probes come at random times within two
// seconds, not all at once in the order the monitors started. (Were the
// first delay up to the interval, the test would wait for an hour.) Each
// probe's outcome goes to its instance, whose changes go to its OnChange.
func TestMonitorFirstRound(t *testing.T) {
	const n = 12
	hits := make(chan int, n)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		var i int
		if _, err := fmt.Sscanf(r.URL.Path, "/health/%d", &i); err != nil {
			t.Errorf("probe of %q", r.URL.Path)
		}
		hits <- i
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	spec := &health.Spec{Interval: time.Hour, Timeout: time.Minute, Passes: 1, Fails: 1}
	ins := make([]*backend.Instance, n)
	changes := make([]<-chan backend.Change, n)
	for i := range n {
		ins[i], changes[i] = newInstance(t, srv.URL)
		m := newMonitor(t, ins[i], srv.URL, fmt.Sprintf("/health/%d", i))
		if m.Running() {
			t.Fatal("a new monitor is running")
		}
		m.Run(spec, nil)
		if !m.Running() {
			t.Fatal("a monitor is not running after Run")
		}
	}

	var order []int
	for range n {
		order = append(order, <-hits)
	}
	seen := slices.Sorted(slices.Values(order))
	if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}; !slices.Equal(seen, want) {
		t.Fatalf("first probes of instances %v, want one of each of %v", seen, want)
	}
	// In the order the monitors started, all n! orders equally likely:
	// that one is the one seen about once in 500 million runs.
	if slices.IsSorted(order) {
		t.Errorf("first probes came in the order the monitors started (%v): not spread", order)
	}
	for i, in := range ins {
		c := <-changes[i]
		if c.Instance != in || c.Event != backend.EventUnhealthy || c.Reason != "status 503" {
			t.Errorf("instance %d: change %+v, want %s for %q", i, c, backend.EventUnhealthy, "status 503")
		}
		if st := in.Status(); st.Healthy || st.LastError != "status 503" || st.LastChecked.IsZero() {
			t.Errorf("instance %d after its check: %+v", i, st)
		}
	}
	if len(hits) != 0 {
		t.Errorf("%d more probes after the first round, with a one-hour interval", len(hits))
	}
}

// TestMonitorReportsEachChangeOnce drives one instance through
// healthy → unhealthy → healthy with streaks of two, each probe answered
// by the test, and checks that only the two changes are reported.
func TestMonitorReportsEachChangeOnce(t *testing.T) {
	codes := make(chan int)
	// Probes overlapping would take codes meant for others: fail instead.
	var active atomic.Int32
	overlap := make(chan struct{})
	var overlapOnce sync.Once
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		defer active.Add(-1)
		if active.Add(1) > 1 {
			overlapOnce.Do(func() { close(overlap) })
		}
		select {
		case code := <-codes:
			w.WriteHeader(code)
		case <-r.Context().Done():
		}
	})
	in, changes := newInstance(t, srv.URL)
	m := newMonitor(t, in, srv.URL, "/health")
	m.Run(&health.Spec{Interval: time.Millisecond, Timeout: time.Hour, Passes: 2, Fails: 2}, nil)
	answer := func(code int) { send(t, codes, code, overlap, fmt.Sprintf("a probe to answer %d", code)) }

	// A probe is only sent once the previous one has been recorded (checks
	// never stack), so handing a code to a probe means the one before it
	// was recorded, its change reported.
	for _, code := range []int{500, 200, 500, 503, 500} {
		answer(code)
	}
	down := receive(t, changes, overlap, "the unhealthy change")
	for _, code := range []int{200, 500, 200, 200, 204} {
		answer(code)
	}
	up := receive(t, changes, overlap, "the healthy change")
	answer(http.StatusOK) // the 204 before it was recorded; this one may be abandoned
	m.Stop()

	if want := (backend.Change{Instance: in, Event: backend.EventUnhealthy, Reason: "status 503"}); down != want {
		t.Errorf("first change %+v, want %+v", down, want)
	}
	if want := (backend.Change{Instance: in, Event: backend.EventHealthy, Reason: "health check passed"}); up != want {
		t.Errorf("second change %+v, want %+v", up, want)
	}
	if n := len(changes); n != 0 {
		t.Errorf("%d more changes, want exactly 2 (one per change of state)", n)
	}
	if st := in.Status(); !st.Healthy || st.LastError != "" || strings.Contains(st.Reason, "s3cr3t") {
		t.Errorf("instance after recovering: %+v", st)
	}
	if m := in.Metrics(); m.ChecksPassed+m.ChecksFailed < 10 || m.CheckDuration.Count != m.ChecksPassed+m.ChecksFailed {
		t.Errorf("metrics: %d checks passed, %d failed, %d durations; want 10 or 11 checks, each with its duration",
			m.ChecksPassed, m.ChecksFailed, m.CheckDuration.Count)
	}
}

// TestMonitorChecksNeverStack blocks every probe of one instance until the
// test releases it, while the probes of a second instance, checked as
// often, show the time go by: of the ticks taken while a slow probe is
// blocked, all but the first come from rounds that started after it, more
// than an interval apart, so rounds of the slow instance fell due while
// it was blocked. They must not send it another probe.
// (monitor_internal_test.go checks a skipped round deterministically.)
func TestMonitorChecksNeverStack(t *testing.T) {
	const (
		releases       = 4
		roundsPerBlock = 4
	)
	var (
		mu        sync.Mutex
		active    int // probes of the slow instance at its server now
		maxActive int
		slowHits  int
	)
	arrived := make(chan struct{})
	release := make(chan struct{})
	slow := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		active++
		slowHits++
		maxActive = max(maxActive, active)
		mu.Unlock()
		defer func() {
			mu.Lock()
			active--
			mu.Unlock()
		}()
		select {
		case arrived <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ticks := make(chan struct{})
	fast := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case ticks <- struct{}{}:
		case <-r.Context().Done():
		}
	})

	spec := &health.Spec{Interval: time.Millisecond, Timeout: time.Hour, Passes: 1, Fails: 1}
	slowIn, _ := newInstance(t, slow.URL)
	fastIn, _ := newInstance(t, fast.URL)
	slowMon := newMonitor(t, slowIn, slow.URL, "/health")
	fastMon := newMonitor(t, fastIn, fast.URL, "/health")
	slowMon.Run(spec, nil)
	fastMon.Run(spec, nil)
	never := make(chan struct{})

	for i := range releases {
		receive(t, arrived, never, fmt.Sprintf("slow probe %d", i))
		for r := range roundsPerBlock {
			receive(t, ticks, never, fmt.Sprintf("round %d while slow probe %d is blocked", r, i))
		}
		if slowIn.TryStartCheck() {
			t.Fatal("TryStartCheck = true while a probe of the instance is blocked")
		}
		mu.Lock()
		hits, most := slowHits, maxActive
		mu.Unlock()
		if hits != i+1 || most != 1 {
			t.Fatalf("after %d rounds with slow probe %d blocked: %d probes sent to it, at most %d at once; want %d and 1",
				roundsPerBlock, i, hits, most, i+1)
		}
		send(t, release, struct{}{}, never, fmt.Sprintf("slow probe %d to take its release", i))
	}
	slowMon.Stop()
	fastMon.Stop()

	mu.Lock()
	defer mu.Unlock()
	if maxActive != 1 {
		t.Errorf("at most %d probes of one instance ran at once, want 1", maxActive)
	}
}

// TestMonitorStopCutsProbeShort stops a monitor while its probe waits for
// an answer that does not come before the test ends. Stop must cut the
// probe short and return, and the cut-short check must leave the instance
// as it was and free to be checked.
func TestMonitorStopCutsProbeShort(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*testing.T, *backend.Instance) // state before Run
	}{
		{name: "never checked", setup: func(*testing.T, *backend.Instance) {}},
		{name: "unhealthy from an earlier check", setup: func(t *testing.T, in *backend.Instance) {
			if !in.TryStartCheck() {
				t.Fatal("TryStartCheck = false on a new instance")
			}
			in.FinishCheck(backend.Now(), fmt.Errorf("status 500"), 1, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			cut := make(chan struct{}, 1)
			end := make(chan struct{})
			srv := newServer(t, func(_ http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				select {
				case <-r.Context().Done():
					cut <- struct{}{}
				case <-end:
				}
			})
			closeAtEnd(t, end)

			in, changes := newInstance(t, srv.URL)
			tt.setup(t, in)
			for len(changes) > 0 {
				<-changes // the setup's
			}
			before := in.Status()

			m := newMonitor(t, in, srv.URL, "/health")
			m.Run(&health.Spec{Interval: time.Millisecond, Timeout: time.Hour, Passes: 1, Fails: 1}, nil)
			<-arrived
			if in.TryStartCheck() {
				t.Fatal("TryStartCheck = true while the monitor's probe is in flight")
			}

			m.Stop() // returns only once the probe has ended
			<-cut    // the server saw the request go

			if got := in.Status(); got != before {
				t.Errorf("the abandoned check changed the instance:\n got  %+v\n want %+v", got, before)
			}
			if !in.TryStartCheck() {
				t.Fatal("TryStartCheck = false after Stop: the abandoned check still holds the instance")
			}
			in.AbandonCheck()
			if n := len(changes); n != 0 {
				t.Errorf("%d changes for an abandoned check, want 0: %v", n, <-changes)
			}
			if m.Running() {
				t.Error("running after Stop")
			}
			m.Stop() // again: nothing to do
			m.Run(&health.Spec{Interval: time.Millisecond, Timeout: time.Hour}, nil)
			if m.Running() {
				t.Error("running after a Run following Stop")
			}
		})
	}
}

// TestMonitorRunChangesSpec: a second Run changes the Spec of the probes
// to come, on the schedule already running.
func TestMonitorRunChangesSpec(t *testing.T) {
	methods := make(chan string)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case methods <- r.Method:
		case <-r.Context().Done():
		}
	})
	in, _ := newInstance(t, srv.URL)
	m := newMonitor(t, in, srv.URL, "/health")
	m.Run(&health.Spec{Interval: time.Millisecond, Timeout: time.Hour, Passes: 1, Fails: 1}, nil)
	if got := <-methods; got != http.MethodGet {
		t.Fatalf("first probe %s, want GET", got)
	}
	m.Run(&health.Spec{Interval: time.Millisecond, Timeout: time.Hour, Method: http.MethodHead, Passes: 1, Fails: 1}, nil)
	if !m.Running() {
		t.Error("not running after a second Run")
	}
	// A round under way when the Spec changed may still send a GET;
	// the rounds after it send HEADs.
	for <-methods != http.MethodHead {
	}
}
