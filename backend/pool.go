package backend

import "sync/atomic"

// epoch counts health changes of every instance in the process. A Pool
// compares it with the epoch of its cached list of available instances, so
// the request path pays one atomic load to know the list is current.
var epoch atomic.Uint64

// Pool is the ordered set of instances of one app. Make it with NewPool.
type Pool struct {
	all       []*Instance
	available atomic.Pointer[availableList]
}

type availableList struct {
	epoch     uint64
	instances []*Instance
}

// NewPool returns a pool of the given instances, in that order.
func NewPool(instances ...*Instance) *Pool {
	p := &Pool{all: instances}
	// A list no epoch matches: the first Available builds the real one.
	p.available.Store(&availableList{epoch: ^uint64(0)})
	return p
}

// All returns every instance of the pool in config order, available or not.
// Callers must not modify the slice.
func (p *Pool) All() []*Instance { return p.all }

// Available returns the instances that may receive new requests (healthy,
// weight above 0), in config order. Callers must not modify it.
//
// The list is rebuilt only after some instance's health changed, so this
// allocates nothing in the steady state. A rebuild that finds the same
// instances available returns the very same slice, so a strategy may key
// what it derives from the list (a schedule, a sampling table) on the
// slice's identity. (Rebuilds racing each other may hand out equal
// contents in two slices; that costs the strategy one more derivation.)
func (p *Pool) Available() []*Instance {
	if cur := p.available.Load(); cur.epoch == epoch.Load() {
		return cur.instances
	}
	return p.rebuild()
}

// rebuild is Available's slow path, apart to keep the common path short.
func (p *Pool) rebuild() []*Instance {
	// Rebuilding under the epoch read before it means a health change that
	// races with the rebuild leaves this list stale for one call at most:
	// the next call sees a newer epoch and rebuilds again.
	e := epoch.Load()
	cur := p.available.Load()
	var list []*Instance
	if cur.epoch != ^uint64(0) && p.unchanged(cur.instances) {
		list = cur.instances
	} else {
		list = make([]*Instance, 0, len(p.all))
		for _, in := range p.all {
			if in.Available() {
				list = append(list, in)
			}
		}
	}
	p.available.Store(&availableList{epoch: e, instances: list})
	return list
}

// unchanged reports whether list is still exactly the available instances.
func (p *Pool) unchanged(list []*Instance) bool {
	i := 0
	for _, in := range p.all {
		if !in.Available() {
			continue
		}
		if i == len(list) || list[i] != in {
			return false
		}
		i++
	}
	return i == len(list)
}
