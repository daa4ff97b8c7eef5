package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/health"
)

// Entry is one instance this node checks with its fleet: the fleet's
// side of the instance's health monitor (it implements health.Sharing).
// Round by round it decides whether this node probes the instance (it is
// one of its probers, or its probers' verdicts are not fresh) or follows
// the probers' verdicts; as a prober, it writes what it finds.
type Entry struct {
	s        *Session
	id       string // the instance's key in the fleet: a hash of its identity
	in       *backend.Instance
	app      string
	instance string // redacted URL, for the value of verdicts

	// Under s.view.mu.
	interval time.Duration // of the instance's checks
	probers  []string      // the members that probe it, best first
	prober   bool          // this node is one of them
	written  bool          // its verdict is written for the current state and lease
	wrote    bool          // a verdict of this node's is in etcd (to delete when it stops probing)
	healthy  bool          // the verdict last written
	lease    int64         // under which it was written
	probing  bool          // the last round probed here
	released bool
}

var _ health.Sharing = (*Entry)(nil)

// ID returns the fleet key of an instance of an identity (the same on
// every node with the same config: app, URL and health settings).
func ID(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return hex.EncodeToString(sum[:16])
}

// ShouldProbe implements health.Sharing: true while this node probes the
// instance; otherwise it applies the probers' verdict to it and returns
// false.
func (e *Entry) ShouldProbe() bool {
	d := e.decide()
	e.apply(d)
	return d.probe
}

// decide is what this node does about the instance now.
func (e *Entry) decide() decision {
	v := e.s.view
	now := backend.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.released {
		return decision{probe: true}
	}
	d := v.decideLocked(e, now)
	e.probing = d.probe
	return d
}

// apply makes d the instance's health, outside the view's lock: changes
// of state are logged and emitted by the instance's callbacks.
func (e *Entry) apply(d decision) {
	now := backend.Now()
	if d.probe {
		e.in.SetFleetDown(d.down, d.reason, now)
		return
	}
	e.in.FollowVerdict(d.healthy, d.reason, now)
}

// Probed implements health.Sharing: a prober writes its verdict when the
// instance's state as its own checks see it differs from the verdict it
// last wrote (or none is written under its current lease).
func (e *Entry) Probed(err error) {
	healthy := e.in.OwnHealthy()
	v := e.s.view
	v.mu.Lock()
	write := e.prober && !e.released && v.joined && (!e.written || e.healthy != healthy || e.lease != v.lease)
	if write {
		e.written, e.wrote, e.healthy, e.lease = true, true, healthy, v.lease
	}
	lease := v.lease
	v.mu.Unlock()
	if !write {
		return
	}
	reason := "health check passed"
	if !healthy {
		reason = "failing health checks"
		if err != nil {
			reason = err.Error()
		}
	}
	e.s.writer.put(e.id, &verdict{Node: e.s.node, Lease: lease, Healthy: healthy, Reason: reason,
		At: time.Now().UTC(), App: e.app, Instance: e.instance})
}

// Session returns the membership the entry belongs to.
func (e *Entry) Session() *Session { return e.s }

// SetInterval sets the interval of the instance's checks, which bounds
// how long a verdict of it stays fresh.
func (e *Entry) SetInterval(d time.Duration) {
	v := e.s.view
	v.mu.Lock()
	e.interval = d
	v.mu.Unlock()
}

// Release ends the instance's membership of the fleet's checks: it is no
// longer used, or no longer shared. Its verdict, if this node wrote one,
// is deleted.
func (e *Entry) Release() {
	v := e.s.view
	v.mu.Lock()
	if e.released {
		v.mu.Unlock()
		return
	}
	e.released = true
	if v.entries[e.id] == e {
		delete(v.entries, e.id)
	}
	wrote := e.wrote
	v.mu.Unlock()
	if wrote {
		e.s.writer.drop(e.id)
	}
}

// Status is what the report says of an instance in a fleet.
type Status struct {
	// Probers are the members that probe the instance, best first.
	Probers []string
	// Prober: this node is one of them. ProbedHere: this node probes it
	// now (as a prober, or because its probers' verdicts are not fresh).
	Prober, ProbedHere bool
	// VerdictBy is the prober whose verdict this node follows ("" while
	// it probes), VerdictAt when that verdict was written (by the
	// prober's clock), and Confirmed when this node last heard from that
	// prober (its verdict or a heartbeat).
	VerdictBy string
	VerdictAt time.Time
	Confirmed time.Time
}

// Status returns the instance's fleet status now.
func (e *Entry) Status() Status {
	v := e.s.view
	now := backend.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	st := Status{Probers: slices.Clone(e.probers), Prober: e.prober, ProbedHere: e.probing}
	if !e.probing {
		if d := v.decideLocked(e, now); !d.probe && d.by != nil {
			st.VerdictBy, st.VerdictAt = d.by.Node, d.by.At
			if m := v.members[d.by.Node]; m != nil {
				st.Confirmed = backend.WallTime(max(m.beat, d.by.received))
			}
		}
	}
	return st
}
