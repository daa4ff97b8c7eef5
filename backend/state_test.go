package backend

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// The state machine's tests drive it with a clock of their own: times are
// plain int64s of Now's base. The only real-clock parts are the timers
// that end an ejection and step slow start; the tests call what they
// would (openTrial, StepRamp) themselves, and use durations long enough
// that no timer fires while they run (and Close every instance at the
// end). Like the other tests of this package, they do not run in
// parallel: Pool caches follow a process-wide epoch.

const (
	minute = int64(time.Minute)
	hour   = int64(time.Hour)

	// t0 is when the tests' instances are made: any time will do.
	t0 = 5 * hour

	failDuration    = 10 * time.Minute
	maxFailDuration = 80 * time.Minute
	slowStart       = 90 * time.Minute // a step every 10 minutes
)

// recorder collects the changes an instance reports.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) add(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

// take returns the changes reported since the last take.
func (r *recorder) take() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.changes
	r.changes = nil
	return c
}

// events returns the events of changes, to compare and print them.
func events(changes []Change) []Event {
	out := make([]Event, len(changes))
	for i, c := range changes {
		out[i] = c.Event
	}
	return out
}

var port = 30000

// newTest returns a configured instance of weight w following p from t0
// (not ramping up: see StartSlowStart), its changes recorded, closed when
// the test ends.
func newTest(t *testing.T, w int, p *Policy) (*Instance, *recorder) {
	t.Helper()
	port++
	u, err := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	in := New(u, w, p, t0)
	if !in.Configure(w, p, t0) {
		t.Fatal("first Configure of a new instance: first = false")
	}
	rec := &recorder{}
	in.SetOnChange(rec.add)
	t.Cleanup(in.Close)
	return in, rec
}

// passive returns a policy ejecting after maxFails failures.
func passive(maxFails int) *Policy {
	return &Policy{
		MaxFails:          maxFails,
		FailDuration:      failDuration,
		MaxFailDuration:   maxFailDuration,
		MaxEjectedPercent: 100,
	}
}

// check runs a health check of in at now.
func check(t *testing.T, in *Instance, now int64, err error, passes, fails int) {
	t.Helper()
	if !in.TryStartCheck() {
		t.Fatal("TryStartCheck = false with no check running")
	}
	in.FinishCheck(now, err, passes, fails)
}

// wantChanges checks the changes rec recorded since it was last asked.
func wantChanges(t *testing.T, rec *recorder, in *Instance, want ...Change) {
	t.Helper()
	got := rec.take()
	if len(got) != len(want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	for i := range got {
		w := want[i]
		w.Instance = in
		if got[i] != w {
			t.Errorf("change %d = %+v, want %+v", i, got[i], w)
		}
	}
}

// eject ejects in at now with MaxFails failures through a pool of its
// own, and returns when the ejection ends.
func eject(t *testing.T, in *Instance, now int64) int64 {
	t.Helper()
	p := NewPool(in)
	for range in.Policy().MaxFails {
		p.Failed(in, now, "status 502", false)
	}
	if in.flags.Load()&flagEjected == 0 {
		t.Fatalf("not ejected after %d failures", in.Policy().MaxFails)
	}
	return in.st.ejectedUntil
}

// trial opens the trial of in's ejection, as its timer would, and takes
// it.
func trial(t *testing.T, in *Instance) {
	t.Helper()
	in.openTrial(in.st.ejectedUntil)
	if ok, trial := in.Admit(false); !ok || !trial {
		t.Fatalf("Admit after openTrial = %v, %v; want the trial", ok, trial)
	}
}

func TestAvailableFlags(t *testing.T) {
	tests := []struct {
		flags uint32
		want  bool
	}{
		{0, true},
		{flagUnhealthy, false},
		{flagEjected, false},
		{flagEjected | flagTrial, true},
		{flagDraining, false},
		{flagDraining | flagEjected | flagTrial, false},
		{flagUnhealthy | flagEjected | flagTrial, false},
		{flagTrial, true}, // never set without flagEjected; harmless
	}
	for _, tt := range tests {
		if got := available(tt.flags); got != tt.want {
			t.Errorf("available(%04b) = %v, want %v", tt.flags, got, tt.want)
		}
	}
}

func TestActiveChecks(t *testing.T) {
	type step struct {
		pass    bool
		want    Event // "" for no change
		healthy bool  // after the check
	}
	pass := func(want Event, healthy bool) step { return step{true, want, healthy} }
	fail := func(want Event, healthy bool) step { return step{false, want, healthy} }
	tests := []struct {
		name           string
		unhealthy      bool // Policy.InitiallyUnhealthy
		passes, fails  int
		steps          []step
		wantPasses     int
		wantFails      int
		wantReasonLast string
	}{
		{
			name:      "initially unhealthy: the first pass is enough, even with passes 3",
			unhealthy: true, passes: 3, fails: 3,
			steps:      []step{pass(EventHealthy, true), pass("", true)},
			wantPasses: 2, wantReasonLast: "health check passed",
		},
		{
			name:      "initially unhealthy: after a first failure, the streak is needed",
			unhealthy: true, passes: 3, fails: 3,
			steps: []step{
				fail("", false), pass("", false), pass("", false), pass(EventHealthy, true),
			},
			wantPasses: 3, wantReasonLast: "health check passed",
		},
		{
			name:   "initially healthy: passes change nothing",
			passes: 2, fails: 2,
			steps:      []step{pass("", true), pass("", true), pass("", true)},
			wantPasses: 3, wantReasonLast: "added",
		},
		{
			name:   "fall after fails in a row",
			passes: 2, fails: 3,
			steps:     []step{fail("", true), fail("", true), fail(EventUnhealthy, false), fail("", false)},
			wantFails: 4, wantReasonLast: "status 503",
		},
		{
			name:   "a pass resets the fail streak",
			passes: 2, fails: 3,
			steps: []step{
				fail("", true), fail("", true), pass("", true),
				fail("", true), fail("", true), fail(EventUnhealthy, false),
			},
			wantFails: 3, wantReasonLast: "status 503",
		},
		{
			name:   "rise after passes in a row; a failure resets the pass streak",
			passes: 2, fails: 1,
			steps: []step{
				fail(EventUnhealthy, false), pass("", false), fail("", false),
				pass("", false), pass(EventHealthy, true),
			},
			wantPasses: 2, wantReasonLast: "health check passed",
		},
		{
			name:   "streaks of one: every flip is a change",
			passes: 1, fails: 1,
			steps: []step{
				fail(EventUnhealthy, false), pass(EventHealthy, true),
				fail(EventUnhealthy, false), fail("", false), pass(EventHealthy, true),
			},
			wantPasses: 1, wantReasonLast: "health check passed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, rec := newTest(t, 1, &Policy{InitiallyUnhealthy: tt.unhealthy})
			if got := in.Healthy(); got == tt.unhealthy {
				t.Fatalf("new instance: Healthy() = %v", got)
			}
			now := t0
			lastChange := int64(t0)
			for i, s := range tt.steps {
				now += minute
				var err error
				if !s.pass {
					err = errors.New("status 503")
				}
				// A latency estimate from before the instance went down
				// is dropped when it comes back.
				in.latency.Store(42)
				check(t, in, now, err, tt.passes, tt.fails)
				got := rec.take()
				var want []Event
				if s.want != "" {
					want = []Event{s.want}
					lastChange = now
				}
				if !slices.Equal(events(got), want) {
					t.Fatalf("check %d (pass %v): changes %v, want %v", i, s.pass, events(got), want)
				}
				if len(got) == 1 {
					reason := "health check passed"
					if !s.pass {
						reason = "status 503"
					}
					if w := (Change{Instance: in, Event: s.want, Reason: reason}); got[0] != w {
						t.Errorf("check %d: change %+v, want %+v", i, got[0], w)
					}
					if s.want == EventHealthy && in.latency.Load() != 0 {
						t.Errorf("check %d: the latency estimate survived the recovery", i)
					}
				}
				if in.Healthy() != s.healthy || in.Available() != s.healthy {
					t.Errorf("check %d: Healthy() %v, Available() %v, want %v", i, in.Healthy(), in.Available(), s.healthy)
				}
			}
			st := in.Status()
			wantState := StateHealthy
			if !in.Healthy() {
				wantState = StateUnhealthy
			}
			if st.State != wantState || st.ConsecutivePasses != tt.wantPasses || st.ConsecutiveFails != tt.wantFails {
				t.Errorf("Status: state %q, passes %d, fails %d; want %q, %d, %d",
					st.State, st.ConsecutivePasses, st.ConsecutiveFails, wantState, tt.wantPasses, tt.wantFails)
			}
			if st.Reason != tt.wantReasonLast || !st.Since.Equal(wallTime(lastChange)) {
				t.Errorf("Status: reason %q since %v, want %q since %v", st.Reason, st.Since, tt.wantReasonLast, wallTime(lastChange))
			}
		})
	}
}

