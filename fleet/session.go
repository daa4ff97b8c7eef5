package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
)

// Session is this process's membership of a fleet: its lease, its member
// key kept fresh by heartbeats, its watch of the other members and their
// verdicts, and the instances it checks with them. A Session outlives the
// configs that use it but the last (see App.Start): a reload that keeps
// the fleet's config keeps the membership.
type Session struct {
	node, prefix string
	ttl, beat    time.Duration
	timeout      time.Duration // of each etcd request
	client       *clientv3.Client
	logger       *zap.Logger

	view   *view
	writer writer

	cancel context.CancelFunc
	done   sync.WaitGroup

	received, written atomic.Uint64 // verdicts

	mu        sync.Mutex
	state     string // "joining", "joined" or why not
	listeners []*listener
}

// listener is how a config hears of changes of membership.
type listener struct {
	f func(Change)
}

// Change is a change of the fleet's membership, as this node sees it.
type Change struct {
	Node    string   // who came or went
	Joined  bool     // it came (else it left)
	Members []string // the members now, sorted
}

// newSession starts this node's membership of the fleet; the client is
// the session's to close.
func newSession(st settings, client *clientv3.Client, logger *zap.Logger) *Session {
	s := &Session{node: st.node, prefix: st.prefix, ttl: st.ttl, beat: st.beat, timeout: st.timeout,
		client: client, logger: logger, state: "joining"}
	s.view = newView(st.node, st.probers, st.beat)
	s.writer = writer{s: s, pending: map[string]*verdict{}, wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done.Go(func() { s.member(ctx) })
	s.done.Go(func() { s.watch(ctx) })
	s.done.Go(func() { s.writer.run(ctx) })
	return s
}

// Destruct leaves the fleet: the lease is revoked, so that the member key
// and this node's verdicts go at once (the others take its instances
// over), and the client is closed.
func (s *Session) Destruct() error {
	s.view.mu.Lock()
	s.view.closed = true
	lease := s.view.lease
	s.view.mu.Unlock()
	s.cancel()
	s.done.Wait()
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		_, _ = s.client.Revoke(ctx, clientv3.LeaseID(lease))
		cancel()
	}
	s.logger.Info("left the fleet", zap.String("node", s.node))
	return s.client.Close()
}

// Node returns this node's name in the fleet.
func (s *Session) Node() string { return s.node }

// Track makes the instance in, of identity (see ID), app and redacted URL,
// one that this node checks with the fleet, every interval, and returns
// its entry: its health monitor's Sharing. A second Track of the same
// identity replaces the first.
func (s *Session) Track(identity string, in *backend.Instance, app, instance string, interval time.Duration) *Entry {
	e := &Entry{s: s, id: ID(identity), in: in, app: app, instance: instance, interval: interval}
	v := s.view
	v.mu.Lock()
	if old := v.entries[e.id]; old != nil {
		old.released = true
	}
	v.entries[e.id] = e
	e.probers = rendezvous(v.names, e.id, v.probers, nil)
	e.prober = v.joined && slices.Contains(e.probers, v.self)
	v.mu.Unlock()
	return e
}

// member keeps this node a member: it takes a lease, creates its member
// key under it (waiting while another process holds the name), keeps the
// lease alive and writes a heartbeat every beat. When the lease is lost it
// starts again with a new one; while etcd cannot be reached it tries again
// every beat.
func (s *Session) member(ctx context.Context) {
	var stale clientv3.LeaseID // a lease given up but maybe not yet revoked
	for ctx.Err() == nil {
		err := s.joinOnce(ctx, &stale)
		if ctx.Err() != nil {
			return
		}
		s.leave(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.beat):
		}
	}
}

