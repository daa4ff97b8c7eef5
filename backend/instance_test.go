package backend_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
)

func mustParse(t testing.TB, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("url.Parse(%q): %v", raw, err)
	}
	return u
}

func TestNewIsHealthyAndIdle(t *testing.T) {
	u := mustParse(t, "http://alice:s3cr3t@127.0.0.1:8080/base")
	in := backend.NewWeighted(u, 1)

	if !in.Healthy() {
		t.Error("New: Healthy() = false, want true")
	}
	if in.URL() != u {
		t.Errorf("URL() = %p, want the URL given to New (%p)", in.URL(), u)
	}
	if got, want := in.String(), "http://xxxxx@127.0.0.1:8080/base"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	got := in.Status()
	if got.Since.IsZero() {
		t.Error("Status().Since is zero, want the time the instance was made")
	}
	got.Since = time.Time{}
	want := backend.Status{
		URL:     "http://xxxxx@127.0.0.1:8080/base",
		State:   backend.StateHealthy,
		Reason:  "added",
		Healthy: true,
		Weight:  1, EffectiveWeight: 1,
	}
	if got != want {
		t.Errorf("Status() = %+v, want %+v", got, want)
	}
	if got := in.PickStamp(); got != 0 {
		t.Errorf("PickStamp() = %d, want 0 for an instance never picked", got)
	}
	if got := in.Weight(); got != 1 {
		t.Errorf("Weight() = %d, want 1", got)
	}
	if !in.Available() {
		t.Error("Available() = false for a new instance of weight 1")
	}
}

func TestCounters(t *testing.T) {
	type op int
	const (
		acquire op = iota
		release
		fail
	)
	tests := []struct {
		name         string
		ops          []op
		wantInFlight int64
		wantRequests uint64
		wantFailures uint64
	}{
		{name: "none"},
		{name: "one acquired", ops: []op{acquire}, wantInFlight: 1, wantRequests: 1},
		{name: "acquire release", ops: []op{acquire, release}, wantInFlight: 0, wantRequests: 1},
		{
			name:         "overlapping requests",
			ops:          []op{acquire, acquire, acquire, release, acquire, release},
			wantInFlight: 2, wantRequests: 4,
		},
		{
			name:         "failures are counted apart from requests",
			ops:          []op{acquire, fail, release, acquire, fail, release, fail},
			wantInFlight: 0, wantRequests: 2, wantFailures: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			for _, o := range tt.ops {
				switch o {
				case acquire:
					in.Acquire()
				case release:
					in.Release()
				case fail:
					in.RecordFailure()
				}
			}
			if got := in.InFlight(); got != tt.wantInFlight {
				t.Errorf("InFlight() = %d, want %d", got, tt.wantInFlight)
			}
			s := in.Status()
			if s.InFlight != tt.wantInFlight || s.TotalRequests != tt.wantRequests || s.Failures != tt.wantFailures {
				t.Errorf("Status() in flight/requests/failures = %d/%d/%d, want %d/%d/%d",
					s.InFlight, s.TotalRequests, s.Failures, tt.wantInFlight, tt.wantRequests, tt.wantFailures)
			}
			if !s.Healthy {
				t.Error("counters changed health: Status().Healthy = false")
			}
		})
	}
}

func TestSetHealthyReportsChangesOnly(t *testing.T) {
	type step struct {
		set         bool
		wantChanged bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "healthy again is no change", steps: []step{{true, false}, {true, false}}},
		{name: "down once", steps: []step{{false, true}}},
		{name: "down twice", steps: []step{{false, true}, {false, false}}},
		{
			name:  "flapping",
			steps: []step{{false, true}, {true, true}, {true, false}, {false, true}, {false, false}, {true, true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			for i, s := range tt.steps {
				if got := in.SetHealthy(s.set); got != s.wantChanged {
					t.Errorf("step %d: SetHealthy(%v) = %v, want %v", i, s.set, got, s.wantChanged)
				}
				if got := in.Healthy(); got != s.set {
					t.Errorf("step %d: Healthy() = %v after SetHealthy(%v)", i, got, s.set)
				}
			}
		})
	}
}