func TestEjectAfterMaxFails(t *testing.T) {
	tests := []struct {
		name     string
		maxFails int
		outcomes string // F: a failed request, S: a good one
		ejectAt  int    // index of the outcome that ejects; -1: none
	}{
		{name: "max_fails 3", maxFails: 3, outcomes: "FFF", ejectAt: 2},
		{name: "max_fails 1", maxFails: 1, outcomes: "F", ejectAt: 0},
		{name: "a success resets the count", maxFails: 3, outcomes: "FFSFFSFF", ejectAt: -1},
		{name: "counted again after a success", maxFails: 3, outcomes: "FFSFFF", ejectAt: 5},
		{name: "max_fails 0 never ejects", maxFails: 0, outcomes: "FFFFFFFFFFFFFFFFFFFF", ejectAt: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, rec := newTest(t, 1, passive(tt.maxFails))
			p := NewPool(in)
			now := t0
			for i, o := range tt.outcomes {
				now += minute
				if o == 'S' {
					in.Succeeded(false, now)
				} else {
					p.Failed(in, now, "status 502", false)
				}
				if i != tt.ejectAt {
					wantChanges(t, rec, in)
					if !in.Healthy() {
						t.Fatalf("outcome %d: ejected", i)
					}
					continue
				}
				wantChanges(t, rec, in, Change{
					Event:  EventEjected,
					Reason: fmt.Sprintf("%d consecutive failures, the last: status 502", tt.maxFails),
					Until:  wallTime(now + int64(failDuration)),
				})
				st := in.Status()
				if st.State != StateEjected || st.Healthy || in.Available() || st.PassiveFails != 0 ||
					!st.EjectedUntil.Equal(wallTime(now+int64(failDuration))) || !st.Since.Equal(wallTime(now)) {
					t.Errorf("ejected: %+v", st)
				}
				if got := in.Metrics().Ejections; got != 1 {
					t.Errorf("Metrics().Ejections = %d, want 1", got)
				}
				if slices.Contains(p.Available(), in) {
					t.Error("an ejected instance is in Pool.Available")
				}
				// More failures of requests sent before the ejection
				// change nothing.
				p.Failed(in, now, "status 502", false)
				wantChanges(t, rec, in)
				if got := in.st.ejectedUntil; got != now+int64(failDuration) {
					t.Errorf("a failure while ejected moved the end to %d", got)
				}
				return
			}
			if st := in.Status(); st.State != StateHealthy || st.PassiveFails != trailingFails(tt.outcomes) {
				t.Errorf("not ejected: state %q, passive fails %d, want %q, %d",
					st.State, st.PassiveFails, StateHealthy, trailingFails(tt.outcomes))
			}
		})
	}
}

func trailingFails(outcomes string) int {
	n := 0
	for i := len(outcomes) - 1; i >= 0 && outcomes[i] == 'F'; i-- {
		n++
	}
	return n
}

func TestEjectionTime(t *testing.T) {
	s := time.Second
	tests := []struct {
		name      string
		fail, max time.Duration
		want      []time.Duration // for k = 0, 1, ...
	}{
		{name: "doubling up to the cap", fail: 10 * s, max: 5 * time.Minute,
			want: []time.Duration{10 * s, 20 * s, 40 * s, 80 * s, 160 * s, 300 * s, 300 * s, 300 * s}},
		{name: "cap a power of two of the first", fail: 10 * s, max: 40 * s,
			want: []time.Duration{10 * s, 20 * s, 40 * s, 40 * s}},
		{name: "cap between two doublings", fail: 10 * s, max: 30 * s,
			want: []time.Duration{10 * s, 20 * s, 30 * s, 30 * s}},
		{name: "cap the first", fail: 10 * s, max: 10 * s,
			want: []time.Duration{10 * s, 10 * s, 10 * s}},
		{name: "cap below the first caps nothing", fail: 10 * s, max: 5 * s,
			want: []time.Duration{10 * s, 10 * s, 10 * s}},
		{name: "no cap set", fail: 10 * s,
			want: []time.Duration{10 * s, 10 * s}},
		{name: "no overflow", fail: time.Hour, max: 1 << 62,
			want: []time.Duration{time.Hour, 2 * time.Hour, 4 * time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Policy{FailDuration: tt.fail, MaxFailDuration: tt.max}
			for k, want := range tt.want {
				if got := ejectionTime(p, k); got != want {
					t.Errorf("ejectionTime(k=%d) = %v, want %v", k, got, want)
				}
			}
			if got := ejectionTime(p, 1000); got != max(tt.max, tt.fail) {
				t.Errorf("ejectionTime(k=1000) = %v, want %v", got, max(tt.max, tt.fail))
			}
		})
	}
}

