package backend

import (
	"errors"
	"testing"
)

// TestVerdicts: a node that follows other nodes' verdicts goes in and out
// with them (ramping up when it comes in); a node that probes itself is
// out while its own checks fail or another prober's verdict holds it out,
// and reports each change of the whole once.
func TestVerdicts(t *testing.T) {
	type step struct {
		op     string // "follow", "down", "up", "pass", "fail"
		reason string
		want   State
		event  Event // "" for none
	}
	tests := []struct {
		name  string
		start bool // initially unhealthy
		steps []step
	}{
		{"followed out and in", false, []step{
			{"follow-out", "by n2: status 503", StateUnhealthy, EventUnhealthy},
			{"follow-out", "by n2: status 503", StateUnhealthy, ""},
			{"follow-in", "by n2: health check passed", StateStarting, EventHealthy},
		}},
		{"first verdict of an instance awaiting its first check", true, []step{
			{"follow-in", "by n3: health check passed", StateStarting, EventHealthy},
		}},
		{"prober held out by another prober", false, []step{
			{"down", "by n2: status 503", StateUnhealthy, EventUnhealthy},
			{"pass", "", StateUnhealthy, ""},
			{"down", "by n2: status 503", StateUnhealthy, ""},
			{"up", "by n2: health check passed", StateStarting, EventHealthy},
		}},
		{"own checks and another prober's both out", false, []step{
			{"fail", "", StateUnhealthy, EventUnhealthy},
			{"down", "by n2: status 503", StateUnhealthy, ""},
			{"up", "by n2: health check passed", StateUnhealthy, ""},
			{"pass", "", StateStarting, EventHealthy},
		}},
		{"following clears another prober's hold", false, []step{
			{"down", "by n2: status 503", StateUnhealthy, EventUnhealthy},
			{"follow-in", "by n2: health check passed", StateStarting, EventHealthy},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Policy{SlowStart: slowStart, InitiallyUnhealthy: tt.start}
			in, rec := newTest(t, 1, p)
			now := t0
			for i, s := range tt.steps {
				now += minute
				switch s.op {
				case "follow-in", "follow-out":
					in.FollowVerdict(s.op == "follow-in", s.reason, now)
				case "down", "up":
					in.SetFleetDown(s.op == "down", s.reason, now)
				case "pass":
					check(t, in, now, nil, 1, 1)
				case "fail":
					check(t, in, now, errors.New("status 500"), 1, 1)
				}
				st := in.Status()
				if st.State != s.want {
					t.Fatalf("step %d (%s): state %q (%s), want %q", i, s.op, st.State, st.Reason, s.want)
				}
				got := rec.take()
				switch {
				case s.event == "" && len(got) != 0:
					t.Fatalf("step %d (%s): changes %v, want none", i, s.op, events(got))
				case s.event != "" && (len(got) != 1 || got[0].Event != s.event):
					t.Fatalf("step %d (%s): changes %v, want %s", i, s.op, events(got), s.event)
				}
				if s.reason != "" && s.event != "" && st.Reason != s.reason {
					t.Errorf("step %d (%s): reason %q, want %q", i, s.op, st.Reason, s.reason)
				}
				if in.Healthy() != (s.want != StateUnhealthy) || in.Available() != in.Healthy() {
					t.Errorf("step %d (%s): healthy %v, available %v in state %s", i, s.op, in.Healthy(), in.Available(), st.State)
				}
			}
		})
	}
}
