package caddylb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
)

// Defaults and bounds of overload protection.
const (
	DefaultQueueTimeout = time.Second
	// MaxRequestLimit bounds max_requests and max_queue.
	MaxRequestLimit = 1000000
)

// Overload holds the options of overload protection (HAProxy's maxconn
// per server and its queue, Envoy's circuit breakers' max_requests and
// max_pending_requests): a limit on each instance's requests in flight,
// and a queue in front of the limits.
type Overload struct {
	// The most requests an instance serves at once; one at its limit is
	// not picked by any strategy. Real requests only (not health checks);
	// slow start scales it down with the weight. 0 to 1000000; 0 (the
	// default): no limit. "auto": a limit per instance that follows its
	// capacity, learnt from its answers and latencies (see
	// backend/limit.go), within max_requests_min and max_requests_max.
	MaxRequests *RequestLimit `json:"max_requests,omitempty"`

	// The bounds of an automatic max_requests. Only with max_requests
	// auto. Defaults: 1 and 1000.
	MaxRequestsMin *int `json:"max_requests_min,omitempty"`
	MaxRequestsMax *int `json:"max_requests_max,omitempty"`

	// How many requests may wait, first in first out, when every available
	// instance is at max_requests; a freed slot goes to the oldest. A
	// request that finds the queue full, or waits queue_timeout, gets 503
	// with Retry-After: 1. Only with max_requests. 0 to 1000000; 0 (the
	// default): no queue, such requests get that 503 at once.
	MaxQueue *int `json:"max_queue,omitempty"`

	// The longest a request waits in the queue. Only with max_queue.
	// Default: 1s.
	QueueTimeout *Duration `json:"queue_timeout,omitempty"`
}

// overloadSettings are an Overload, checked, with defaults.
type overloadSettings struct {
	limit            int  // per instance; 0: none (or auto)
	auto             bool // max_requests auto
	autoMin, autoMax int
	queue            int // waiting requests; 0: none
	queueTimeout     time.Duration
}

// on reports whether the instances have a limit, fixed or automatic.
func (s *overloadSettings) on() bool { return s.limit > 0 || s.auto }

// of returns the limit of in now (0: none), before slow start scales it.
func (s *overloadSettings) of(in *backend.Instance) int {
	if s.auto {
		return in.AutoLimit()
	}
	return s.limit
}

func (o *Overload) compile() (s overloadSettings, err error) {
	if o.MaxRequests != nil && o.MaxRequests.Auto {
		s.auto = true
	} else if o.MaxRequests != nil {
		if s.limit, err = count(&o.MaxRequests.N, 0, 0, MaxRequestLimit); err != nil {
			return s, optionError("max_requests", err)
		}
	}
	if err := s.compileAuto(o); err != nil {
		return s, err
	}
	if s.queue, err = count(o.MaxQueue, 0, 0, MaxRequestLimit); err != nil {
		return s, optionError("max_queue", err)
	}
	if s.queueTimeout, err = positive(o.QueueTimeout, DefaultQueueTimeout); err != nil {
		return s, optionError("queue_timeout", err)
	}
	if s.queue > 0 && !s.on() {
		return s, optionError("max_queue", fmt.Errorf("%w: requests queue for instances at max_requests, which is not set", ErrInapplicableOption))
	}
	if o.QueueTimeout != nil && s.queue == 0 {
		return s, optionError("queue_timeout", fmt.Errorf("%w: it bounds the wait in the queue, which needs max_queue", ErrInapplicableOption))
	}
	return s, nil
}

// Why a request was turned away for overload.
var (
	errQueueFull    = errors.New("every instance is at max_requests and the queue is full")
	errQueueTimeout = errors.New("every instance is at max_requests and the request waited queue_timeout")
	errAtLimit      = errors.New("every instance is at max_requests")
)

// requestQueue holds the requests of an app waiting for an instance under
// its limit, first in first out. A waiter tries to take an instance only
// when it is at the head; a freed slot wakes the head, and a head that took
// one (or left) wakes the next, so that every freed slot reaches a waiter.
// Newcomers queue behind waiters rather than take a freed slot (no
// barging).
type requestQueue struct {
	max     int
	timeout time.Duration

	mu         sync.Mutex
	head, tail *waiter      // a list: joining and leaving cost the same however long it is
	length     atomic.Int64 // waiters, read without the lock
}

type waiter struct {
	wake       chan struct{} // buffered: a wake-up is never lost
	prev, next *waiter
	queued     bool // in the list
}

