package backend

// Verdicts of other load balancers. In a fleet that shares health checks
// (see package fleet), an instance is probed by a few nodes, which share
// what they find; the other nodes follow their verdicts instead of
// probing. Passive checks, ejection and max_requests stay each node's own.

// FollowVerdict makes the instance's active health the verdict of checks
// made elsewhere (healthy or not, for reason), at now, for a node that
// does not probe the instance itself: as if its own checks had come to
// it, the streaks counted by the node that probes. It clears what
// SetFleetDown set. It reports whether the instance went in or out.
func (in *Instance) FollowVerdict(healthy bool, reason string, now int64) (changed bool) {
	in.mu.Lock()
	in.st.checked = true
	f := in.flags.Load()
	wasUp := f&down == 0
	if f&flagFleetDown != 0 {
		in.flags.And(^flagFleetDown)
		epoch.Add(1)
	}
	in.setActiveLocked(healthy, reason, now)
	c, changed := in.wentLocked(wasUp, healthy, reason, now)
	in.mu.Unlock()
	if changed {
		in.notify(c)
	}
	return changed
}

// SetFleetDown takes the instance out (down) for reason, or lets it back
// in, at now, beside its own checks: for a node that probes the instance
// itself while another node that probes it finds it failing. The
// instance is in only when its own checks pass and no such verdict holds
// it out. It reports whether the instance went in or out.
func (in *Instance) SetFleetDown(isDown bool, reason string, now int64) (changed bool) {
	in.mu.Lock()
	f := in.flags.Load()
	if (f&flagFleetDown != 0) == isDown {
		in.mu.Unlock()
		return false
	}
	wasUp := f&down == 0
	if isDown {
		in.flags.Or(flagFleetDown)
	} else {
		in.flags.And(^flagFleetDown)
	}
	epoch.Add(1)
	isUp := in.flags.Load()&down == 0
	if !isDown && !isUp {
		reason = in.st.reason // still out, by its own checks
	}
	c, changed := in.wentLocked(wasUp, isUp, reason, now)
	in.mu.Unlock()
	if changed {
		in.notify(c)
	}
	return changed
}

// wentLocked records that the instance's health went from wasUp to isUp,
// for reason, at now, and returns the change to report, if any: in, it
// ramps up (slow start) unless ejected; out, its ramp ends.
func (in *Instance) wentLocked(wasUp, isUp bool, reason string, now int64) (Change, bool) {
	if wasUp == isUp {
		return Change{}, false
	}
	in.st.reason, in.st.changedAt = reason, now
	if !isUp {
		in.stopRampLocked()
		return Change{Event: EventUnhealthy, Reason: reason}, true
	}
	if in.flags.Load()&flagEjected == 0 {
		in.startRampLocked(now)
	}
	return Change{Event: EventHealthy, Reason: reason}, true
}

// OwnHealthy reports whether the instance passes its own active health
// checks, whatever other nodes of its fleet find: what a node that probes
// it tells the others.
func (in *Instance) OwnHealthy() bool { return in.flags.Load()&flagUnhealthy == 0 }