// TestEjectionDoubling fails trial after trial: each ejection lasts twice
// as long as the one before, up to MaxFailDuration.
func TestEjectionDoubling(t *testing.T) {
	in, rec := newTest(t, 1, passive(2))
	p := NewPool(in)
	now := t0
	until := eject(t, in, now)
	wantChanges(t, rec, in, Change{
		Event: EventEjected, Reason: "2 consecutive failures, the last: status 502",
		Until: wallTime(now + int64(failDuration)),
	})
	for i, want := range []time.Duration{20, 40, 80, 80, 80} {
		want *= time.Minute
		now = until
		trial(t, in)
		p.Failed(in, now, "status 503", true)
		wantChanges(t, rec, in, Change{
			Event: EventEjected, Reason: "trial request failed: status 503",
			Until: wallTime(now + int64(want)),
		})
		until = in.st.ejectedUntil
		if got := time.Duration(until - now); got != want {
			t.Errorf("ejection %d lasts %v, want %v", i+2, got, want)
		}
		if got, want := in.Metrics().Ejections, uint64(i+2); got != want {
			t.Errorf("Metrics().Ejections = %d, want %d", got, want)
		}
	}
}

// TestEjectionUnwinding: the doubling unwinds one step for each
// FailDuration an instance stayed in since its last ejection ended.
func TestEjectionUnwinding(t *testing.T) {
	fd := int64(failDuration)
	tests := []struct {
		name      string
		ejections int   // consecutive ejections before it came back
		stayed    int64 // how long it stayed in
		want      time.Duration
	}{
		{name: "back at once after one", ejections: 1, stayed: 0, want: 20 * time.Minute},
		{name: "just under a step after one", ejections: 1, stayed: fd - 1, want: 20 * time.Minute},
		{name: "a step after one", ejections: 1, stayed: fd, want: 10 * time.Minute},
		{name: "a step after three", ejections: 3, stayed: fd, want: 40 * time.Minute},
		{name: "two steps after three", ejections: 3, stayed: 2 * fd, want: 20 * time.Minute},
		{name: "long after three", ejections: 3, stayed: 100 * fd, want: 10 * time.Minute},
		{name: "at the cap, back at once", ejections: 6, stayed: 0, want: 80 * time.Minute},
		{name: "at the cap, three steps", ejections: 6, stayed: 3 * fd, want: 80 * time.Minute},
		{name: "at the cap, four steps", ejections: 6, stayed: 4 * fd, want: 40 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, rec := newTest(t, 1, passive(1))
			p := NewPool(in)
			now := t0
			until := eject(t, in, now)
			for range tt.ejections - 1 {
				now = until
				trial(t, in)
				p.Failed(in, now, "status 503", true)
				until = in.st.ejectedUntil
			}
			now = until
			trial(t, in)
			in.Succeeded(true, now)
			rec.take()
			now += tt.stayed
			p.Failed(in, now, "status 502", false)
			got := rec.take()
			if len(got) != 1 || got[0].Event != EventEjected {
				t.Fatalf("changes %v, want one ejection", events(got))
			}
			if d := got[0].Until.Sub(wallTime(now)); d != tt.want {
				t.Errorf("ejection lasts %v, want %v", d, tt.want)
			}
		})
	}
}