// waiting reports whether requests are queued.
func (q *requestQueue) waiting() bool { return q.length.Load() > 0 }

// headPoll is how often the head of a queue tries again unwoken. Slots
// freed in this app wake it at once; but instances are shared by the
// configs that have them, and a slot freed by a request of another
// config (the one before a reload, or another handler's app of the same
// instance) wakes nobody here.
const headPoll = 20 * time.Millisecond

// wait queues the caller until try (which takes an instance, and reports
// whether it did) succeeds as the head of the queue, the timeout passes,
// the queue is full, or ctx ends.
func (q *requestQueue) wait(ctx context.Context, try func() bool) error {
	w := &waiter{wake: make(chan struct{}, 1)}
	q.mu.Lock()
	n := q.length.Load()
	if n >= int64(q.max) {
		q.mu.Unlock()
		return errQueueFull
	}
	w.prev, w.queued = q.tail, true
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.length.Store(n + 1)
	head := q.head == w
	q.mu.Unlock()
	timer := time.NewTimer(q.timeout)
	defer timer.Stop()
	var poll *time.Ticker
	var polled <-chan time.Time // nil, so never ready, until w is the head
	defer func() {
		if poll != nil {
			poll.Stop()
		}
	}()
	for {
		if head {
			if try() {
				q.leave(w)
				return nil
			}
			if poll == nil {
				poll = time.NewTicker(headPoll)
				polled = poll.C
			}
		}
		select {
		case <-w.wake:
			head = true // only the head is woken
		case <-polled:
		case <-timer.C:
			q.leave(w)
			return errQueueTimeout
		case <-ctx.Done():
			q.leave(w)
			return ctx.Err()
		}
	}
}

// leave takes w out of the queue, and wakes the new head if w was the
// head: a slot w took or left may not be the last one free.
func (q *requestQueue) leave(w *waiter) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !w.queued {
		return
	}
	w.queued = false
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	wasHead := w.prev == nil
	w.prev, w.next = nil, nil
	q.length.Add(-1)
	if wasHead {
		q.wakeHeadLocked()
	}
}

// freed wakes the head of the queue, if any: a slot was freed.
func (q *requestQueue) freed() {
	if !q.waiting() {
		return
	}
	q.mu.Lock()
	q.wakeHeadLocked()
	q.mu.Unlock()
}

// wakeHeadLocked wakes the head of the queue, if any; q.mu is held.
func (q *requestQueue) wakeHeadLocked() {
	if q.head != nil {
		q.head.signal()
	}
}

func (w *waiter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// overload is what an app keeps of its overload protection at run time.
type overload struct {
	queue    *requestQueue // nil without max_queue
	rejected atomic.Uint64 // requests turned away, in all
	lastLog  atomic.Int64  // backend.Now of the last "rejected" log line
	logged   atomic.Uint64 // rejected when it was written
	waits    backend.Histogram
}

// errRejected says that reject answered the request.
var errRejected = errors.New("rejected for overload")

// reject turns a request away for overload: 503 with Retry-After: 1 and
// a plain-text body naming the app and why, counted, and logged at most
// once a second. It writes the response itself, and returns errRejected,
// rather than return a Caddy error, which Caddy would log once per
// request, at error level: under overload, the one thing not to do per
// request.
func (a *App) reject(w http.ResponseWriter, why error) error {
	n := a.overload.rejected.Add(1)
	now := backend.Now()
	if last := a.overload.lastLog.Load(); (last == 0 || now-last >= int64(time.Second)) && a.overload.lastLog.CompareAndSwap(last, now) {
		since := n - a.overload.logged.Swap(n)
		a.logger.Warn("requests rejected: overloaded", zap.String("app", a.name), zap.String("reason", why.Error()),
			zap.Uint64("rejected", since), zap.Uint64("rejected_total", n))
	}
	h := w.Header()
	h["Retry-After"] = retryAfter
	h["Content-Type"] = plainText
	h["X-Content-Type-Options"] = nosniff
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = fmt.Fprintf(w, "503 Service Unavailable: app %q: %v\n", a.name, why)
	return errRejected
}

// Header values of rejections, shared (never modified).
var (
	retryAfter = []string{"1"}
	plainText  = []string{"text/plain; charset=utf-8"}
	nosniff    = []string{"nosniff"}
)

// queued returns the requests waiting now.
func (a *App) queued() int {
	if a.overload.queue == nil {
		return 0
	}
	return int(a.overload.queue.length.Load())
}
