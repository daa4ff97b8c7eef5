package backend

import (
	"slices"
	"sync"
)

// Failover tiers. Each member of a pool has a priority: 0 (the default)
// is the first tier, higher numbers are backup tiers, as in DNS SRV where
// lower is preferred. A pool serves from one tier at a time, its active
// tier: the best (lowest priority) tier that qualifies, where a tier
// qualifies when at least one of its instances is available and
//
//   - with a failover threshold (SetFailoverThreshold), at least that
//     share of its instances is available (Envoy's priority levels, as a
//     whole tier: below the threshold, the next tier takes all);
//   - with a panic threshold (SetPanicThreshold), at least that share of
//     its instances is available too: a tier that would panic hands over
//     to a next one in better health first.
//
// Without a failover threshold a tier qualifies while it has any
// available instance (HAProxy's backup servers). If no tier qualifies,
// the best tier with any available instance is active, in panic if the
// panic threshold says so; if none has one, the best tier with an
// instance not draining of weight above 0 (then in panic, with a panic
// threshold, or with nothing available). The shares count the instances
// that are not draining and of weight above 0, as the panic threshold
// does: a drain is the operator's choice, not a failure.
//
// The choice is made when the pool's list of available instances is
// rebuilt (after a change of some instance's state), so it costs the
// request path nothing; a pool of one tier chooses that tier.

// memberSet is a pool's members at one time.
type memberSet struct {
	all        []*Instance // in config order
	priorities []int       // parallel to all
	tiers      []tier      // by priority, ascending; at least one
}

// tier is the members of one priority, in config order.
type tier struct {
	priority  int
	instances []*Instance
}

// newMemberSet groups instances by priorities (parallel to instances; nil
// means all 0).
func newMemberSet(instances []*Instance, priorities []int) *memberSet {
	if priorities == nil {
		priorities = make([]int, len(instances))
	}
	s := &memberSet{all: instances, priorities: priorities}
	distinct := slices.Compact(slices.Sorted(slices.Values(priorities)))
	if len(distinct) <= 1 {
		prio := 0
		if len(distinct) == 1 {
			prio = distinct[0]
		}
		s.tiers = []tier{{priority: prio, instances: instances}}
		return s
	}
	s.tiers = make([]tier, len(distinct))
	for i, prio := range distinct {
		s.tiers[i].priority = prio
	}
	for i, in := range instances {
		t, _ := slices.BinarySearchFunc(s.tiers, priorities[i], func(t tier, prio int) int { return t.priority - prio })
		s.tiers[t].instances = append(s.tiers[t].instances, in)
	}
	return s
}

// SetMembers makes instances the pool's members, in that order, from now
// on, each with the priority at the same index of priorities (nil: all
// 0). The pool keeps both slices: callers must not modify them. Requests
// under way on an instance that left finish as they would.
func (p *Pool) SetMembers(instances []*Instance, priorities []int) {
	if priorities != nil && len(priorities) != len(instances) {
		panic("backend: SetMembers: priorities and instances differ in length")
	}
	p.members.Store(newMemberSet(instances, priorities))
	epoch.Add(1)
}

// Members returns every instance of the pool in config order and their
// priorities (parallel to it), read together. Callers must not modify
// them.
func (p *Pool) Members() (instances []*Instance, priorities []int) {
	s := p.members.Load()
	return s.all, s.priorities
}

// Tiers returns the number of distinct priorities among the pool's
// members (1 for a pool without members).
func (p *Pool) Tiers() int { return len(p.members.Load().tiers) }

// SetFailoverThreshold sets the pool's failover threshold, in percent
// (1-100): a tier with a smaller share of its instances available hands
// over to the next tier. 0 (the default): only a tier with none
// available does. Set it before the pool is used.
func (p *Pool) SetFailoverThreshold(percent int) { p.failoverThreshold = percent }

// SetOnTierChange sets f, called with the priorities of the tier that was
// active and of the one that is, each time the active tier changes (not
// for the first choice). Calls are serialized, in the order of the
// changes; f must not call the pool. Set it before the pool is used.
func (p *Pool) SetOnTierChange(f func(from, to int)) { p.tiers.onChange = f }