// TestTrial walks one ejection through its trial.
func TestTrial(t *testing.T) {
	type admit struct{ ok, trial bool }
	tests := []struct {
		name string
		run  func(t *testing.T, in *Instance, p *Pool, rec *recorder, until int64)
	}{
		{name: "no trial before the timer", run: func(t *testing.T, in *Instance, _ *Pool, _ *recorder, _ int64) {
			for _, panicking := range []bool{false, true} {
				ok, trial := in.Admit(panicking)
				if got := (admit{ok, trial}); got != (admit{panicking, false}) {
					t.Errorf("Admit(panicking %v) = %+v, want %+v", panicking, got, admit{panicking, false})
				}
			}
			if in.Available() {
				t.Error("Available() = true before the trial opened")
			}
		}},
		{name: "a stale timer opens nothing", run: func(t *testing.T, in *Instance, _ *Pool, _ *recorder, until int64) {
			in.openTrial(until - 1)
			in.openTrial(until + int64(failDuration))
			if ok, trial := in.Admit(false); ok || trial {
				t.Errorf("Admit after a stale openTrial = %v, %v; want false, false", ok, trial)
			}
		}},
		{name: "exactly one trial", run: func(t *testing.T, in *Instance, _ *Pool, rec *recorder, until int64) {
			in.openTrial(until)
			in.openTrial(until) // twice is once
			if !in.Available() || in.Status().State != StateEjected {
				t.Errorf("trial open: Available() %v, state %q; want true, %q", in.Available(), in.Status().State, StateEjected)
			}
			wantChanges(t, rec, in) // an open trial is no change of state
			for i, want := range []admit{{true, true}, {false, false}, {false, false}} {
				if ok, trial := in.Admit(false); (admit{ok, trial}) != want {
					t.Errorf("Admit %d = %v, %v; want %+v", i, ok, trial, want)
				}
			}
			if ok, trial := in.Admit(true); !ok || trial {
				t.Errorf("Admit in panic with the trial taken = %v, %v; want true, false", ok, trial)
			}
			if in.Available() {
				t.Error("Available() = true with the trial taken")
			}
			// The timer firing again while the trial runs opens no
			// second one.
			in.openTrial(until)
			if ok, _ := in.Admit(false); ok {
				t.Error("a second trial opened while the first runs")
			}
		}},
		{name: "the trial succeeds", run: func(t *testing.T, in *Instance, p *Pool, rec *recorder, until int64) {
			trial(t, in)
			in.Succeeded(true, until+minute)
			wantChanges(t, rec, in, Change{Event: EventHealthy, Reason: "trial request succeeded"})
			st := in.Status()
			if st.State != StateHealthy || !st.Healthy || !st.EjectedUntil.IsZero() || !in.Available() {
				t.Errorf("after the trial succeeded: %+v", st)
			}
			if !slices.Contains(p.Available(), in) {
				t.Error("not back in Pool.Available")
			}
			if ok, trial := in.Admit(false); !ok || trial {
				t.Errorf("Admit after the ejection = %v, %v; want true, false", ok, trial)
			}
		}},
		{name: "the trial fails", run: func(t *testing.T, in *Instance, p *Pool, rec *recorder, until int64) {
			trial(t, in)
			now := until + minute
			p.Failed(in, now, "status 500", true)
			wantChanges(t, rec, in, Change{
				Event: EventEjected, Reason: "trial request failed: status 500",
				Until: wallTime(now + 2*int64(failDuration)),
			})
			if ok, _ := in.Admit(false); ok || in.Available() {
				t.Error("re-ejected instance admitted")
			}
			in.openTrial(until) // the first ejection's timer: stale
			if ok, _ := in.Admit(false); ok {
				t.Error("the first ejection's timer opened the second's trial")
			}
			in.openTrial(in.st.ejectedUntil)
			if ok, trial := in.Admit(false); !ok || !trial {
				t.Errorf("Admit once the second ejection is over = %v, %v; want its trial", ok, trial)
			}
		}},
		{name: "an abandoned trial reopens", run: func(t *testing.T, in *Instance, _ *Pool, rec *recorder, until int64) {
			trial(t, in)
			in.AbandonTrial()
			wantChanges(t, rec, in)
			if !in.Available() || in.Status().State != StateEjected {
				t.Error("abandoned trial: not open again, or the ejection ended")
			}
			if ok, trial := in.Admit(false); !ok || !trial {
				t.Errorf("Admit after AbandonTrial = %v, %v; want the trial", ok, trial)
			}
		}},
		{name: "a good request that is not the trial ends nothing", run: func(t *testing.T, in *Instance, _ *Pool, rec *recorder, until int64) {
			in.Succeeded(false, until+minute) // sent before the ejection, or in panic
			wantChanges(t, rec, in)
			if in.Status().State != StateEjected {
				t.Error("a request other than the trial ended the ejection")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, rec := newTest(t, 1, passive(1))
			p := NewPool(in)
			until := eject(t, in, t0)
			rec.take()
			tt.run(t, in, p, rec, until)
		})
	}
}

// TestTrialOutcomeAfterEjectionEnded: a passing health check ends the
// ejection while its trial request runs, then the trial fails. The next
// ejection must still get its trial when its time is up.
func TestTrialOutcomeAfterEjectionEnded(t *testing.T) {
	in, rec := newTest(t, 1, passive(1))
	p := NewPool(in)
	until := eject(t, in, t0)
	trial(t, in)
	now := until + minute
	check(t, in, now, nil, 1, 1)
	wantChanges(t, rec, in, Change{Event: EventEjected,
		Reason: "1 consecutive failures, the last: status 502", Until: wallTime(until)},
		Change{Event: EventHealthy, Reason: "health check passed"})

	// The trial's failure now counts as any request's: one more
	// ejection, doubled since the instance came back a minute ago.
	p.Failed(in, now, "status 500", true)
	got := rec.take()
	if len(got) != 1 || got[0].Event != EventEjected {
		t.Fatalf("changes %v, want an ejection", events(got))
	}
	in.openTrial(in.st.ejectedUntil)
	if ok, trial := in.Admit(false); !ok || !trial {
		t.Errorf("Admit once the next ejection is over = %v, %v; want its trial", ok, trial)
	}
}

func TestChecksAndEjection(t *testing.T) {
	t.Run("a passing check ends an ejection early", func(t *testing.T) {
		in, rec := newTest(t, 1, passive(1))
		until := eject(t, in, t0)
		rec.take()
		check(t, in, t0+minute, nil, 3, 3)
		wantChanges(t, rec, in, Change{Event: EventHealthy, Reason: "health check passed"})
		if st := in.Status(); st.State != StateHealthy || !in.Available() {
			t.Errorf("after the check: %+v", st)
		}
		in.openTrial(until) // the ejection's timer, late
		if ok, trial := in.Admit(false); !ok || trial {
			t.Errorf("Admit = %v, %v after the ejection ended; want true, false", ok, trial)
		}
	})
	t.Run("a failing check ends none", func(t *testing.T) {
		in, rec := newTest(t, 1, passive(1))
		eject(t, in, t0)
		rec.take()
		check(t, in, t0+minute, errors.New("status 500"), 2, 2)
		wantChanges(t, rec, in)
		if st := in.Status(); st.State != StateEjected {
			t.Errorf("state %q, want %q", st.State, StateEjected)
		}
	})
	t.Run("unhealthy and ejected: one change when both end", func(t *testing.T) {
		in, rec := newTest(t, 1, passive(1))
		eject(t, in, t0)
		check(t, in, t0+minute, errors.New("status 500"), 1, 1)
		rec.take()
		if st := in.Status(); st.State != StateUnhealthy {
			t.Fatalf("state %q, want %q", st.State, StateUnhealthy)
		}
		check(t, in, t0+2*minute, nil, 1, 1)
		wantChanges(t, rec, in, Change{Event: EventHealthy, Reason: "health check passed"})
		if !in.Available() {
			t.Error("not available after the check")
		}
	})
	t.Run("unhealthy and ejected: no change before the pass streak", func(t *testing.T) {
		in, rec := newTest(t, 1, passive(1))
		eject(t, in, t0)
		check(t, in, t0+minute, errors.New("status 500"), 2, 1)
		rec.take()
		for i := range 2 {
			check(t, in, t0+int64(2+i)*minute, nil, 3, 1)
			wantChanges(t, rec, in)
			if st := in.Status(); st.State != StateUnhealthy || in.Available() {
				t.Fatalf("pass %d of 3: state %q, available %v", i+1, st.State, in.Available())
			}
		}
		check(t, in, t0+4*minute, nil, 3, 1)
		wantChanges(t, rec, in, Change{Event: EventHealthy, Reason: "health check passed"})
	})
	t.Run("a trial in panic while unhealthy: not back yet", func(t *testing.T) {
		in, rec := newTest(t, 1, passive(1))
		eject(t, in, t0)
		check(t, in, t0+minute, errors.New("status 500"), 1, 1)
		rec.take()
		trial(t, in)
		in.Succeeded(true, t0+2*minute)
		wantChanges(t, rec, in)
		if st := in.Status(); st.State != StateUnhealthy {
			t.Errorf("state %q, want %q", st.State, StateUnhealthy)
		}
	})
}

func TestMaxEjectedPercent(t *testing.T) {
	tests := []struct {
		n, percent int
		want       int
	}{
		{n: 4, percent: 50, want: 2},
		{n: 4, percent: 100, want: 4},
		{n: 4, percent: 0, want: 1}, // at least one may always be ejected
		{n: 4, percent: 10, want: 1},
		{n: 3, percent: 50, want: 1},
		{n: 10, percent: 25, want: 2},
		{n: 1, percent: 0, want: 1},
		{n: 2, percent: 100, want: 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d at %d%%", tt.n, tt.percent), func(t *testing.T) {
			pol := passive(2)
			pol.MaxEjectedPercent = tt.percent
			ins := make([]*Instance, tt.n)
			for i := range ins {
				ins[i], _ = newTest(t, 1, pol)
			}
			p := NewPool(ins...)
			now := t0
			for range 3 {
				for _, in := range ins {
					p.Failed(in, now, "status 502", false)
				}
			}
			ejected := func() (n int, in *Instance) {
				for _, x := range ins {
					if x.Status().State == StateEjected {
						n++
						in = x
					}
				}
				return n, in
			}
			got, some := ejected()
			if got != tt.want {
				t.Fatalf("%d ejected, want %d", got, tt.want)
			}
			if got == tt.n {
				return
			}
			// One that stayed in counts on; it is ejected as soon as
			// another comes back.
			var stayed *Instance
			for _, x := range ins {
				if x.Healthy() {
					stayed = x
					break
				}
			}
			if st := stayed.Status(); st.PassiveFails != 3 {
				t.Errorf("an instance kept in: %d passive fails, want 3", st.PassiveFails)
			}
			trial(t, some)
			some.Succeeded(true, now+minute)
			p.Failed(stayed, now+minute, "status 502", false)
			if n, _ := ejected(); n != tt.want || stayed.Status().State != StateEjected {
				t.Errorf("after one came back and another failed: %d ejected (want %d), the other %q",
					n, tt.want, stayed.Status().State)
			}
		})
	}
}

