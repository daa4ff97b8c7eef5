package health

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// The worker pool: up to poolSize workers run rounds as they come due;
// when all are busy for handOffWait, another is started (slow instances
// hold a worker each until their timeout, and must not delay the checks
// of the others). Workers beyond poolSize end one by one after
// shrinkAfter without a start. maxTick bounds the batching of rounds (see
// run).
const (
	poolSize    = 64
	handOffWait = 20 * time.Millisecond
	shrinkAfter = 10 * time.Second
	maxTick     = 50 * time.Millisecond
)

// schedule runs the rounds of every monitor of the process: one goroutine
// keeps the monitors in order of their next round (a heap: one timer for
// all of them) and hands each due round to a worker of the pool. It runs
// while there are monitors, and its workers end with it.
var schedule scheduler

type scheduler struct {
	mu      sync.Mutex
	queue   monitorQueue
	running bool
	wake    chan struct{} // the earliest round changed

	// The pool, for the run goroutine and its workers.
	work      chan *Monitor // to an idle worker
	quit      chan struct{} // closed when the schedule stops
	workers   atomic.Int64
	lastStart atomic.Int64 // backend.Now when the pool last grew past poolSize
}

// add puts m in the schedule, its first round due at due (backend.Now
// time).
func (s *scheduler) add(m *Monitor, due int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.due = due
	s.queue.push(m)
	if !s.running {
		s.running = true
		s.wake = make(chan struct{}, 1)
		s.work = make(chan *Monitor)
		s.quit = make(chan struct{})
		go s.run(s.wake, s.work, s.quit)
		return
	}
	if m.index == 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// remove takes m out of the schedule; a round of it already handed to a
// worker still runs (and finds m stopped).
func (s *scheduler) remove(m *Monitor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.index >= 0 {
		s.queue.remove(m.index)
	}
}

// run is the schedule's goroutine. It ends when no monitor is left.
func (s *scheduler) run(wake <-chan struct{}, work chan *Monitor, quit chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*Monitor
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.running = false
			close(quit)
			s.mu.Unlock()
			return
		}
		now := backend.Now()
		due = due[:0]
		for len(s.queue) > 0 && s.queue[0].due <= now {
			m := s.queue[0].m
			m.due = now + int64(m.interval())
			s.queue.fix(0)
			due = append(due, m)
		}
		wait := time.Duration(s.queue[0].due - now)
		// Rounds are run in batches, a tick apart: an instance is checked
		// up to a tick late (at most a twentieth of its interval), and the
		// process wakes once per batch rather than once per check, which
		// makes each check cheaper.
		wait = max(wait, min(maxTick, s.queue[0].m.spec.Load().Interval/20))
		s.mu.Unlock()

		for _, m := range due {
			s.handOff(m, work, quit, timer)
		}
		if len(due) > 0 {
			continue // more may have come due meanwhile
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-wake:
			timer.Stop()
		}
	}
}

// handOff gives m's round to an idle worker, or to a new one if the pool
// is not full, or if no worker took it within handOffWait.
func (s *scheduler) handOff(m *Monitor, work chan *Monitor, quit <-chan struct{}, timer *time.Timer) {
	select {
	case work <- m:
		return
	default:
	}
	if s.workers.Load() < poolSize {
		s.workers.Add(1)
		go s.worker(m, work, quit)
		return
	}
	timer.Reset(handOffWait)
	select {
	case work <- m:
		timer.Stop()
	case <-timer.C:
		s.workers.Add(1)
		s.lastStart.Store(backend.Now())
		go s.worker(m, work, quit)
	}
}

// worker runs rounds, first m's, with buffers of its own, until the
// schedule stops or the pool shrinks.
func (s *scheduler) worker(m *Monitor, work <-chan *Monitor, quit <-chan struct{}) {
	b := getBuffers()
	defer putBuffers(b)
	for {
		m.round(b)
		if s.retire() {
			return
		}
		select {
		case m = <-work:
		case <-quit:
			s.workers.Add(-1)
			return
		}
	}
}

// retire counts a worker out of the pool if the pool has more than
// poolSize and has not needed to grow for shrinkAfter.
func (s *scheduler) retire() bool {
	n := s.workers.Load()
	return n > poolSize && backend.Now()-s.lastStart.Load() > int64(shrinkAfter) && s.workers.CompareAndSwap(n, n-1)
}

// monitorQueue is a 4-ary min-heap of monitors by their next round, the
// keys kept beside the pointers so that ordering reads no monitor.
type monitorQueue []queued

type queued struct {
	due int64
	m   *Monitor
}

func (q *monitorQueue) push(m *Monitor) {
	*q = append(*q, queued{m.due, m})
	m.index = len(*q) - 1
	q.up(m.index)
}

// remove takes out the monitor at i.
func (q *monitorQueue) remove(i int) {
	h := *q
	last := len(h) - 1
	h[i].m.index = -1
	if i != last {
		h[i] = h[last]
		h[i].m.index = i
	}
	h[last] = queued{}
	*q = h[:last]
	if i != last {
		q.fix(i)
	}
}

// fix restores the order after the key of the monitor at i changed.
func (q *monitorQueue) fix(i int) {
	(*q)[i].due = (*q)[i].m.due
	if !q.down(i) {
		q.up(i)
	}
}

func (q monitorQueue) up(i int) {
	for i > 0 {
		parent := (i - 1) / 4
		if q[parent].due <= q[i].due {
			return
		}
		q.swap(i, parent)
		i = parent
	}
}

func (q monitorQueue) down(i int) bool {
	start := i
	for {
		least := i
		for c := 4*i + 1; c <= 4*i+4 && c < len(q); c++ {
			if q[c].due < q[least].due {
				least = c
			}
		}
		if least == i {
			return i > start
		}
		q.swap(i, least)
		i = least
	}
}

func (q monitorQueue) swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].m.index, q[j].m.index = i, j
}
