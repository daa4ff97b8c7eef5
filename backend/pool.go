package backend

import "sync/atomic"

// epoch counts health changes of every instance in the process. A Pool
// compares it with the epoch of its cached list of available instances, so
// the request path pays one atomic load to know the list is current.
var epoch atomic.Uint64

// Pool is the ordered set of instances of one app.
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
	return &Pool{all: instances}
}

// All returns every instance of the pool in config order, healthy or not.
// Callers must not modify the slice.
func (p *Pool) All() []*Instance { return p.all }

// Available returns the instances that may receive new requests, in config
// order. The list is rebuilt only after some instance's health changed, so
// this allocates nothing in the steady state. Callers must not modify it.
func (p *Pool) Available() []*Instance {
	e := epoch.Load()
	if cur := p.available.Load(); cur != nil && cur.epoch == e {
		return cur.instances
	}
	// Rebuilding under the epoch read before it means a health change that
	// races with the rebuild leaves this list stale for one call at most:
	// the next call sees a newer epoch and rebuilds again.
	list := make([]*Instance, 0, len(p.all))
	for _, in := range p.all {
		if in.Healthy() {
			list = append(list, in)
		}
	}
	p.available.Store(&availableList{epoch: e, instances: list})
	return list
}
