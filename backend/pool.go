package backend

import (
	"sync"
	"sync/atomic"
)

// epoch counts the changes of state of every instance in the process. A Pool
// compares it with the epoch of its cached list of available instances, so
// the request path pays one atomic load to know the list is current.
var epoch atomic.Uint64

// Pool is the ordered set of instances of one app. Make it with NewPool.
// Its members may change (SetInstances) while it is used.
type Pool struct {
	members   atomic.Pointer[memberSet]
	available atomic.Pointer[availableList]

	// panicThreshold, in percent: below that share of available
	// instances, the pool offers all of them. 0: never.
	panicThreshold int
	// failoverThreshold, in percent: a tier with a smaller share of its
	// instances available hands over to the next. 0: only a tier with
	// none available does (see tier.go).
	failoverThreshold int

	tiers tierWatch // the active tier as last announced

	ejectMu sync.Mutex // serializes ejections, for MaxEjectedPercent

	outlierCounts map[*Instance]outlierCounts // at the last sweep, under ejectMu
	sweeps        atomic.Uint64
}

type availableList struct {
	epoch     uint64
	instances []*Instance
	weights   []int64 // the instances' selection weights when listed
	panicking bool
	tier      int         // the priority of the tier instances are of
	fallback  []*Instance // the available instances of the worse tiers, best first
}

// NewPool returns a pool of the given instances, in that order, all of
// priority 0 (one tier).
func NewPool(instances ...*Instance) *Pool {
	p := new(Pool)
	p.members.Store(newMemberSet(instances, nil))
	// A list no epoch matches: the first Available builds the real one.
	p.available.Store(&availableList{epoch: ^uint64(0)})
	return p
}

// SetPanicThreshold sets the pool's panic threshold, in percent: when
// fewer than that share of its instances (not counting those draining or
// of weight 0) are available, Available lists all of them, and Admit lets
// requests go to ejected ones. 0 turns it off. Set it before the pool is
// used.
func (p *Pool) SetPanicThreshold(percent int) { p.panicThreshold = percent }

// All returns every instance of the pool in config order, available or not.
// Callers must not modify the slice.
func (p *Pool) All() []*Instance { return p.members.Load().all }

// SetInstances makes instances the pool's members, in that order, from
// now on, all of priority 0. The pool keeps the slice: callers must not
// modify it. Requests under way on an instance that left finish as they
// would.
func (p *Pool) SetInstances(instances []*Instance) { p.SetMembers(instances, nil) }

// Available returns the instances of the active tier (see tier.go) that
// may receive new requests (healthy, not draining, weight above 0,
// ejected ones only for their trial request), in config order, or in
// panic (see SetPanicThreshold) every instance of that tier not draining
// of weight above 0. With one tier, the active tier is the whole pool.
// Callers must not modify it.
//
// The list is rebuilt only after some instance's state changed, so this
// allocates nothing in the steady state. A rebuild that finds the same
// instances with the same weights returns the very same slice, so a
// strategy may key what it derives from the list (a schedule, a sampling
// table) on the slice's identity. (Rebuilds racing each other may hand out
// equal contents in two slices; that costs the strategy one more
// derivation.)
func (p *Pool) Available() []*Instance {
	if cur := p.available.Load(); cur.epoch == epoch.Load() {
		return cur.instances
	}
	return p.rebuild().instances
}

// Panicking reports whether the pool is in panic: too few of its
// instances are available, so it offers all of them.
func (p *Pool) Panicking() bool {
	if cur := p.available.Load(); cur.epoch == epoch.Load() {
		return cur.panicking
	}
	return p.rebuild().panicking
}

// Admit is Instance.Admit with the pool's panic state.
func (p *Pool) Admit(in *Instance) (ok, trial bool) {
	if ok, trial = in.Admit(false); ok {
		return ok, trial
	}
	return p.Panicking(), false
}

// Failed records a request in failed, at now, for reason; trial says it
// was the ejected instance's trial request (see Instance.Admit). After the
// policy's MaxFails consecutive failures the instance is ejected, unless
// MaxEjectedPercent of the pool's instances are ejected already (at least
// one may always be): the ones still in take the traffic.
func (p *Pool) Failed(in *Instance, now int64, reason string, trial bool) {
	p.ejectMu.Lock()
	defer p.ejectMu.Unlock()
	in.failed(now, reason, trial, p.roomFor(in))
}

// rebuild is Available's slow path, apart to keep the common path short.
func (p *Pool) rebuild() *availableList {
	// Rebuilding under the epoch read before it means a change that races
	// with the rebuild leaves this list stale for one call at most: the
	// next call sees a newer epoch and rebuilds again.
	e := epoch.Load()
	cur := p.available.Load()
	next := p.choose(p.members.Load())
	next.epoch = e
	if cur.epoch != ^uint64(0) && sameList(cur, next.instances) {
		next.instances, next.weights = cur.instances, cur.weights
	} else {
		next.weights = make([]int64, len(next.instances))
		for i, in := range next.instances {
			next.weights[i] = in.selWeight.Load()
		}
	}
	p.available.Store(next)
	p.tiers.observe(e, next.tier)
	return next
}

// eligible reports whether in counts among its tier's instances for the
// thresholds: weight above 0 and not draining.
func eligible(in *Instance) bool {
	return in.selWeight.Load() > 0 && in.flags.Load()&flagDraining == 0
}

// sameList reports whether list holds the instances of cur, with the
// selection weights they had when cur was built.
func sameList(cur *availableList, list []*Instance) bool {
	if len(cur.instances) != len(list) {
		return false
	}
	for i, in := range list {
		if cur.instances[i] != in || cur.weights[i] != in.selWeight.Load() {
			return false
		}
	}
	return true
}