// joinOnce is one lease's membership; it returns why it ended. A lease it
// gives up and cannot revoke (etcd unreachable) is left in stale, to
// revoke before the next: a lease left behind would hold the node's name
// until it expires.
func (s *Session) joinOnce(ctx context.Context, stale *clientv3.LeaseID) error {
	if *stale != 0 {
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		_, err := s.client.Revoke(rctx, *stale)
		cancel()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("revoking the last lease: %w", err)
		}
		*stale = 0
	}
	gctx, cancel := context.WithTimeout(ctx, s.timeout)
	grant, err := s.client.Grant(gctx, int64(s.ttl/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	lease := grant.ID
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		if _, err := s.client.Revoke(rctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			*stale = lease
		}
		cancel()
	}()
	key := s.prefix + membersDir + s.node
	value, _ := json.Marshal(map[string]any{"node": s.node, "beat": 0})
	for {
		tctx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.client.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(lease))).
			Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("joining: %w", err)
		}
		if resp.Succeeded {
			break
		}
		s.setState(fmt.Sprintf("waiting: another process holds node name %q", s.node), true)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.beat):
		}
	}
	kctx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	alive, err := s.client.KeepAlive(kctx, lease)
	if err != nil {
		return fmt.Errorf("keeping the lease alive: %w", err)
	}
	now := backend.Now()
	v := s.view
	v.mu.Lock()
	v.joined, v.lease, v.beatOK = true, int64(lease), now
	v.setMemberLocked(s.node, int64(lease), now)
	dropped := v.assignLocked()
	v.mu.Unlock()
	s.writer.drops(dropped)
	s.setState("joined", false)

	tick := time.NewTicker(s.beat)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-alive:
			if !ok {
				return errors.New("lease lost")
			}
		case <-tick.C:
			value, _ := json.Marshal(map[string]any{"node": s.node, "beat": n})
			pctx, cancel := context.WithTimeout(ctx, s.beat)
			_, err := s.client.Put(pctx, key, string(value), clientv3.WithLease(lease))
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.setState("etcd unreachable: "+err.Error(), true)
				}
				continue
			}
			v.mu.Lock()
			v.beatOK = backend.Now()
			v.mu.Unlock()
			s.setState("joined", false)
			s.sweep()
		}
	}
}

// leave records that the membership ended, for why.
func (s *Session) leave(why error) {
	v := s.view
	v.mu.Lock()
	v.joined, v.lease = false, 0
	v.removeMemberLocked(s.node)
	v.assignLocked()
	v.mu.Unlock()
	s.setState("not a member: "+why.Error(), true)
}

// setState records the session's state, and logs it when it changes:
// warnings for troubles (probing every instance here meanwhile).
func (s *Session) setState(state string, trouble bool) {
	s.mu.Lock()
	old := s.state
	s.state = state
	s.mu.Unlock()
	if old == state {
		return
	}
	if trouble {
		s.logger.Warn("fleet: checks no longer shared: probing every instance here", zap.String("node", s.node), zap.String("state", state))
		return
	}
	s.logger.Info("fleet: checks shared", zap.String("node", s.node), zap.String("state", state))
}

// State returns the session's state: "joined", or why it is not.
func (s *Session) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Listen makes f hear of membership changes until the returned function
// is called. The newest listener hears them (see App.Start).
func (s *Session) Listen(f func(Change)) (stop func()) {
	l := &listener{f: f}
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.listeners = slices.DeleteFunc(s.listeners, func(x *listener) bool { return x == l })
		s.mu.Unlock()
	}
}

func (s *Session) notify(c Change) {
	s.mu.Lock()
	var f func(Change)
	if n := len(s.listeners); n > 0 {
		f = s.listeners[n-1].f
	}
	s.mu.Unlock()
	if f != nil {
		f(c)
	}
}

// sweep drops the members not heard from for a lease's time, as their
// lease would: a member killed leaves the fleet lease_ttl after its last
// heartbeat at the latest, whenever etcd gets round to expiring its lease.
// It runs after each heartbeat this node wrote: while this node cannot
// reach etcd, the others' silence says nothing of them.
func (s *Session) sweep() {
	now := backend.Now()
	v := s.view
	v.mu.Lock()
	before := slices.Clone(v.names)
	for _, name := range before {
		if m := v.members[name]; name != s.node && now-m.beat > int64(s.ttl) {
			v.removeMemberLocked(name)
		}
	}
	if len(v.names) == len(before) {
		v.mu.Unlock()
		return
	}
	after := slices.Clone(v.names)
	v.version++
	dropped := v.assignLocked()
	v.mu.Unlock()
	s.writer.drops(dropped)
	s.announce(membershipChanges(before, after), after)
}
