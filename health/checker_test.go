package health_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/health"
)

// notifyCore passes entries to an observer core, then announces each one on
// a channel, so a test can await a log line instead of polling for it.
type notifyCore struct {
	zapcore.Core
	written chan<- observer.LoggedEntry
}

func (c notifyCore) With(fields []zapcore.Field) zapcore.Core {
	return notifyCore{c.Core.With(fields), c.written}
}

func (c notifyCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c notifyCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	err := c.Core.Write(e, fields)
	select {
	case c.written <- observer.LoggedEntry{Entry: e, Context: fields}:
	default: // more lines than any test expects: the counts will say so
	}
	return err
}

// newLogger returns a logger recording every line, and a channel receiving
// each line once written.
func newLogger() (*zap.Logger, *observer.ObservedLogs, <-chan observer.LoggedEntry) {
	core, logs := observer.New(zapcore.DebugLevel)
	written := make(chan observer.LoggedEntry, 64)
	return zap.New(notifyCore{core, written}), logs, written
}

// newInstance returns an instance for a test server's URL, with credentials
// added so that logs can be checked for redaction.
func newInstance(t *testing.T, serverURL string) *backend.Instance {
	t.Helper()
	u, err := url.Parse(withUserinfo(serverURL))
	if err != nil {
		t.Fatal(err)
	}
	return backend.New(u)
}

// run starts c.Run and returns a function that cancels it and waits for it
// to return, and a channel closed when it returns. The test's cleanup stops
// it too.
func run(t *testing.T, c *health.Checker) (stop func(), returned <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop, done
}

// receive waits for a value on ch, failing the test if abort is closed
// first (by Run returning, or a failure the test detects).
func receive[T any](t *testing.T, ch <-chan T, abort <-chan struct{}, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-abort:
		t.Fatalf("Run returned or the test failed while waiting for %s", what)
		panic("unreachable")
	}
}

// send hands v to ch, failing the test if abort is closed first (by Run
// returning, or a failure the test detects).
func send[T any](t *testing.T, ch chan<- T, v T, abort <-chan struct{}, what string) {
	t.Helper()
	select {
	case ch <- v:
	case <-abort:
		t.Fatalf("Run returned or the test failed while waiting for %s", what)
	}
}

func checkEntry(t *testing.T, e observer.LoggedEntry, level zapcore.Level, msg string, fields map[string]any) {
	t.Helper()
	if e.Level != level || e.Message != msg {
		t.Errorf("log line %s %q, want %s %q", e.Level, e.Message, level, msg)
	}
	got := e.ContextMap()
	if len(got) != len(fields) {
		t.Errorf("log line %q has fields %v, want %v", e.Message, got, fields)
	}
	for k, want := range fields {
		if got[k] != want {
			t.Errorf("log line %q: field %s = %v, want %v", e.Message, k, got[k], want)
		}
	}
}

// TestRunFirstRoundImmediately gives Run an interval no test waits for: any
// probe seen comes from the first round. Every target is probed in it, and
// a slow one delays none of the others.
func TestRunFirstRoundImmediately(t *testing.T) {
	hits := make(chan string, 8)
	end := make(chan struct{})
	answer := func(name string, code int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			hits <- name
			if code == 0 {
				<-end // the slow one: no answer while the test runs
				return
			}
			w.WriteHeader(code)
		}
	}
	slow := newServer(t, answer("slow", 0))
	failing := newServer(t, answer("failing", http.StatusServiceUnavailable))
	ok := newServer(t, answer("ok", http.StatusOK))
	closeAtEnd(t, end)

	logger, logs, written := newLogger()
	targets := []health.Target{
		{Instance: newInstance(t, slow.URL), URL: slow.URL + "/health"},
		{Instance: newInstance(t, failing.URL), URL: failing.URL + "/health"},
		{Instance: newInstance(t, ok.URL), URL: ok.URL + "/health"},
	}
	c := &health.Checker{
		App:      "shop",
		Targets:  targets,
		Interval: time.Hour,
		Timeout:  time.Hour,
		Client:   newClient(t),
		Logger:   logger,
	}
	stop, returned := run(t, c)

	seen := map[string]int{}
	for range 3 {
		seen[receive(t, hits, returned, "the first round's probes")]++
	}
	if want := map[string]int{"slow": 1, "failing": 1, "ok": 1}; !maps.Equal(seen, want) {
		t.Errorf("first round probed %v, want %v", seen, want)
	}

	// The failing instance is marked down while the slow probe still runs.
	e := receive(t, written, returned, "the failing instance's log line")
	checkEntry(t, e, zapcore.WarnLevel, "instance unhealthy", map[string]any{
		"app":      "shop",
		"instance": targets[1].Instance.String(),
		"reason":   "status 503",
	})
	if st := targets[1].Instance.Status(); st.Healthy || st.LastError != "status 503" || st.LastChecked.IsZero() {
		t.Errorf("failing instance after its check: %+v", st)
	}

	stop()
	if n := logs.Len(); n != 1 {
		t.Errorf("%d log lines, want 1: %v", n, logs.All())
	}
	if !targets[0].Instance.Healthy() || !targets[2].Instance.Healthy() {
		t.Error("an instance other than the failing one was marked unhealthy")
	}
	if len(hits) != 0 {
		t.Errorf("%d more probes after the first round, with a one-hour interval", len(hits))
	}
}

