package fleet

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestRendezvous: the probers of an instance are the same whatever the
// order members are listed in; a member joining takes slots only for
// itself (about k/(N+1) of the instances), and one leaving gives up only
// its own.
func TestRendezvous(t *testing.T) {
	members := []string{"n1", "n2", "n3", "n4"}
	const k, instances = 2, 2000
	taken := 0
	for i := range instances {
		id := ID(fmt.Sprintf("app\x00http://10.0.0.%d:8080\x00", i))
		four := rendezvous(members, id, k, nil)
		if len(four) != k || four[0] == four[1] {
			t.Fatalf("instance %d: probers %v, want %d distinct", i, four, k)
		}
		if shuffled := rendezvous([]string{"n3", "n1", "n4", "n2"}, id, k, nil); !slices.Equal(shuffled, four) {
			t.Fatalf("instance %d: probers %v, %v with the members in another order", i, four, shuffled)
		}
		five := rendezvous(append(slices.Clone(members), "n5"), id, k, nil)
		for _, p := range five {
			if !slices.Contains(four, p) && p != "n5" {
				t.Fatalf("instance %d: a fifth member moved a slot to %s (%v → %v)", i, p, four, five)
			}
		}
		if slices.Contains(five, "n5") {
			taken++
		}
		three := rendezvous([]string{"n1", "n3", "n4"}, id, k, nil) // n2 left
		for _, p := range four {
			if p != "n2" && !slices.Contains(three, p) {
				t.Fatalf("instance %d: n2 leaving took %s off it (%v → %v)", i, p, four, three)
			}
		}
	}
	// A newcomer is one of k probers of k/(N+1) of the instances: 40%.
	if share := float64(taken) / instances; share < 0.35 || share > 0.45 {
		t.Errorf("a fifth member took %.1f%% of the instances, want about 40%%", 100*share)
	}
	if got := rendezvous([]string{"n1"}, "x", 2, nil); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("one member, 2 probers: %v", got)
	}
}

// TestDecide: which verdicts a node trusts, and what it does with them.
func TestDecide(t *testing.T) {
	const (
		interval = time.Second
		beat     = 100 * time.Millisecond
		now      = int64(100 * time.Second)
	)
	fresh, stale := now-int64(2*interval), now-int64(4*interval)
	healthy := func(node string, lease, at int64) *verdict {
		return &verdict{Node: node, Lease: lease, Healthy: true, Reason: "health check passed", received: at}
	}
	failing := func(node string, lease, at int64) *verdict {
		return &verdict{Node: node, Lease: lease, Healthy: false, Reason: "status 503", received: at}
	}
	type member struct {
		lease, beat int64
	}
	tests := []struct {
		name     string
		self     string
		joined   bool
		beatOK   int64
		members  map[string]member
		verdicts []*verdict
		want     decision
	}{
		{"not joined: probe", "n3", false, now, nil, nil, decision{probe: true}},
		{"own heartbeats failing: probe", "n3", true, now - int64(4*beat), map[string]member{"n1": {1, now}, "n2": {2, now}},
			[]*verdict{healthy("n1", 1, now)}, decision{probe: true}},
		{"a fresh healthy verdict: follow", "n3", true, now, map[string]member{"n1": {1, fresh}, "n2": {2, fresh}},
			[]*verdict{healthy("n1", 1, fresh), healthy("n2", 2, fresh)}, decision{healthy: true}},
		{"one prober says failing: out", "n3", true, now, map[string]member{"n1": {1, fresh}, "n2": {2, fresh}},
			[]*verdict{healthy("n1", 1, fresh), failing("n2", 2, fresh)}, decision{}},
		{"verdicts stale: probe", "n3", true, now, map[string]member{"n1": {1, stale}, "n2": {2, stale}},
			[]*verdict{healthy("n1", 1, stale), healthy("n2", 2, stale)}, decision{probe: true}},
		{"an old verdict, a fresh heartbeat: follow", "n3", true, now, map[string]member{"n1": {1, now}, "n2": {2, stale}},
			[]*verdict{healthy("n1", 1, stale)}, decision{healthy: true}},
		{"a verdict of another lease: probe", "n3", true, now, map[string]member{"n1": {7, now}, "n2": {2, now}},
			[]*verdict{healthy("n1", 1, now)}, decision{probe: true}},
		{"no verdict yet: probe", "n3", true, now, map[string]member{"n1": {1, now}, "n2": {2, now}}, nil, decision{probe: true}},
		{"a prober itself: probe, held out by the other", "n1", true, now, map[string]member{"n1": {1, now}, "n2": {2, now}},
			[]*verdict{failing("n2", 2, now)}, decision{probe: true, down: true}},
		{"a prober itself, the other's verdict stale: probe", "n1", true, now, map[string]member{"n1": {1, now}, "n2": {2, stale}},
			[]*verdict{failing("n2", 2, stale)}, decision{probe: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newView(tt.self, 2, beat)
			v.joined, v.beatOK = tt.joined, tt.beatOK
			for name, m := range tt.members {
				v.setMemberLocked(name, m.lease, m.beat)
			}
			e := &Entry{id: "x", interval: interval, probers: []string{"n1", "n2"}, prober: tt.self == "n1" || tt.self == "n2"}
			for _, vd := range tt.verdicts {
				v.setVerdictLocked("x", vd.Node, vd)
			}
			got := v.decideLocked(e, now)
			if got.probe != tt.want.probe || got.healthy != tt.want.healthy || got.down != tt.want.down {
				t.Errorf("decision %+v, want probe %v, healthy %v, down %v", got, tt.want.probe, tt.want.healthy, tt.want.down)
			}
			if !got.probe && got.by == nil || got.down && got.by == nil {
				t.Errorf("decision %+v names no verdict", got)
			}
		})
	}
}

// TestParseKey: the fleet's keys, and others under its prefix.
func TestParseKey(t *testing.T) {
	tests := []struct {
		key      string
		isMember bool
		id, node string
		ok       bool
	}{
		{"/f/members/n1", true, "", "n1", true},
		{"/f/verdicts/abc/n2", false, "abc", "n2", true},
		{"/f/members/", true, "", "", false},
		{"/f/verdicts/abc", false, "abc", "", false},
		{"/f/verdicts/abc/n2/x", false, "abc", "n2/x", false},
		{"/f/other/x", false, "", "", false},
		{"/g/members/n1", false, "", "", false},
	}
	for _, tt := range tests {
		isMember, id, node, ok := parseKey("/f/", tt.key)
		if ok != tt.ok || ok && (isMember != tt.isMember || id != tt.id || node != tt.node) {
			t.Errorf("parseKey(%q) = %v %q %q %v, want %v %q %q %v", tt.key, isMember, id, node, ok, tt.isMember, tt.id, tt.node, tt.ok)
		}
	}
}