// TestFailedTrialIgnoresMaxEjectedPercent: a failed trial re-ejects an
// instance that counts among the ejected already.
func TestFailedTrialIgnoresMaxEjectedPercent(t *testing.T) {
	pol := passive(1)
	pol.MaxEjectedPercent = 0
	a, rec := newTest(t, 1, pol)
	b, _ := newTest(t, 1, pol)
	p := NewPool(a, b)
	p.Failed(a, t0, "status 502", false)
	p.Failed(b, t0, "status 502", false)
	if a.Status().State != StateEjected || b.Status().State != StateHealthy {
		t.Fatalf("states %q, %q; want one ejected", a.Status().State, b.Status().State)
	}
	rec.take()
	trial(t, a)
	p.Failed(a, t0+int64(failDuration), "status 502", true)
	if got := rec.take(); len(got) != 1 || got[0].Event != EventEjected {
		t.Errorf("failed trial: changes %v, want an ejection", events(got))
	}
}

func TestPanicThreshold(t *testing.T) {
	type kind int
	const (
		ok kind = iota
		unhealthy
		ejected
		draining
		weight0
	)
	tests := []struct {
		name      string
		threshold int
		kinds     []kind
		wantPanic bool
		want      []int // Available, by index
	}{
		{name: "off", threshold: 0, kinds: []kind{unhealthy, unhealthy, unhealthy, ok}, want: []int{3}},
		{name: "at the threshold", threshold: 50, kinds: []kind{ok, ok, unhealthy, ejected}, want: []int{0, 1}},
		{name: "below it", threshold: 50, kinds: []kind{ok, unhealthy, ejected, unhealthy}, wantPanic: true, want: []int{0, 1, 2, 3}},
		{name: "none available", threshold: 1, kinds: []kind{unhealthy, ejected}, wantPanic: true, want: []int{0, 1}},
		{name: "draining ones do not count", threshold: 50, kinds: []kind{ok, unhealthy, draining, draining}, want: []int{0}},
		{name: "draining ones stay out in panic", threshold: 50, kinds: []kind{unhealthy, ejected, draining, draining}, wantPanic: true, want: []int{0, 1}},
		{name: "weight 0 does not count", threshold: 50, kinds: []kind{ok, unhealthy, weight0}, want: []int{0}},
		{name: "weight 0 stays out in panic", threshold: 50, kinds: []kind{unhealthy, unhealthy, weight0}, wantPanic: true, want: []int{0, 1}},
		{name: "all draining", threshold: 100, kinds: []kind{draining, draining}, want: []int{}},
		{name: "100%: any one out", threshold: 100, kinds: []kind{ok, ok, ok, unhealthy}, wantPanic: true, want: []int{0, 1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := make([]*Instance, len(tt.kinds))
			for i, k := range tt.kinds {
				w := 1
				if k == weight0 {
					w = 0
				}
				ins[i], _ = newTest(t, w, passive(1))
			}
			p := NewPool(ins...)
			p.SetPanicThreshold(tt.threshold)
			for i, k := range tt.kinds {
				switch k {
				case unhealthy:
					ins[i].SetHealthy(false)
				case ejected:
					p.Failed(ins[i], t0, "status 502", false)
				case draining:
					ins[i].SetDraining(true, t0)
				}
			}
			want := []*Instance{}
			for _, i := range tt.want {
				want = append(want, ins[i])
			}
			if got := p.Available(); !slices.Equal(got, want) {
				t.Errorf("Available() = %v, want %v", got, want)
			}
			if got := p.Panicking(); got != tt.wantPanic {
				t.Errorf("Panicking() = %v, want %v", got, tt.wantPanic)
			}
			for i, k := range tt.kinds {
				ok, trial := p.Admit(ins[i])
				wantOK := k != ejected || tt.wantPanic
				if ok != wantOK || trial {
					t.Errorf("Admit(%d) = %v, %v; want %v, false", i, ok, trial, wantOK)
				}
			}
		})
	}
}

// TestPanicAdmitTakesTheTrial: in panic, an ejected instance whose trial
// is open gets it, so that its outcome can end the ejection.
func TestPanicAdmitTakesTheTrial(t *testing.T) {
	in, _ := newTest(t, 1, passive(1))
	other, _ := newTest(t, 1, passive(1))
	other.SetHealthy(false)
	p := NewPool(in, other)
	p.SetPanicThreshold(100)
	until := eject(t, in, t0)
	in.openTrial(until)
	for i, want := range [][2]bool{{true, true}, {true, false}} {
		if ok, trial := p.Admit(in); [2]bool{ok, trial} != want {
			t.Errorf("Admit %d = %v, %v; want %v", i, ok, trial, want)
		}
	}
}

