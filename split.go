package caddylb

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"

	"github.com/golb/caddy-lb/internal/cookie"
	"github.com/golb/caddy-lb/report"
)

// Splits: an app that splits its requests between pools (canary and
// blue-green deployments). A pool is an app of the same load_balancer with
// a name and no host: it has its instances, health checks, strategy and
// state of its own, reported and counted under its name, and the host
// apps that split to it choose it per request. Since a pool's instances
// keep their state across reloads like any app's, a reload that shifts
// the weights (5% to 50%) loses no health state.

// Splitting holds the options of an app that splits its requests.
type Splitting struct {
	// The pools this app's requests go to, with their weights: each
	// request goes to one of them, in proportion to the weights
	// (deterministically interleaved, so that any 100 requests of a 95/5
	// split hold 5 for the canary). A pool of weight 0 gets only the
	// requests pinned to it. An app that splits has no instances of its
	// own.
	Split SplitPools `json:"split,omitempty"`

	// A request header (split_header) or cookie (split_cookie) whose value
	// names one of the pools pins the request to that pool (for testers);
	// a value that names none is ignored.
	SplitHeader string `json:"split_header,omitempty"`
	SplitCookie string `json:"split_cookie,omitempty"`
}

// SplitPools are the pools of a split and their weights. In JSON, a list
// of {"pool": name, "weight": n}; in the Caddyfile, name and weight
// pairs: split stable 95 canary 5.
type SplitPools []SplitPool

// SplitPool is one pool of a split.
type SplitPool struct {
	// The name of a pool (an app with a name and no host) of the same
	// load_balancer.
	Pool string `json:"pool"`
	// Its share of the requests, relative to the others' (0 to 1,000,000).
	Weight int `json:"weight"`
}

// MaxSplitWeight is the largest weight of a pool in a split.
const MaxSplitWeight = 1_000_000

// maxSplitCycle bounds the length of a split's cycle (the sum of the
// weights over their greatest common divisor), which is its table's.
const maxSplitCycle = 10_000

// parseSplit reads the Caddyfile arguments of split: name weight pairs.
func parseSplit(args []string) (SplitPools, error) {
	if len(args) == 0 || len(args)%2 != 0 {
		return nil, fmt.Errorf("want pool names each followed by a weight (split stable 95 canary 5), got %s", countArgs(args))
	}
	var out SplitPools
	for i := 0; i < len(args); i += 2 {
		w, err := strconv.Atoi(args[i+1])
		if err != nil {
			return nil, fmt.Errorf("pool %q: weight: want an integer, got %q", args[i], args[i+1])
		}
		out = append(out, SplitPool{Pool: args[i], Weight: w})
	}
	return out, nil
}

// MarshalJSON writes the pools as a JSON list (also when empty).
func (s SplitPools) MarshalJSON() ([]byte, error) { return json.Marshal([]SplitPool(s)) }

// splitSettings is what compile makes of the options.
type splitSettings struct {
	pools  []string // the pools' names, as given
	weight []int
	cycle  []uint16 // indexes into pools, in the order of the requests
	header string   // canonical; "" for none
	cookie string
}

// compile checks the options of a split; the pools are found later, by
// resolve, when every app of the handler is compiled.
func (sp *Splitting) compile() (splitSettings, error) {
	var s splitSettings
	if len(sp.Split) == 0 {
		for _, o := range []struct{ name, v string }{{"split_header", sp.SplitHeader}, {"split_cookie", sp.SplitCookie}} {
			if o.v != "" {
				return s, optionError(o.name, fmt.Errorf("%w: it pins requests to a pool of the split, which is not set", ErrInapplicableOption))
			}
		}
		return s, nil
	}
	if len(sp.Split) > 1<<16-1 {
		return s, optionError("split", fmt.Errorf("%w: at most %d pools, got %d", ErrInvalidCount, 1<<16-1, len(sp.Split)))
	}
	seen := map[string]int{}
	total := 0
	for i, p := range sp.Split {
		if p.Pool == "" {
			return s, optionError(fmt.Sprintf("split[%d].pool", i), fmt.Errorf("%w: want the name of a pool", ErrUnknownPool))
		}
		if j, dup := seen[p.Pool]; dup {
			return s, optionError(fmt.Sprintf("split[%d].pool", i), fmt.Errorf("%w: %q is split[%d] already", ErrDuplicatePool, p.Pool, j))
		}
		seen[p.Pool] = i
		if p.Weight < 0 || p.Weight > MaxSplitWeight {
			return s, optionError(fmt.Sprintf("split[%d].weight", i), fmt.Errorf("%w: want an integer from 0 to %d, got %d", ErrInvalidWeight, MaxSplitWeight, p.Weight))
		}
		total += p.Weight
		s.pools = append(s.pools, p.Pool)
		s.weight = append(s.weight, p.Weight)
	}
	if total == 0 {
		return s, optionError("split", fmt.Errorf("%w: every pool has weight 0", ErrInvalidWeight))
	}
	var err error
	if s.cycle, err = splitCycle(s.weight); err != nil {
		return s, optionError("split", err)
	}
	if sp.SplitHeader != "" {
		s.header = textproto.CanonicalMIMEHeaderKey(sp.SplitHeader)
		if !httpguts.ValidHeaderFieldName(s.header) {
			return s, optionError("split_header", fmt.Errorf("%w: %q is not a header name", ErrInvalidHeader, sp.SplitHeader))
		}
	}
	if sp.SplitCookie != "" {
		if !validCookieName(sp.SplitCookie) {
			return s, optionError("split_cookie", fmt.Errorf("%w %q", ErrInvalidCookieName, sp.SplitCookie))
		}
		s.cookie = sp.SplitCookie
	}
	return s, nil
}

