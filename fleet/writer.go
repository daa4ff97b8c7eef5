package fleet

import (
	"context"
	"encoding/json"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// maxOps bounds the operations of one transaction (etcd's default limit
// is 128).
const maxOps = 128

// writer writes this node's verdicts to etcd, off the health checks'
// path: a verdict waits in pending, the newest of each instance replacing
// the one before, until a write under the current lease succeeds; a
// failed write is tried again at the next heartbeat.
type writer struct {
	s       *Session
	pending map[string]*verdict // by instance id; nil: delete this node's verdict
	wake    chan struct{}
}

// put queues vd as this node's verdict of instance id.
func (w *writer) put(id string, vd *verdict) { w.queue(id, vd) }

// drop queues the deletion of this node's verdict of instance id.
func (w *writer) drop(id string) { w.queue(id, nil) }

// drops queues the deletion of the verdicts of entries.
func (w *writer) drops(entries []*Entry) {
	for _, e := range entries {
		w.drop(e.id)
	}
}

func (w *writer) queue(id string, vd *verdict) {
	v := w.s.view
	v.mu.Lock()
	w.pending[id] = vd
	v.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run writes what is pending until ctx ends.
func (w *writer) run(ctx context.Context) {
	tick := time.NewTicker(w.s.beat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-tick.C:
		}
		w.flush(ctx)
	}
}

// flush writes the pending verdicts, up to maxOps a transaction, under the
// current lease; those it could not write stay pending.
func (w *writer) flush(ctx context.Context) {
	for ctx.Err() == nil {
		v := w.s.view
		v.mu.Lock()
		lease := v.lease
		if !v.joined || len(w.pending) == 0 {
			v.mu.Unlock()
			return
		}
		ids := make([]string, 0, min(len(w.pending), maxOps))
		ops := make([]clientv3.Op, 0, cap(ids))
		batch := make(map[string]*verdict, cap(ids))
		for id, vd := range w.pending {
			if len(ids) == maxOps {
				break
			}
			key := w.s.prefix + verdictsDir + id + "/" + w.s.node
			if vd == nil {
				ops = append(ops, clientv3.OpDelete(key))
			} else {
				vd.Lease = lease
				value, _ := json.Marshal(vd)
				ops = append(ops, clientv3.OpPut(key, string(value), clientv3.WithLease(clientv3.LeaseID(lease))))
			}
			ids = append(ids, id)
			batch[id] = vd
		}
		v.mu.Unlock()

		tctx, cancel := context.WithTimeout(ctx, w.s.timeout)
		_, err := w.s.client.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				w.s.logger.Debug("fleet: writing verdicts failed; trying again", zap.Int("verdicts", len(ids)), zap.Error(err))
			}
			return
		}
		v.mu.Lock()
		for _, id := range ids {
			if w.pending[id] == batch[id] { // not replaced meanwhile
				delete(w.pending, id)
			}
			if batch[id] != nil {
				w.s.written.Add(1)
			}
		}
		v.mu.Unlock()
	}
}