// TestRunLogsEachChangeOnce drives one instance through
// healthy → unhealthy → healthy with repeated answers in each state, each
// probe answered by the test, and checks that only the two changes are
// logged.
func TestRunLogsEachChangeOnce(t *testing.T) {
	codes := make(chan int)
	// Probes overlapping would take codes meant for others and leave the
	// test waiting for a line that never comes: fail instead.
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
	in := newInstance(t, srv.URL)
	logger, logs, written := newLogger()
	type change struct {
		in      *backend.Instance
		healthy bool
		reason  string
	}
	var (
		changesMu sync.Mutex
		changes   []change
	)
	c := &health.Checker{
		App:      "shop",
		Targets:  []health.Target{{Instance: in, URL: srv.URL + "/health"}},
		Interval: time.Millisecond,
		Timeout:  time.Hour,
		Client:   newClient(t),
		Logger:   logger,
		OnChange: func(_ context.Context, in *backend.Instance, healthy bool, reason string) {
			changesMu.Lock()
			defer changesMu.Unlock()
			changes = append(changes, change{in, healthy, reason})
		},
	}
	stop, returned := run(t, c)
	abort := make(chan struct{}) // Run returned, or probes overlapped
	go func() {
		defer close(abort)
		select {
		case <-returned:
		case <-overlap:
			t.Error("two probes of the instance ran at once")
		}
	}()
	answer := func(code int) { send(t, codes, code, abort, fmt.Sprintf("a probe to answer %d", code)) }

	// A probe is only sent once the previous one has been recorded (checks
	// never stack), so handing a code to a probe means the probe before it
	// was recorded.
	answer(http.StatusInternalServerError)
	down := receive(t, written, abort, "the unhealthy line")
	answer(http.StatusInternalServerError)
	answer(http.StatusServiceUnavailable)
	answer(http.StatusOK)
	up := receive(t, written, abort, "the healthy line")
	answer(http.StatusOK)
	answer(http.StatusNoContent)
	answer(http.StatusOK) // the 204 before it was recorded; this one may be abandoned
	stop()
	<-abort // closed once Run returned: no t.Error after the test ends

	checkEntry(t, down, zapcore.WarnLevel, "instance unhealthy", map[string]any{
		"app": "shop", "instance": in.String(), "reason": "status 500",
	})
	checkEntry(t, up, zapcore.InfoLevel, "instance healthy", map[string]any{
		"app": "shop", "instance": in.String(), "reason": "health check passed",
	})
	if n := logs.Len(); n != 2 {
		t.Errorf("%d log lines, want exactly 2 (one per change): %v", n, logs.All())
	}
	changesMu.Lock()
	if want := []change{{in, false, "status 500"}, {in, true, "health check passed"}}; !slices.Equal(changes, want) {
		t.Errorf("OnChange calls %v, want %v", changes, want)
	}
	changesMu.Unlock()
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "s3cr3t") {
				t.Errorf("log field %s = %q reveals the instance's password", f.Key, f.String)
			}
		}
	}
	if st := in.Status(); !st.Healthy || st.LastError != "" {
		t.Errorf("instance after recovering: %+v", st)
	}
}