func TestTryStartCheck(t *testing.T) {
	tests := []struct {
		name   string
		finish func(*backend.Instance)
	}{
		{name: "FinishCheck passed", finish: func(in *backend.Instance) { in.FinishCheck(backend.Now(), nil, 1, 1) }},
		{name: "FinishCheck failed", finish: func(in *backend.Instance) { in.FinishCheck(backend.Now(), errors.New("boom"), 1, 1) }},
		{name: "AbandonCheck", finish: (*backend.Instance).AbandonCheck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			// Several checks in a row: each must be exclusive, and each end
			// must let the next one start.
			for round := range 3 {
				if !in.TryStartCheck() {
					t.Fatalf("round %d: TryStartCheck() = false with no check running", round)
				}
				for try := range 2 {
					if in.TryStartCheck() {
						t.Fatalf("round %d, try %d: TryStartCheck() = true while a check runs", round, try)
					}
				}
				tt.finish(in)
			}
			if !in.TryStartCheck() {
				t.Fatal("TryStartCheck() = false after the last check ended")
			}
			in.AbandonCheck()
		})
	}
}

// TestFinishCheck checks with streaks of one, each change reported once
// to OnChange. (state_test.go covers longer streaks.)
func TestFinishCheck(t *testing.T) {
	base := int64(3 * time.Hour)
	type check struct {
		err        error
		wantChange backend.Event // "" for none
	}
	tests := []struct {
		name   string
		checks []check
		// state after the last check
		wantHealthy bool
		wantErr     string
	}{
		{
			name:        "pass keeps healthy",
			checks:      []check{{nil, ""}},
			wantHealthy: true,
		},
		{
			name:        "fail marks unhealthy",
			checks:      []check{{errors.New("status 503"), backend.EventUnhealthy}},
			wantHealthy: false, wantErr: "status 503",
		},
		{
			name:        "second failure is no change, keeps newest error",
			checks:      []check{{errors.New("status 503"), backend.EventUnhealthy}, {errors.New("no answer within 1s"), ""}},
			wantHealthy: false, wantErr: "no answer within 1s",
		},
		{
			name:        "recovery clears the error",
			checks:      []check{{errors.New("status 500"), backend.EventUnhealthy}, {nil, backend.EventHealthy}},
			wantHealthy: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
			var changes []backend.Event
			in.SetOnChange(func(c backend.Change) { changes = append(changes, c.Event) })
			var at int64
			for i, c := range tt.checks {
				at = base + int64(i)*int64(time.Minute)
				if !in.TryStartCheck() {
					t.Fatalf("check %d: TryStartCheck() = false", i)
				}
				before := len(changes)
				in.FinishCheck(at, c.err, 1, 1)
				var got backend.Event
				switch len(changes) - before {
				case 0:
				case 1:
					got = changes[before]
				default:
					t.Fatalf("check %d: FinishCheck(%v) reported %v, want at most one change", i, c.err, changes[before:])
				}
				if got != c.wantChange {
					t.Errorf("check %d: FinishCheck(%v) reported %q, want %q", i, c.err, got, c.wantChange)
				}
			}
			s := in.Status()
			if s.Healthy != tt.wantHealthy || in.Healthy() != tt.wantHealthy {
				t.Errorf("healthy: Status %v, Healthy() %v, want %v", s.Healthy, in.Healthy(), tt.wantHealthy)
			}
			if s.LastError != tt.wantErr {
				t.Errorf("Status().LastError = %q, want %q", s.LastError, tt.wantErr)
			}
			if want := backend.WallTime(at); !s.LastChecked.Equal(want) {
				t.Errorf("Status().LastChecked = %v, want %v", s.LastChecked, want)
			}
		})
	}
}

func TestAbandonCheckRecordsNothing(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "http://127.0.0.1:1"), 1)
	at := int64(time.Hour)
	if !in.TryStartCheck() {
		t.Fatal("TryStartCheck() = false")
	}
	in.FinishCheck(at, errors.New("status 500"), 1, 1)
	before := in.Status()

	if !in.TryStartCheck() {
		t.Fatal("TryStartCheck() = false after FinishCheck")
	}
	in.AbandonCheck()
	if got := in.Status(); got != before {
		t.Errorf("AbandonCheck changed the state:\n got  %+v\n want %+v", got, before)
	}
}

