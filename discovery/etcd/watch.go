package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/discovery"
)

// maxWeight bounds the weights of values, as the load balancer does.
const maxWeight = 1_000_000

// retryWait bounds the wait before listing again after a failure.
const retryWait = 2 * time.Second

// coalesceWait is how long changes must pause before a new set is
// published.
const coalesceWait = 20 * time.Millisecond

// Watch implements discovery.Watcher: it lists the prefix, then watches
// it from the next revision, and calls update with the set after the
// listing and after each batch of changes. When etcd cannot be reached (or
// the watch breaks: no leader, a compacted revision) update gets the error
// with the last set, and the listing is tried again.
func (s *Source) Watch(ctx context.Context, scheme string, update func(discovery.Set)) {
	w := &watch{s: s, scheme: scheme, update: update, entries: map[string]entry{}}
	for ctx.Err() == nil {
		err := w.run(ctx)
		if ctx.Err() != nil {
			return
		}
		w.fail(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryWait):
		}
	}
}

// watch is the state of one Watch.
type watch struct {
	s       *Source
	scheme  string
	update  func(discovery.Set)
	entries map[string]entry // by key
	keys    []string         // of entries, sorted
	updated time.Time
}

// entry is one key's instance, or why its value was skipped.
type entry struct {
	in      discovery.Instance
	skipped bool
}

// run lists the prefix and watches it until the watch ends, and returns
// why it ended.
func (w *watch) run(ctx context.Context) error {
	s := w.s
	lctx, cancel := context.WithTimeout(ctx, s.timeout)
	resp, err := s.client.Get(lctx, s.Prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("listing %s: %w", s.Prefix, err)
	}
	w.entries = make(map[string]entry, len(resp.Kvs))
	w.keys = w.keys[:0]
	for _, kv := range resp.Kvs {
		w.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	w.publish()

	// A watch served by a member cut off from the leader is cancelled
	// rather than left silent, and the client moves to another member.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	watch := s.client.Watch(wctx, s.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	// The client retries a lost connection on its own, with the watch
	// silent meanwhile: a read every dial_timeout tells that etcd cannot
	// be reached.
	tick := time.NewTicker(s.timeout)
	defer tick.Stop()
	// Changes are published once they pause for coalesceWait: a burst of
	// them (a deployment replacing many instances) makes one new set.
	coalesce := time.NewTimer(time.Hour)
	coalesce.Stop()
	defer coalesce.Stop()
	for {
		select {
		case <-coalesce.C:
			w.publish()
		case <-tick.C:
			rctx, rcancel := context.WithTimeout(ctx, s.timeout)
			_, err := s.client.Get(rctx, s.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			rcancel()
			if err != nil {
				return fmt.Errorf("reaching etcd: %w", err)
			}
		case wr, ok := <-watch:
			if !ok {
				return errors.New("watch ended")
			}
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					return fmt.Errorf("watching %s: revision compacted, listing again", s.Prefix)
				}
				return fmt.Errorf("watching %s: %w", s.Prefix, err)
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					w.remove(key)
					continue
				}
				w.put(key, ev.Kv.Value, ev.Kv.ModRevision)
			}
			if len(wr.Events) > 0 {
				coalesce.Reset(coalesceWait)
			}
		}
	}
}

// put sets the entry of key from its value at revision rev; a malformed
// value skips the key, with one warning per key and revision.
func (w *watch) put(key string, value []byte, rev int64) {
	if _, ok := w.entries[key]; !ok {
		i, _ := slices.BinarySearch(w.keys, key)
		w.keys = slices.Insert(w.keys, i, key)
	}
	in, err := parseValue(value, w.scheme)
	if err != nil {
		w.s.logger.Warn("skipping a malformed value", zap.String("key", key), zap.Int64("revision", rev), zap.Error(err))
		w.entries[key] = entry{skipped: true}
		return
	}
	w.entries[key] = entry{in: in}
}

// remove drops the entry of key.
func (w *watch) remove(key string) {
	if _, ok := w.entries[key]; !ok {
		return
	}
	delete(w.entries, key)
	if i, found := slices.BinarySearch(w.keys, key); found {
		w.keys = slices.Delete(w.keys, i, i+1)
	}
}

// set returns the current set: the instances by key order, each URL once
// (the first key wins).
func (w *watch) set() discovery.Set {
	set := discovery.Set{Instances: make([]discovery.Instance, 0, len(w.keys))}
	seen := make(map[string]bool, len(w.keys))
	for _, k := range w.keys {
		e := w.entries[k]
		if e.skipped || seen[e.in.Key] {
			set.Skipped++
			continue
		}
		seen[e.in.Key] = true
		set.Instances = append(set.Instances, e.in)
	}
	return set
}

// publish hands the current set to update.
func (w *watch) publish() {
	set := w.set()
	set.Updated = time.Now()
	w.updated = set.Updated
	w.update(set)
}

// fail hands the last set to update with err.
func (w *watch) fail(err error) {
	set := discovery.Set{}
	if !w.updated.IsZero() {
		set = w.set()
	}
	set.Err, set.Updated = err, w.updated
	w.update(set)
}

// value is the JSON form of a value.
type value struct {
	URL      string `json:"url"`
	Weight   *int   `json:"weight,omitempty"`
	Draining bool   `json:"draining,omitempty"`
}

// parseValue reads a value: a URL, an address (host:port, with scheme), or
// a JSON object {"url": ..., "weight": ..., "draining": ...}.
func parseValue(raw []byte, scheme string) (discovery.Instance, error) {
	s := strings.TrimSpace(string(raw))
	v := value{URL: s}
	if strings.HasPrefix(s, "{") {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		v = value{}
		if err := dec.Decode(&v); err != nil {
			return discovery.Instance{}, fmt.Errorf("bad JSON: %v", err)
		}
	}
	in := discovery.Instance{Weight: 1, Draining: v.Draining}
	if v.Weight != nil {
		if *v.Weight < 0 || *v.Weight > maxWeight {
			return in, fmt.Errorf("weight %d: want 0 to %d", *v.Weight, maxWeight)
		}
		in.Weight = *v.Weight
	}
	u, err := instanceURL(v.URL, scheme)
	if err != nil {
		return in, err
	}
	in.URL, in.Key = u, u.String()
	return in, nil
}

// instanceURL parses the URL of a value: with a scheme (http, https or
// h2c) and a host and port, or an address taking scheme.
func instanceURL(raw, scheme string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("no URL")
	}
	if !strings.Contains(raw, "://") {
		return discovery.InstanceURL(scheme, raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("URL %q: %v", raw, err)
	}
	if err := discovery.CheckScheme(u.Scheme); err != nil {
		return nil, fmt.Errorf("URL %q: %w", raw, err)
	}
	if u.Hostname() == "" || u.Port() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("URL %q: want scheme://host:port[/path]", raw)
	}
	return u, nil
}