// TestRunChecksNeverStack blocks every probe of one instance until the test
// releases it, while the probes of a second instance show rounds going by:
// a round starts at most one probe of an instance, and the next one only
// once the test has taken the previous one's tick, so of the
// roundsPerBlock ticks taken while a slow probe is blocked, all but the
// first come from rounds that started after it and had to skip the slow
// instance.
func TestRunChecksNeverStack(t *testing.T) {
	const (
		releases       = 4
		roundsPerBlock = 3
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

	logger, _, _ := newLogger()
	c := &health.Checker{
		App: "shop",
		Targets: []health.Target{
			{Instance: newInstance(t, slow.URL), URL: slow.URL + "/health"},
			{Instance: newInstance(t, fast.URL), URL: fast.URL + "/health"},
		},
		Interval: time.Millisecond,
		Timeout:  time.Hour,
		Client:   newClient(t),
		Logger:   logger,
	}
	stop, returned := run(t, c)

	for i := range releases {
		receive(t, arrived, returned, fmt.Sprintf("slow probe %d", i))
		for r := range roundsPerBlock {
			receive(t, ticks, returned, fmt.Sprintf("round %d while slow probe %d is blocked", r, i))
		}
		mu.Lock()
		hits, most := slowHits, maxActive
		mu.Unlock()
		if hits != i+1 || most != 1 {
			t.Fatalf("after %d rounds with slow probe %d blocked: %d probes sent to it, at most %d at once; want %d and 1",
				roundsPerBlock, i, hits, most, i+1)
		}
		send(t, release, struct{}{}, returned, fmt.Sprintf("slow probe %d to take its release", i))
	}
	stop()

	mu.Lock()
	defer mu.Unlock()
	if maxActive != 1 {
		t.Errorf("at most %d probes of one instance ran at once, want 1", maxActive)
	}
	if active != 0 {
		t.Errorf("%d probes still at the server after Run returned", active)
	}
}

// TestRunReturnsWithProbeBlocked cancels Run while a probe waits for an
// answer that does not come before the test ends. Run must return, and the
// cut-short check must leave the instance as it was and free to be checked.
func TestRunReturnsWithProbeBlocked(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*testing.T, *backend.Instance) // state before Run
	}{
		{name: "never checked", setup: func(*testing.T, *backend.Instance) {}},
		{name: "unhealthy from an earlier check", setup: func(t *testing.T, in *backend.Instance) {
			if !in.TryStartCheck() {
				t.Fatal("TryStartCheck = false on a new instance")
			}
			in.FinishCheck(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), errors.New("status 500"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			end := make(chan struct{})
			srv := newServer(t, func(http.ResponseWriter, *http.Request) {
				arrived <- struct{}{}
				<-end
			})
			closeAtEnd(t, end)

			in := newInstance(t, srv.URL)
			tt.setup(t, in)
			before := in.Status()

			logger, logs, _ := newLogger()
			c := &health.Checker{
				App:      "shop",
				Targets:  []health.Target{{Instance: in, URL: srv.URL + "/health"}},
				Interval: time.Hour,
				Timeout:  time.Hour,
				Client:   newClient(t),
				Logger:   logger,
			}
			stop, returned := run(t, c)
			receive(t, arrived, returned, "the probe")
			if in.TryStartCheck() {
				t.Fatal("TryStartCheck = true while Run's probe is in flight")
			}

			stop() // returns only once Run has

			select {
			case <-returned:
			default:
				t.Fatal("stop returned before Run")
			}
			if got := in.Status(); got != before {
				t.Errorf("the abandoned check changed the instance:\n got  %+v\n want %+v", got, before)
			}
			if !in.TryStartCheck() {
				t.Fatal("TryStartCheck = false after Run returned: the abandoned check still holds the instance")
			}
			in.AbandonCheck()
			if n := logs.Len(); n != 0 {
				t.Errorf("%d log lines for an abandoned check, want 0: %v", n, logs.All())
			}
		})
	}
}