// splitCycle returns the order in which a split's requests go to its
// pools: a cycle of sum(weights)/gcd entries in which each pool appears in
// proportion to its weight, spread out (smooth weighted round robin, as
// nginx's), so that every stretch of requests is split as the weights
// say, not only the whole cycle.
func splitCycle(weights []int) ([]uint16, error) {
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	total := 0
	reduced := make([]int, len(weights))
	for i, w := range weights {
		reduced[i] = w / g
		total += reduced[i]
	}
	if total > maxSplitCycle {
		return nil, fmt.Errorf("%w: the weights over their greatest common divisor add up to %d, at most %d (use percentages, or per mille)", ErrInvalidWeight, total, maxSplitCycle)
	}
	cycle := make([]uint16, 0, total)
	current := make([]int, len(reduced))
	for range total {
		best := -1
		for i, w := range reduced {
			current[i] += w
			if w > 0 && (best < 0 || current[i] > current[best]) {
				best = i
			}
		}
		current[best] -= total
		cycle = append(cycle, uint16(best))
	}
	return cycle, nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// split is a compiled split with its pools found: what the request path
// uses.
type split struct {
	pools    []*App
	cycle    []uint16
	next     atomic.Uint64
	header   string
	cookie   string
	requests []atomic.Uint64 // by pool, the requests this split sent it
}

// resolveSplit finds the pools of app's split among the handler's pools
// (by name), or returns the error naming the split's field at fault.
func resolveSplit(app *App, pools map[string]*App) (*split, error) {
	s := app.splitting
	sp := &split{cycle: s.cycle, header: s.header, cookie: s.cookie, requests: make([]atomic.Uint64, len(s.pools))}
	for i, name := range s.pools {
		pool := pools[name]
		field := fmt.Sprintf("split[%d].pool", i)
		switch {
		case pool == nil:
			return nil, appError(app, field, fmt.Errorf("%w %q: no pool of this load_balancer has that name (a pool is an app with a name and no host)", ErrUnknownPool, name))
		case pool == app:
			return nil, appError(app, field, fmt.Errorf("%w: a pool cannot split to itself", ErrInvalidSplit))
		case len(pool.splitting.pools) > 0:
			return nil, appError(app, field, fmt.Errorf("%w: pool %q splits its requests itself; a split's pools must have instances", ErrInvalidSplit, name))
		}
		sp.pools = append(sp.pools, pool)
	}
	return sp, nil
}

// choose returns the index of the pool that serves r: the one its
// split_header or split_cookie names, else the one whose sticky cookie
// names an instance it has available (a client that landed on a pool
// stays there), else the next of the cycle.
func (sp *split) choose(r *http.Request) int {
	if sp.header != "" {
		if v := r.Header[sp.header]; len(v) > 0 {
			if i := sp.index(v[0]); i >= 0 {
				return i
			}
		}
	}
	if sp.cookie != "" {
		if v := cookie.Value(r.Header["Cookie"], sp.cookie); v != "" {
			if i := sp.index(v); i >= 0 {
				return i
			}
		}
	}
	for i, pool := range sp.pools {
		if pool.sticky != nil && pool.sticky.pinned(r, pool.members.Load()) != nil {
			return i
		}
	}
	n := sp.next.Add(1) - 1
	return int(sp.cycle[n%uint64(len(sp.cycle))])
}

// index returns the index of the pool named name, or -1.
func (sp *split) index(name string) int {
	for i, pool := range sp.pools {
		if pool.Name == name {
			return i
		}
	}
	return -1
}

// serve serves r with the pool choose picks.
func (sp *split) serve(w http.ResponseWriter, r *http.Request) error {
	i := sp.choose(r)
	sp.requests[i].Add(1)
	return sp.pools[i].route(w, r)
}

// reportTraffic describes the app's split and mirror for the report (nil
// for those it has not).
func (a *App) reportTraffic() ([]report.SplitPool, *report.Mirror) {
	var pools []report.SplitPool
	if sp := a.split; sp != nil {
		total := 0
		for _, w := range a.splitting.weight {
			total += w
		}
		for i, pool := range sp.pools {
			w := a.splitting.weight[i]
			pools = append(pools, report.SplitPool{Pool: pool.name, Weight: w, Percent: 100 * float64(w) / float64(total), Requests: sp.requests[i].Load()})
		}
	}
	var mr *report.Mirror
	if m := a.mirror; m != nil {
		mr = &report.Mirror{Pool: m.shadow.name, Percent: float64(m.ppm) / 10_000, Mirrored: m.mirrored.Load(),
			Dropped: m.dropped(), Failures: m.failures.Load(), Queued: len(m.queue)}
	}
	return pools, mr
}