func TestDraining(t *testing.T) {
	tests := []struct {
		name     string
		inFlight int
	}{
		{name: "idle: drained at once", inFlight: 0},
		{name: "one request in flight", inFlight: 1},
		{name: "three requests in flight", inFlight: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, rec := newTest(t, 1, &Policy{})
			other, _ := newTest(t, 1, &Policy{})
			p := NewPool(in, other)
			for range tt.inFlight {
				in.Acquire()
			}
			// Requests ending while not draining are no change.
			in.Acquire()
			in.Release()
			wantChanges(t, rec, in)

			if !in.SetDraining(true, t0+minute) {
				t.Fatal("SetDraining(true) = false")
			}
			want := []Change{{Event: EventDraining, Reason: "drained by the operator"}}
			if tt.inFlight == 0 {
				want = append(want, Change{Event: EventDrained, Reason: "drained: no request in flight"})
			}
			wantChanges(t, rec, in, want...)
			st := in.Status()
			if st.State != StateDraining || !st.Healthy || in.Available() || !in.Draining() || !st.Since.Equal(wallTime(t0+minute)) {
				t.Errorf("draining: %+v, available %v", st, in.Available())
			}
			if got := p.Available(); !slices.Equal(got, []*Instance{other}) {
				t.Errorf("Pool.Available() = %v, want the other one only", got)
			}
			if in.SetDraining(true, t0+2*minute) {
				t.Error("SetDraining(true) twice = true")
			}
			wantChanges(t, rec, in)
			for i := range tt.inFlight {
				in.Release()
				if i < tt.inFlight-1 {
					wantChanges(t, rec, in)
				} else {
					wantChanges(t, rec, in, Change{Event: EventDrained, Reason: "drained: no request in flight"})
				}
			}

			if !in.SetDraining(false, t0+3*minute) {
				t.Fatal("SetDraining(false) = false")
			}
			wantChanges(t, rec, in, Change{Event: EventUndrained, Reason: "undrained"})
			if st := in.Status(); st.State != StateHealthy || !in.Available() {
				t.Errorf("undrained: %+v", st)
			}
			if got := p.Available(); !slices.Equal(got, []*Instance{in, other}) {
				t.Errorf("Pool.Available() = %v, want both", got)
			}
			if in.SetDraining(false, t0+4*minute) {
				t.Error("SetDraining(false) twice = true")
			}
			wantChanges(t, rec, in)
		})
	}
}

func TestDrainingTakesPrecedence(t *testing.T) {
	in, _ := newTest(t, 1, passive(1))
	in.SetHealthy(false)
	in.SetDraining(true, t0)
	if st := in.Status(); st.State != StateDraining || st.Healthy {
		t.Errorf("draining and unhealthy: state %q, healthy %v; want %q, false", st.State, st.Healthy, StateDraining)
	}
}

func TestSlowStart(t *testing.T) {
	const w = 3
	ss := int64(slowStart)
	tests := []struct {
		elapsed  int64
		wantStep int
	}{
		{0, 1},
		{ss/9 - 1, 1},
		{ss / 9, 2},
		{ss / 2, 5},
		{ss - 1, 9},
		{ss, rampSteps},
	}
	in, rec := newTest(t, w, &Policy{SlowStart: slowStart})
	in.StartSlowStart(t0)
	for _, tt := range tests {
		in.StepRamp(t0 + tt.elapsed)
		st := in.Status()
		wantState := StateStarting
		if tt.wantStep == rampSteps {
			wantState = StateHealthy
		}
		if got := in.SelectionWeight(); got != w*tt.wantStep {
			t.Errorf("%v in: SelectionWeight() = %d, want %d", time.Duration(tt.elapsed), got, w*tt.wantStep)
		}
		if want := float64(w*tt.wantStep) / rampSteps; st.EffectiveWeight != want || st.Weight != w || st.State != wantState {
			t.Errorf("%v in: state %q, weight %d, effective %v; want %q, %d, %v",
				time.Duration(tt.elapsed), st.State, st.Weight, st.EffectiveWeight, wantState, w, want)
		}
	}
	// Over: later steps and Configure change nothing.
	in.StepRamp(t0 + 2*ss)
	in.Configure(w, in.Policy(), t0+2*ss)
	if got := in.SelectionWeight(); got != w*rampSteps || in.Status().State != StateHealthy {
		t.Errorf("after the ramp: SelectionWeight() %d, state %q", got, in.Status().State)
	}
	wantChanges(t, rec, in) // slow start reports no change
}

func TestSlowStartStarts(t *testing.T) {
	pol := &Policy{SlowStart: slowStart, MaxFails: 1, FailDuration: failDuration, MaxFailDuration: maxFailDuration, MaxEjectedPercent: 100}
	step := func(in *Instance) int64 { return int64(in.SelectionWeight() / in.Weight()) }
	t.Run("by StartSlowStart, not by Configure", func(t *testing.T) {
		in := New(&url.URL{Scheme: "http", Host: "127.0.0.1:1"}, 2, pol, t0)
		t.Cleanup(in.Close)
		if !in.Configure(2, pol, t0) {
			t.Error("first Configure: first = false")
		}
		if step(in) != rampSteps || in.Status().State != StateHealthy {
			t.Errorf("after Configure: step %d, state %q", step(in), in.Status().State)
		}
		in.StartSlowStart(t0)
		if step(in) != 1 || in.Status().State != StateStarting {
			t.Errorf("after StartSlowStart: step %d, state %q", step(in), in.Status().State)
		}
		in.StepRamp(t0 + int64(slowStart)/2)
		if in.Configure(2, pol, t0+int64(slowStart)/2) { // a reload restarts nothing
			t.Error("second Configure: first = true")
		}
		if step(in) != 5 {
			t.Errorf("after a second Configure: step %d, want 5", step(in))
		}
	})
	t.Run("none without slow start", func(t *testing.T) {
		in, _ := newTest(t, 2, passive(1))
		in.StartSlowStart(t0)
		if step(in) != rampSteps || in.Status().State != StateHealthy {
			t.Errorf("step %d, state %q", step(in), in.Status().State)
		}
	})
	t.Run("turned off by a reload", func(t *testing.T) {
		in, _ := newTest(t, 2, pol)
		in.StartSlowStart(t0)
		in.Configure(2, passive(1), t0+minute)
		if step(in) != rampSteps || in.Status().State != StateHealthy {
			t.Errorf("step %d, state %q", step(in), in.Status().State)
		}
	})
	t.Run("a reload's slow_start applies to a ramp under way", func(t *testing.T) {
		in, _ := newTest(t, 2, pol)
		in.StartSlowStart(t0)
		in.StepRamp(t0 + int64(slowStart)/9) // step 2
		shorter := *pol
		shorter.SlowStart = slowStart / 2
		in.Configure(2, &shorter, t0+int64(slowStart)/4) // half way through the shorter one
		if step(in) != 5 {
			t.Errorf("after a reload halving slow_start: step %d, want 5", step(in))
		}
		in.Configure(2, &shorter, t0+int64(slowStart)/2)
		if step(in) != 5 { // unchanged settings move nothing; the timer does
			t.Errorf("after a reload with the same settings: step %d, want 5", step(in))
		}
		in.StepRamp(t0 + int64(slowStart)/2)
		if step(in) != rampSteps || in.Status().State != StateHealthy {
			t.Errorf("the shorter ramp over: step %d, state %q", step(in), in.Status().State)
		}
	})
	t.Run("not while ejected", func(t *testing.T) {
		in, _ := newTest(t, 2, pol)
		eject(t, in, t0)
		in.StartSlowStart(t0)
		if step(in) != rampSteps || in.Status().State != StateEjected {
			t.Errorf("step %d, state %q", step(in), in.Status().State)
		}
	})
	t.Run("initially unhealthy: at the first pass", func(t *testing.T) {
		p := *pol
		p.InitiallyUnhealthy = true
		in, _ := newTest(t, 2, &p)
		in.StartSlowStart(t0)
		if st := in.Status(); st.State != StateUnhealthy || st.EffectiveWeight != 2 {
			t.Errorf("before its check: %+v", st)
		}
		check(t, in, t0+minute, nil, 2, 2)
		if step(in) != 1 || in.Status().State != StateStarting {
			t.Errorf("after its check: step %d, state %q", step(in), in.Status().State)
		}
		in.StepRamp(t0 + minute + int64(slowStart)/9)
		if step(in) != 2 {
			t.Errorf("a step after the check: step %d, want 2", step(in))
		}
	})
	t.Run("again after recovering", func(t *testing.T) {
		in, _ := newTest(t, 2, pol)
		in.StepRamp(t0 + int64(slowStart))
		check(t, in, t0+2*hour, errors.New("status 500"), 1, 1)
		if step(in) != rampSteps {
			t.Errorf("unhealthy: step %d, want full weight", step(in))
		}
		check(t, in, t0+3*hour, nil, 1, 1)
		if step(in) != 1 || in.Status().State != StateStarting {
			t.Errorf("recovered: step %d, state %q", step(in), in.Status().State)
		}
		in.StepRamp(t0 + 3*hour + int64(slowStart)/2)
		if step(in) != 5 {
			t.Errorf("half way: step %d, want 5 (the ramp starts at the recovery)", step(in))
		}
	})
	t.Run("ejected mid-ramp, again after the ejection", func(t *testing.T) {
		in, _ := newTest(t, 2, pol)
		in.StartSlowStart(t0)
		in.StepRamp(t0 + int64(slowStart)/2)
		until := eject(t, in, t0+int64(slowStart)/2)
		if step(in) != rampSteps || in.Status().State != StateEjected {
			t.Errorf("ejected: step %d, state %q", step(in), in.Status().State)
		}
		in.StepRamp(until) // a ramp timer firing late moves nothing
		if step(in) != rampSteps {
			t.Errorf("ejected, ramp timer: step %d", step(in))
		}
		trial(t, in)
		in.Succeeded(true, until)
		if step(in) != 1 || in.Status().State != StateStarting {
			t.Errorf("back: step %d, state %q", step(in), in.Status().State)
		}
	})
}

