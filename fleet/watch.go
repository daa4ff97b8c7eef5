package fleet

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
)

// watch follows the fleet's keys: it lists the prefix, then watches it
// from the next revision (no change between the two is missed), and lists
// again when the watch breaks (etcd unreachable, no leader, a compacted
// revision). While it cannot, the members' heartbeats go unseen, their
// verdicts grow stale, and this node probes its instances itself.
func (s *Session) watch(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.watchOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.logger.Debug("fleet: watch ended; listing again", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.beat):
		}
	}
}

// watchOnce lists, then watches until the watch ends, and returns why.
func (s *Session) watchOnce(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 4*s.timeout)
	resp, err := s.client.Get(lctx, s.prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("listing %s: %w", s.prefix, err)
	}
	s.relist(resp.Kvs)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.client.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		s.apply(wr.Events)
	}
	return fmt.Errorf("watch of %s closed", s.prefix)
}

// relist replaces what this node knows of the fleet with a listing.
func (s *Session) relist(kvs []*mvccpb.KeyValue) {
	now := backend.Now()
	v := s.view
	v.mu.Lock()
	before := slices.Clone(v.names)
	for _, name := range before {
		if name != s.node || !v.joined {
			v.removeMemberLocked(name)
		}
	}
	clear(v.verdicts)
	for _, kv := range kvs {
		s.putLocked(kv, now)
	}
	after := slices.Clone(v.names)
	changes := membershipChanges(before, after)
	var dropped []*Entry
	if len(changes) > 0 {
		v.version++
		dropped = v.assignLocked()
	}
	entries := make([]*Entry, 0, len(v.entries))
	for _, e := range v.entries {
		entries = append(entries, e)
	}
	v.mu.Unlock()
	s.writer.drops(dropped)
	s.announce(changes, after)
	for _, e := range entries {
		e.apply(e.decide())
	}
}

// apply applies a batch of watch events, in order, and then what they
// change: assignments, if the membership changed, and the health of the
// instances whose verdicts changed.
func (s *Session) apply(events []*clientv3.Event) {
	now := backend.Now()
	v := s.view
	v.mu.Lock()
	before := slices.Clone(v.names)
	touched := map[string]bool{}
	for _, ev := range events {
		isMember, id, node, ok := parseKey(s.prefix, string(ev.Kv.Key))
		if !ok {
			continue
		}
		switch {
		case ev.Type == clientv3.EventTypePut:
			if id = s.putLocked(ev.Kv, now); id != "" {
				touched[id] = true
			}
		case isMember:
			if node != s.node || !v.joined {
				v.removeMemberLocked(node)
			}
		default:
			v.setVerdictLocked(id, node, nil)
			touched[id] = true
		}
	}
	after := slices.Clone(v.names)
	changes := membershipChanges(before, after)
	var dropped []*Entry
	if len(changes) > 0 {
		v.version++
		dropped = v.assignLocked()
	}
	var entries []*Entry
	if len(changes) > 0 {
		for _, e := range v.entries {
			entries = append(entries, e)
		}
	} else {
		for id := range touched {
			if e := v.entries[id]; e != nil {
				entries = append(entries, e)
			}
		}
	}
	v.mu.Unlock()
	s.writer.drops(dropped)
	s.announce(changes, after)
	for _, e := range entries {
		e.apply(e.decide())
	}
}

// putLocked records a key that was put: a member's (its heartbeat), or a
// verdict, whose instance id it returns.
func (s *Session) putLocked(kv *mvccpb.KeyValue, now int64) (id string) {
	isMember, id, node, ok := parseKey(s.prefix, string(kv.Key))
	if !ok {
		return ""
	}
	v := s.view
	if isMember {
		if node == s.node && (!v.joined || kv.Lease != v.lease) {
			return "" // this name's key of another process, or of a lease this node gave up
		}
		v.setMemberLocked(node, kv.Lease, now)
		return ""
	}
	vd, err := parseVerdict(node, kv.Value)
	if err != nil {
		s.logger.Warn("fleet: skipping a malformed verdict", zap.String("key", string(kv.Key)), zap.Error(err))
		return ""
	}
	vd.Lease, vd.received = kv.Lease, now
	v.setVerdictLocked(id, node, vd)
	if node != s.node {
		s.received.Add(1)
	}
	return id
}

// membershipChanges lists who came and went between two sorted lists of
// members.
func membershipChanges(before, after []string) []Change {
	var out []Change
	for _, n := range after {
		if _, found := slices.BinarySearch(before, n); !found {
			out = append(out, Change{Node: n, Joined: true})
		}
	}
	for _, n := range before {
		if _, found := slices.BinarySearch(after, n); !found {
			out = append(out, Change{Node: n})
		}
	}
	return out
}

// announce logs and reports each change of membership, with the members
// after all of them.
func (s *Session) announce(changes []Change, members []string) {
	for _, c := range changes {
		c.Members = members
		msg := "fleet member left"
		if c.Joined {
			msg = "fleet member joined"
		}
		s.logger.Info(msg, zap.String("node", s.node), zap.String("member", c.Node), zap.Strings("members", members))
		s.notify(c)
	}
}
