package strategy

import (
	"math/rand/v2"
	"sync/atomic"
)

// NewSeeded is NewWithOptions with a seeded random source, for tests that
// want the same draws on every run. The strategy is then not safe for
// concurrent use.
func NewSeeded(name string, opts Options, seed uint64) (Strategy, error) {
	s, err := NewWithOptions(name, opts)
	if err != nil {
		return nil, err
	}
	if r, ok := s.(interface{ setSource(rand.Source) }); ok {
		r.setSource(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	}
	return s, nil
}

func (g *rng) setSource(src rand.Source) { g.src = src }

// FakeClock is a settable clock for least_latency, in backend.Now's units.
type FakeClock struct{ ns atomic.Int64 }

func (c *FakeClock) Now() int64       { return c.ns.Load() }
func (c *FakeClock) Set(ns int64)     { c.ns.Store(ns) }
func (c *FakeClock) Advance(ns int64) { c.ns.Add(ns) }

// SetClock makes a least_latency strategy read time from c.
func SetClock(s Strategy, c *FakeClock) { s.(*LeastLatency).now = c.Now }

// SetScheduleLimits lowers round_robin's schedule bounds for a test and
// returns a function that restores them.
func SetScheduleLimits(entries, work uint64) (restore func()) {
	e, w := maxSchedule, maxScheduleWork
	maxSchedule, maxScheduleWork = entries, work
	return func() { maxSchedule, maxScheduleWork = e, w }
}

// HashKey and InstanceRank expose the hash strategy's functions to tests.
var HashKey = hashKey

// SetRoundRobinCounter sets where a round_robin strategy's counter stands.
func SetRoundRobinCounter(s Strategy, c uint64) { s.(*RoundRobin).next.Store(c) }