// ActiveTier returns the priority of the tier the pool serves from now.
func (p *Pool) ActiveTier() int {
	if cur := p.available.Load(); cur.epoch == epoch.Load() {
		return cur.tier
	}
	return p.rebuild().tier
}

// Fallback returns the available instances of the tiers after the active
// one, best tier first and each tier in config order: where a retry goes
// once every available instance of the active tier was tried. Empty with
// one tier. Callers must not modify it.
func (p *Pool) Fallback() []*Instance {
	if cur := p.available.Load(); cur.epoch == epoch.Load() {
		return cur.fallback
	}
	return p.rebuild().fallback
}

// choose returns the list of s's active tier (see above), its epoch and
// weights left for rebuild to fill in.
func (p *Pool) choose(s *memberSet) *availableList {
	if len(s.tiers) == 1 {
		return p.tierList(&s.tiers[0])
	}
	chosen, withAvailable, withEligible := -1, -1, -1
	for i := range s.tiers {
		available, eligibleN := s.tiers[i].counts()
		if available > 0 && withAvailable < 0 {
			withAvailable = i
		}
		if eligibleN > 0 && withEligible < 0 {
			withEligible = i
		}
		if p.qualifies(available, eligibleN) {
			chosen = i
			break
		}
	}
	switch {
	case chosen >= 0:
	case withAvailable >= 0:
		chosen = withAvailable
	case withEligible >= 0:
		chosen = withEligible
	default:
		chosen = 0
	}
	next := p.tierList(&s.tiers[chosen])
	for i := chosen + 1; i < len(s.tiers); i++ {
		for _, in := range s.tiers[i].instances {
			if eligible(in) && in.Available() {
				next.fallback = append(next.fallback, in)
			}
		}
	}
	return next
}

// qualifies reports whether a tier with available of its eligible
// instances available may serve while a worse tier waits.
func (p *Pool) qualifies(available, eligible int) bool {
	if available == 0 {
		return false
	}
	if p.failoverThreshold > 0 && available*100 < p.failoverThreshold*eligible {
		return false
	}
	return p.panicThreshold == 0 || available*100 >= p.panicThreshold*eligible
}

// counts returns how many of t's instances are available and how many
// eligible.
func (t *tier) counts() (available, eligibleN int) {
	for _, in := range t.instances {
		if !eligible(in) {
			continue
		}
		eligibleN++
		if in.Available() {
			available++
		}
	}
	return available, eligibleN
}

// tierList returns the list of t's available instances, or of its
// eligible ones in panic.
func (p *Pool) tierList(t *tier) *availableList {
	list := make([]*Instance, 0, len(t.instances))
	eligibleN := 0
	for _, in := range t.instances {
		if !eligible(in) {
			continue
		}
		eligibleN++
		if in.Available() {
			list = append(list, in)
		}
	}
	panicking := false
	if p.panicThreshold > 0 && len(list)*100 < p.panicThreshold*eligibleN {
		panicking = true
		list = list[:0]
		for _, in := range t.instances {
			if eligible(in) {
				list = append(list, in)
			}
		}
	}
	return &availableList{instances: list, panicking: panicking, tier: t.priority}
}

// tierWatch announces the changes of a pool's active tier.
type tierWatch struct {
	onChange func(from, to int)

	mu    sync.Mutex
	seen  bool   // a tier was chosen already
	epoch uint64 // of the last choice observed
	tier  int    // its priority
}

// observe records that the list of epoch e has tier active, and reports a
// change unless a list of a later epoch was observed already (a rebuild
// that raced with a newer one).
func (w *tierWatch) observe(e uint64, active int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen && e < w.epoch {
		return
	}
	from, changed := w.tier, w.seen && w.tier != active
	w.seen, w.epoch, w.tier = true, e, active
	if changed && w.onChange != nil {
		w.onChange(from, active)
	}
}
