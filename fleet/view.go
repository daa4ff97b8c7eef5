package fleet

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// view is what one node knows of its fleet: the live members, the
// verdicts they wrote, and the instances this node tracks. Times are
// local (backend.Now's base): a member's heartbeat counts from when this
// node saw it, never from a remote clock.
type view struct {
	mu       sync.Mutex
	self     string
	probers  int
	members  map[string]*member
	names    []string                       // of members, sorted
	verdicts map[string]map[string]*verdict // by instance id, then by node
	entries  map[string]*Entry              // by instance id

	joined  bool  // this node is a member under lease
	lease   int64 // its lease, while joined
	beatOK  int64 // when its last heartbeat was written; 0: never
	beat    time.Duration
	closed  bool
	version uint64 // bumped by every change of membership
}

// member is a live member of the fleet.
type member struct {
	lease int64 // the lease its keys live under
	beat  int64 // when this node last saw it write its member key
}

// verdict is what a prober found of an instance, as it wrote it.
type verdict struct {
	Node     string    `json:"node"`
	Lease    int64     `json:"lease"`
	Healthy  bool      `json:"healthy"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
	App      string    `json:"app,omitempty"`
	Instance string    `json:"instance,omitempty"`

	received int64 // when this node read it
}

func newView(self string, probers int, beat time.Duration) *view {
	return &view{self: self, probers: probers, beat: beat,
		members: map[string]*member{}, verdicts: map[string]map[string]*verdict{}, entries: map[string]*Entry{}}
}

// setMemberLocked records that node is a member under lease, seen at now,
// and reports whether it is new.
func (v *view) setMemberLocked(node string, lease, now int64) bool {
	m := v.members[node]
	if m != nil {
		m.lease, m.beat = lease, now
		return false
	}
	v.members[node] = &member{lease: lease, beat: now}
	i, _ := slices.BinarySearch(v.names, node)
	v.names = slices.Insert(v.names, i, node)
	return true
}

// removeMemberLocked forgets node, and reports whether it was a member.
func (v *view) removeMemberLocked(node string) bool {
	if v.members[node] == nil {
		return false
	}
	delete(v.members, node)
	if i, ok := slices.BinarySearch(v.names, node); ok {
		v.names = slices.Delete(v.names, i, i+1)
	}
	return true
}

// setVerdictLocked records node's verdict of instance id (nil: it deleted
// it).
func (v *view) setVerdictLocked(id, node string, vd *verdict) {
	if vd == nil {
		if m := v.verdicts[id]; m != nil {
			delete(m, node)
			if len(m) == 0 {
				delete(v.verdicts, id)
			}
		}
		return
	}
	m := v.verdicts[id]
	if m == nil {
		m = map[string]*verdict{}
		v.verdicts[id] = m
	}
	m[node] = vd
}

// assignLocked computes the probers of every entry from the members, and
// returns the entries this node stopped probing (their verdicts are to be
// deleted).
func (v *view) assignLocked() (dropped []*Entry) {
	for _, e := range v.entries {
		was := e.prober
		e.probers = rendezvous(v.names, e.id, v.probers, e.probers[:0])
		e.prober = v.joined && slices.Contains(e.probers, v.self)
		if was != e.prober {
			e.written = false
			if was && e.wrote {
				dropped = append(dropped, e)
				e.wrote = false
			}
		}
	}
	return dropped
}

// sharingLocked reports whether the fleet shares checks at now: this node
// is a member whose heartbeats reach etcd, and instances have probers.
// Otherwise every node probes every instance itself, as without a fleet.
func (v *view) sharingLocked(now int64) bool {
	return !v.closed && v.joined && v.probers > 0 && now-v.beatOK <= int64(3*v.beat)
}

// decision is what a node does about one of its instances in one round.
type decision struct {
	// probe: this node checks the instance itself (a prober, or no fresh
	// verdict of its probers). Otherwise its health is healthy, by the
	// probers' verdicts.
	probe   bool
	healthy bool
	// down: it probes as one of the probers, and another prober's fresh
	// verdict says the instance fails.
	down   bool
	reason string
	by     *verdict // the verdict followed, if any
}

// decideLocked is what this node does about e at now. A verdict is fresh
// while it comes from a current prober of the instance under the lease
// it is a member by, and that prober wrote it or a heartbeat within the
// last three check intervals (or heartbeats, if longer).
func (v *view) decideLocked(e *Entry, now int64) decision {
	if !v.sharingLocked(now) {
		return decision{probe: true}
	}
	window := int64(3 * max(e.interval, v.beat))
	var fresh []*verdict
	for _, p := range e.probers {
		if p == v.self {
			continue
		}
		m, vd := v.members[p], v.verdicts[e.id][p]
		if m == nil || vd == nil || vd.Lease != m.lease || now-max(m.beat, vd.received) > window {
			continue
		}
		fresh = append(fresh, vd)
	}
	var failing *verdict
	for _, vd := range fresh {
		if !vd.Healthy {
			failing = vd
			break
		}
	}
	if e.prober {
		d := decision{probe: true, down: failing != nil}
		if failing != nil {
			d.reason, d.by = "by fleet node "+failing.Node+": "+failing.Reason, failing
		}
		return d
	}
	if len(fresh) == 0 {
		return decision{probe: true}
	}
	if failing != nil {
		return decision{reason: "by fleet node " + failing.Node + ": " + failing.Reason, by: failing}
	}
	newest := slices.MaxFunc(fresh, func(a, b *verdict) int { return a.At.Compare(b.At) })
	return decision{healthy: true, reason: "by fleet node " + newest.Node + ": " + newest.Reason, by: newest}
}

// rendezvous appends to dst the k members with the highest scores for
// instance id (fewer if there are fewer members), highest first: highest
// random weight hashing, so that a member coming or going moves only the
// instances it takes or had.
func rendezvous(members []string, id string, k int, dst []string) []string {
	type scored struct {
		score uint64
		name  string
	}
	top := make([]scored, 0, k+1)
	for _, name := range members {
		s := scored{score(name, id), name}
		i, _ := slices.BinarySearchFunc(top, s, func(a, b scored) int {
			if c := cmp.Compare(b.score, a.score); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
		if i >= k {
			continue
		}
		top = slices.Insert(top, i, s)
		if len(top) > k {
			top = top[:k]
		}
	}
	for _, s := range top {
		dst = append(dst, s.name)
	}
	return dst
}

// score is member's weight for instance id: FNV-1a over both, mixed so
// that similar names spread (splitmix64's finalizer). Every node computes
// the same.
func score(member, id string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(member); i++ {
		h = (h ^ uint64(member[i])) * prime
	}
	h = (h ^ 0) * prime
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Keys of the fleet in etcd, under its prefix.
const (
	membersDir  = "members/"
	verdictsDir = "verdicts/"
)

// parseKey splits a key under prefix into what it is: a member (node),
// or a verdict (id and node); ok is false for any other key.
func parseKey(prefix, key string) (isMember bool, id, node string, ok bool) {
	rest, found := strings.CutPrefix(key, prefix)
	if !found {
		return false, "", "", false
	}
	if node, found := strings.CutPrefix(rest, membersDir); found {
		return true, "", node, node != "" && !strings.Contains(node, "/")
	}
	if rest, found := strings.CutPrefix(rest, verdictsDir); found {
		id, node, found := strings.Cut(rest, "/")
		return false, id, node, found && id != "" && node != "" && !strings.Contains(node, "/")
	}
	return false, "", "", false
}

// parseVerdict reads a verdict's value, written by node.
func parseVerdict(node string, value []byte) (*verdict, error) {
	var vd verdict
	if err := json.Unmarshal(value, &vd); err != nil {
		return nil, fmt.Errorf("verdict of %s: %v", node, err)
	}
	vd.Node = node
	return &vd, nil
}
