package discovery

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Watcher is a source that pushes its set of instances whenever it
// changes, as the etcd source does: Watch calls update with the first set
// it learns and each one after, or with an error (the set then being the
// last good one), until ctx ends. scheme is that of instances the source
// gives as host:port. Watch returns when ctx ends.
type Watcher interface {
	Watch(ctx context.Context, scheme string, update func(Set))
}

// Poller asks sources of Caddy's http.reverse_proxy.upstreams namespace
// (a, multi, third-party ones; srv as this package's SRV, which keeps the
// records' priorities and weights) for their upstreams every Refresh, and
// resolves the names among them through Resolver. The sources' own refresh
// still bounds how often they look up.
type Poller struct {
	// Sources are asked in order, their upstreams put together (what
	// multi does; a multi source is given as its sources).
	Sources []reverseproxy.UpstreamSource
	// Scheme of the instances: http, https or h2c.
	Scheme string
	// Refresh is the time between two polls.
	Refresh time.Duration
	// Timeout bounds each poll, lookups included.
	Timeout time.Duration
	// Resolver resolves the names the sources give.
	Resolver *Resolver
}

// Watch implements Watcher by polling: a first poll at once, then one every
// Refresh; update gets each set that differs from the last one sent, and
// each failure.
func (p *Poller) Watch(ctx context.Context, _ string, update func(Set)) {
	var last Set
	sent := false
	for {
		set := p.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if set.Err != nil {
			set.Instances, set.Updated, set.Skipped = last.Instances, last.Updated, last.Skipped
		}
		if !sent || set.Err != nil || last.Err != nil || !sameSet(set.Instances, last.Instances) || set.Skipped != last.Skipped {
			update(set)
			sent = true
		}
		last = set
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.Refresh):
		}
	}
}

// poll asks every source once.
func (p *Poller) poll(ctx context.Context) Set {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	r, err := pollRequest(ctx)
	if err != nil {
		return Set{Err: err}
	}
	var set Set
	seen := map[string]bool{}
	names := map[string]bool{}
	for _, src := range p.Sources {
		recs, err := records(src, r)
		if err != nil {
			return Set{Err: err}
		}
		for _, rec := range recs {
			u, err := InstanceURL(p.Scheme, rec.dial)
			if err != nil || seen[u.Host] {
				set.Skipped++
				continue
			}
			if host := u.Hostname(); !isIP(host) {
				if err := p.Resolver.Resolve(ctx, host); err != nil && !p.Resolver.Known(host) {
					set.Skipped++ // left out until it resolves
					continue
				}
				names[host] = true
			}
			seen[u.Host] = true
			in := NewInstance(u)
			in.Weight, in.Priority = rec.weight, rec.priority
			set.Instances = append(set.Instances, in)
		}
	}
	p.Resolver.Forget(names)
	// In a stable order: sources may answer in any (Go's SRV lookups
	// shuffle records of equal priority), and a set that only changed
	// order is no change.
	slices.SortFunc(set.Instances, func(a, b Instance) int { return strings.Compare(a.Key, b.Key) })
	set.Updated = time.Now()
	return set
}

// records returns what src gives: its records, from a source that gives
// weights and priorities (SRV), or else its upstreams' addresses, of
// weight 1 and priority 0.
func records(src reverseproxy.UpstreamSource, r *http.Request) ([]record, error) {
	if rs, ok := src.(recordSource); ok {
		return rs.lookup(r)
	}
	ups, err := src.GetUpstreams(r)
	if err != nil {
		return nil, err
	}
	recs := make([]record, len(ups))
	for i, up := range ups {
		recs[i] = record{dial: up.Dial, weight: 1}
	}
	return recs, nil
}

// pollRequest is the request the sources are asked with: Caddy's sources
// read its context's replacer (for placeholders in their config), and
// look up within its context.
func pollRequest(ctx context.Context) (*http.Request, error) {
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	return http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/", nil)
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// sameSet reports whether a and b are the same instances with the same
// weights, priorities and drain flags, in the same order.
func sameSet(a, b []Instance) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || a[i].Weight != b[i].Weight || a[i].Priority != b[i].Priority || a[i].Draining != b[i].Draining {
			return false
		}
	}
	return true
}

// ResolversOf returns the DNS servers a source looks up through, as its
// config gives them (Caddy's a and srv sources: their resolvers option);
// none for the machine's resolver.
func ResolversOf(src reverseproxy.UpstreamSource) []string {
	switch s := src.(type) {
	case *reverseproxy.SRVUpstreams:
		if s.Resolver != nil {
			return s.Resolver.Addresses
		}
	case *reverseproxy.AUpstreams:
		if s.Resolver != nil {
			return s.Resolver.Addresses
		}
	}
	return nil
}
