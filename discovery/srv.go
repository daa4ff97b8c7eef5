package discovery

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// SRV is Caddy's srv source (reverseproxy.SRVUpstreams) looked up by this
// package, because Caddy's drops what the records say besides the target:
// here an SRV record's priority gives its instance's priority, its
// failover tier, and its weight the instance's weight, RFC 2782's weight 0
// (the least) counting as 1. As RFC 2782 gives priorities a meaning only
// relative to each other, the tier is the priority's rank among those of
// the answer: the lowest priority is tier 0 (the first tier, shared with
// configured instances of priority 0), the next tier 1, and so on. An
// answer whose records all have one priority is one tier 0, whatever the
// number.
//
// It keeps the source's config: the name (service, proto and name, with
// placeholders; name alone when service and proto are empty), its
// resolvers and dial timeout, its refresh (a lookup at most once per
// refresh, the answer kept meanwhile), its grace period (a failing lookup
// answered with the last records, looked up again after the grace period)
// and its dial network.
type SRV struct {
	src      *reverseproxy.SRVUpstreams
	resolver *net.Resolver

	mu      sync.Mutex
	records []record
	next    time.Time // when to look up again
	looked  bool      // records holds an answer
}

// record is an instance as a source gives it: its address, weight and
// priority.
type record struct {
	dial     string // host:port, or network/host:port
	weight   int
	priority int
}

// recordSource is a source that gives its instances' weights and
// priorities (SRV); others give addresses only.
type recordSource interface {
	lookup(r *http.Request) ([]record, error)
}

// NewSRV returns the SRV source of su, a provisioned srv module.
func NewSRV(su *reverseproxy.SRVUpstreams) (*SRV, error) {
	s := &SRV{src: su, resolver: net.DefaultResolver}
	if su.Resolver != nil && len(su.Resolver.Addresses) > 0 {
		r, err := NewResolver(su.Resolver.Addresses, time.Duration(su.DialTimeout))
		if err != nil {
			return nil, err
		}
		s.resolver = r.net
	}
	return s, nil
}

// GetUpstreams implements reverseproxy.UpstreamSource, for callers that
// know no more than addresses.
func (s *SRV) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	recs, err := s.lookup(r)
	if err != nil {
		return nil, err
	}
	ups := make([]*reverseproxy.Upstream, len(recs))
	for i, rec := range recs {
		ups[i] = &reverseproxy.Upstream{Dial: rec.dial}
	}
	return ups, nil
}

// String returns the name the source looks up, as Caddy's does.
func (s *SRV) String() string { return s.src.String() }

// lookup implements recordSource.
func (s *SRV) lookup(r *http.Request) ([]record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.looked && now.Before(s.next) {
		return s.records, nil
	}
	service, proto, name := s.names(r)
	_, srvs, err := s.resolver.LookupSRV(r.Context(), service, proto, name)
	// LookupSRV filters out records with invalid names and then returns
	// the rest with an error: only no records at all is a failure.
	if err != nil && len(srvs) == 0 {
		if grace := time.Duration(s.src.GracePeriod); grace > 0 && s.looked {
			s.next = now.Add(grace)
			return s.records, nil
		}
		return nil, fmt.Errorf("SRV lookup of %s: %w", s.src, err)
	}
	recs := make([]record, 0, len(srvs))
	for _, rec := range srvs {
		dial := net.JoinHostPort(rec.Target, strconv.Itoa(int(rec.Port)))
		if s.src.DialNetwork != "" {
			dial = s.src.DialNetwork + "/" + dial
		}
		recs = append(recs, record{dial: dial, weight: SRVWeight(rec.Weight), priority: int(rec.Priority)})
	}
	rankPriorities(recs)
	s.records, s.looked = recs, true
	s.next = now.Add(time.Duration(s.src.Refresh))
	return recs, nil
}

// names returns the service, proto and name to look up, placeholders
// replaced, as Caddy's srv source builds them.
func (s *SRV) names(r *http.Request) (service, proto, name string) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	name = repl.ReplaceAll(s.src.Name, "")
	if s.src.Service == "" && s.src.Proto == "" {
		return "", "", name
	}
	return repl.ReplaceAll(s.src.Service, ""), repl.ReplaceAll(s.src.Proto, ""), name
}

// rankPriorities replaces the priorities of recs by their ranks: 0 for
// the lowest, 1 for the next, and so on.
func rankPriorities(recs []record) {
	prios := make([]int, len(recs))
	for i, r := range recs {
		prios[i] = r.priority
	}
	distinct := slices.Compact(slices.Sorted(slices.Values(prios)))
	for i := range recs {
		recs[i].priority, _ = slices.BinarySearch(distinct, recs[i].priority)
	}
}

// SRVWeight returns the instance weight of an SRV record's weight: the
// same, but 0 (RFC 2782's least, "very small chance of being selected")
// counts as 1, as an instance of weight 0 would get no traffic at all.
func SRVWeight(w uint16) int { return max(int(w), 1) }