func sameData(a, b []*Instance) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// TestAvailableIdentity: Pool.Available keeps handing out the same slice
// while its instances and their selection weights stay the same, and a
// new one as soon as either changes.
func TestAvailableIdentity(t *testing.T) {
	pol := &Policy{SlowStart: slowStart}
	a, _ := newTest(t, 1, &Policy{})
	b, _ := newTest(t, 2, &Policy{})
	c, _ := newTest(t, 3, &Policy{})
	p := NewPool(a, b, c)
	steps := []struct {
		name    string
		change  func()
		want    []*Instance
		weights []int
		rebuilt bool
	}{
		{name: "nothing", change: func() {}, want: []*Instance{a, b, c}, weights: []int{10, 20, 30}},
		{name: "same weight", change: func() { b.Configure(2, &Policy{}, t0) }, want: []*Instance{a, b, c}, weights: []int{10, 20, 30}},
		{name: "another instance changes", change: func() {
			other, _ := newTest(t, 1, &Policy{})
			other.SetHealthy(false)
		}, want: []*Instance{a, b, c}, weights: []int{10, 20, 30}},
		{name: "weight up", change: func() { b.Configure(5, &Policy{}, t0) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 30}, rebuilt: true},
		{name: "weight down to 0", change: func() { a.Configure(0, &Policy{}, t0) }, want: []*Instance{b, c}, weights: []int{50, 30}, rebuilt: true},
		{name: "weight back", change: func() { a.Configure(1, &Policy{}, t0) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 30}, rebuilt: true},
		{name: "slow start turned on: not for instances in use", change: func() { c.Configure(3, pol, t0) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 30}},
		{name: "c recovers, ramping", change: func() {
			c.SetHealthy(false)
			check(t, c, t0+hour, nil, 1, 1)
		}, want: []*Instance{a, b, c}, weights: []int{10, 50, 3}, rebuilt: true},
		{name: "a ramp step", change: func() { c.StepRamp(t0 + hour + int64(slowStart)/9) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 6}, rebuilt: true},
		{name: "a ramp step due later: same step", change: func() { c.StepRamp(t0 + hour + int64(slowStart)/9 + 1) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 6}},
		{name: "ramp over", change: func() { c.StepRamp(t0 + 3*hour) }, want: []*Instance{a, b, c}, weights: []int{10, 50, 30}, rebuilt: true},
	}
	var prev []*Instance
	for i, s := range steps {
		s.change()
		got := p.Available()
		if !slices.Equal(got, s.want) {
			t.Fatalf("step %q: Available() = %v, want %v", s.name, got, s.want)
		}
		for j, in := range got {
			if in.SelectionWeight() != s.weights[j] {
				t.Errorf("step %q: %v has selection weight %d, want %d", s.name, in, in.SelectionWeight(), s.weights[j])
			}
		}
		if i > 0 {
			if same := sameData(got, prev); same == s.rebuilt {
				t.Errorf("step %q: same slice as before = %v, want %v", s.name, same, !s.rebuilt)
			}
		}
		if again := p.Available(); !sameData(again, got) {
			t.Errorf("step %q: a second Available() returned a new slice", s.name)
		}
		prev = got
	}
}

// TestClose: once closed, an instance's timers are stopped, and nothing a
// timer would do (open a trial, step slow start) changes it any more.
func TestClose(t *testing.T) {
	pol := &Policy{SlowStart: slowStart, MaxFails: 1, FailDuration: failDuration, MaxFailDuration: maxFailDuration, MaxEjectedPercent: 100}
	t.Run("ejection timer", func(t *testing.T) {
		in, _ := newTest(t, 1, pol)
		until := eject(t, in, t0)
		timer := in.st.ejectTimer
		in.Close()
		if timer.Stop() {
			t.Error("the ejection timer was still running after Close")
		}
		in.openTrial(until)
		if ok, _ := in.Admit(false); ok || in.Available() {
			t.Error("a trial opened after Close")
		}
		// Nor does an abandoned trial reopen.
		in.AbandonTrial()
		if in.Available() {
			t.Error("AbandonTrial opened a trial after Close")
		}
	})
	t.Run("ramp timer", func(t *testing.T) {
		in, _ := newTest(t, 1, pol)
		in.StartSlowStart(t0)
		timer := in.st.rampTimer
		in.Close()
		if timer.Stop() {
			t.Error("the slow start timer was still running after Close")
		}
		in.StepRamp(t0 + int64(slowStart)/2)
		if got := in.SelectionWeight(); got != 1 {
			t.Errorf("SelectionWeight() = %d after a step following Close, want 1", got)
		}
	})
	t.Run("no timer armed after Close", func(t *testing.T) {
		in, _ := newTest(t, 1, pol)
		in.Close()
		in.StartSlowStart(t0)
		if in.st.rampTimer != nil || in.Status().State != StateHealthy {
			t.Error("StartSlowStart after Close started a ramp")
		}
		eject(t, in, t0+hour)
		if in.st.ejectTimer != nil {
			t.Error("an ejection after Close armed a timer")
		}
		check(t, in, t0+2*hour, nil, 1, 1) // back, and would ramp
		if in.st.rampTimer != nil {
			t.Error("a ramp after Close armed a timer")
		}
	})
}