func TestStatus(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "https://bob:pw@10.0.0.1:8443/app?x=1"), 1)
	for range 5 {
		in.Acquire()
	}
	for range 2 {
		in.Release()
	}
	in.RecordFailure()
	at := int64(2 * time.Hour)
	if !in.TryStartCheck() {
		t.Fatal("TryStartCheck() = false")
	}
	in.FinishCheck(at, errors.New("status 502"), 1, 1)

	got := in.Status()
	want := backend.Status{
		URL:              "https://xxxxx@10.0.0.1:8443/app?x=xxxxx",
		State:            backend.StateUnhealthy,
		Reason:           "status 502",
		Since:            backend.WallTime(at),
		Healthy:          false,
		InFlight:         3,
		TotalRequests:    5,
		Failures:         1,
		LastChecked:      backend.WallTime(at),
		LastError:        "status 502",
		ConsecutiveFails: 1,
		Weight:           1,
		EffectiveWeight:  1,
	}
	if !got.LastChecked.Equal(want.LastChecked) {
		t.Errorf("LastChecked = %v, want %v", got.LastChecked, want.LastChecked)
	}
	if !got.Since.Equal(want.Since) {
		t.Errorf("Since = %v, want %v", got.Since, want.Since)
	}
	got.LastChecked, want.LastChecked = time.Time{}, time.Time{}
	got.Since, want.Since = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("Status() =\n %+v, want\n %+v", got, want)
	}

	// Status is a copy: later changes do not reach it.
	snapshot := in.Status()
	in.Acquire()
	in.SetHealthy(true)
	if snapshot.InFlight != 3 || snapshot.Healthy || snapshot.State != backend.StateUnhealthy {
		t.Errorf("an earlier Status changed with the instance: %+v", snapshot)
	}
}

func TestRedact(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    string
		secrets []string // must not appear in the result
	}{
		{
			name:    "user and password",
			raw:     "http://alice:s3cr3t@backend.internal:8080/api?q=1#frag",
			want:    "http://xxxxx@backend.internal:8080/api?q=xxxxx#frag",
			secrets: []string{"alice", "s3cr3t"},
		},
		{
			name:    "user only",
			raw:     "https://tokenABC123@10.1.2.3/",
			want:    "https://xxxxx@10.1.2.3/",
			secrets: []string{"tokenABC123"},
		},
		{
			name:    "empty password",
			raw:     "http://carol:@127.0.0.1:9000",
			want:    "http://xxxxx@127.0.0.1:9000",
			secrets: []string{"carol"},
		},
		{
			name:    "escaped password",
			raw:     "http://dave:p%40ss%3Aword@127.0.0.1:9000/x",
			want:    "http://xxxxx@127.0.0.1:9000/x",
			secrets: []string{"dave", "p%40ss", "p@ss", "word"},
		},
		{name: "no userinfo", raw: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{name: "query values", raw: "https://example.com/a/b?token=s3cr3t&e=f", want: "https://example.com/a/b?token=xxxxx&e=xxxxx", secrets: []string{"s3cr3t"}},
		{name: "query keys without values", raw: "http://h/?flag&empty=&k=v", want: "http://h/?flag&empty=&k=xxxxx"},
		{name: "no userinfo, no query", raw: "https://example.com/a/b", want: "https://example.com/a/b"},
		{name: "no userinfo, ipv6", raw: "http://[::1]:8080/health", want: "http://[::1]:8080/health"},
		{name: "no userinfo, escaped path", raw: "http://h/a%2Fb", want: "http://h/a%2Fb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := mustParse(t, tt.raw)
			before := u.String()

			got := backend.Redact(u)
			if got != tt.want {
				t.Errorf("Redact(%q) = %q, want %q", tt.raw, got, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(got, s) {
					t.Errorf("Redact(%q) = %q still contains %q", tt.raw, got, s)
				}
			}
			if u.User == nil && u.RawQuery == "" && got != before {
				t.Errorf("Redact changed a URL without userinfo or query: %q -> %q", before, got)
			}
			if after := u.String(); after != before {
				t.Errorf("Redact modified its argument: %q -> %q", before, after)
			}
			if s := backend.NewWeighted(u, 1).String(); s != tt.want {
				t.Errorf("Instance.String() = %q, want %q", s, tt.want)
			}
		})
	}
}