func TestStatusSet(t *testing.T) {
	var s StatusSet
	if !s.Empty() {
		t.Error("zero StatusSet not empty")
	}
	for _, code := range []int{100, 200, 302, 503, 599} {
		s.Add(code)
	}
	s.Add(-1)
	s.Add(640)
	s.Add(1 << 20)
	if s.Empty() {
		t.Error("StatusSet empty after Add")
	}
	for code := -5; code < 700; code++ {
		want := code == 100 || code == 200 || code == 302 || code == 503 || code == 599
		if got := s.Has(code); got != want {
			t.Errorf("Has(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestSetOnChangeNil(t *testing.T) {
	in, rec := newTest(t, 1, passive(1))
	in.SetOnChange(nil)
	in.SetDraining(true, t0)
	eject(t, in, t0)
	wantChanges(t, rec, in)
}

// TestConcurrentTransitions runs every transition at once from several
// goroutines, for the race detector, and checks what must hold whatever
// the interleaving: no request left in flight, weights as configured, and
// every instance back once its ejections are ended and its checks pass.
func TestConcurrentTransitions(t *testing.T) {
	pol := passive(2)
	pol.MaxEjectedPercent = 50
	pol.SlowStart = slowStart
	ins := make([]*Instance, 4)
	for i := range ins {
		ins[i], _ = newTest(t, i+1, pol)
		ins[i].SetOnChange(func(Change) {})
	}
	p := NewPool(ins...)
	p.SetPanicThreshold(50)
	var clock sync.Mutex
	now := t0
	tick := func() int64 {
		clock.Lock()
		defer clock.Unlock()
		now += int64(time.Second)
		return now
	}
	const rounds = 2000
	var wg sync.WaitGroup
	for g := range 3 { // requests
		wg.Go(func() {
			for r := range rounds {
				list := p.Available()
				if len(list) == 0 {
					continue
				}
				in := list[(g+r)%len(list)]
				ok, trial := p.Admit(in)
				if !ok {
					continue
				}
				in.Acquire()
				switch (g + r) % 5 {
				case 0, 1:
					p.Failed(in, tick(), "status 502", trial)
				case 2:
					if trial {
						in.AbandonTrial()
					} else {
						in.Succeeded(false, tick())
					}
				default:
					in.Succeeded(trial, tick())
				}
				in.Release()
			}
		})
	}
	wg.Go(func() { // health checks, timers, the operator
		for r := range rounds {
			in := ins[r%len(ins)]
			if in.TryStartCheck() {
				var err error
				if r%3 == 0 {
					err = errors.New("status 500")
				}
				in.FinishCheck(tick(), err, 2, 2)
			}
			in.mu.Lock()
			until := in.st.ejectedUntil
			in.mu.Unlock()
			in.openTrial(until)
			in.StepRamp(tick())
			in.SetDraining(r%7 == 0, tick())
			_ = in.Status()
			_ = p.Panicking()
		}
	})
	wg.Wait()

	end := tick()
	for i, in := range ins {
		in.SetDraining(false, end)
		for range 2 {
			check(t, in, end, nil, 2, 2)
		}
		in.StepRamp(end + int64(slowStart))
		st := in.Status()
		if st.InFlight != 0 || st.State != StateHealthy || in.SelectionWeight() != (i+1)*rampSteps {
			t.Errorf("instance %d at the end: %+v, selection weight %d", i, st, in.SelectionWeight())
		}
	}
	if got := p.Available(); !slices.Equal(got, ins) || p.Panicking() {
		t.Errorf("Available() = %v, panicking %v; want all, not in panic", got, p.Panicking())
	}
}

// timers replaces the timers of the instances for the test: each
// scheduled function is recorded, for the test to run as the timer would.
type timers struct {
	mu    sync.Mutex
	funcs []scheduled
}

type scheduled struct {
	d time.Duration
	f func()
}

func fakeTimers(t *testing.T) *timers {
	tm := new(timers)
	prev := afterFunc
	afterFunc = func(d time.Duration, f func()) *time.Timer {
		tm.mu.Lock()
		tm.funcs = append(tm.funcs, scheduled{d, f})
		tm.mu.Unlock()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		return timer
	}
	t.Cleanup(func() { afterFunc = prev })
	return tm
}

// last returns the function scheduled last, and its delay.
func (tm *timers) last(t *testing.T) scheduled {
	t.Helper()
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if len(tm.funcs) == 0 {
		t.Fatal("no timer scheduled")
	}
	return tm.funcs[len(tm.funcs)-1]
}

// TestTimersDoTheirJob: what the ejection timer runs when it fires opens
// the trial, and what the slow start timer runs moves the ramp on.
func TestTimersDoTheirJob(t *testing.T) {
	tm := fakeTimers(t)
	in, _ := newTest(t, 1, passive(1))
	eject(t, in, Now())
	fire := tm.last(t)
	if fire.d != failDuration {
		t.Errorf("ejection timer set for %v, want fail_duration %v", fire.d, failDuration)
	}
	if ok, _ := in.Admit(false); ok {
		t.Fatal("admitted before the ejection timer fired")
	}
	fire.f()
	if ok, trial := in.Admit(false); !ok || !trial {
		t.Errorf("after the ejection timer fired: Admit = %v, %v; want the trial", ok, trial)
	}

	// A ramp of 1ns is over whenever its timer fires: the step it then
	// moves to is the last.
	ramping, _ := newTest(t, 1, &Policy{SlowStart: time.Nanosecond})
	ramping.StartSlowStart(Now())
	if st := ramping.Status(); st.State != StateStarting {
		t.Fatalf("slow start not started: %q", st.State)
	}
	tm.last(t).f()
	if st := ramping.Status(); st.State != StateHealthy || st.EffectiveWeight != 1 {
		t.Errorf("after the slow start timer: %q at %v, want healthy at full weight", st.State, st.EffectiveWeight)
	}
}
