package strategy

import (
	"fmt"
	"math"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/http/httpguts"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/internal/cookie"
)

// DefaultHashKey is what the hash strategy hashes when hash_key is not set.
const DefaultHashKey = "client_ip"

func init() {
	Register("hash", func(o Options) (Strategy, error) {
		s := new(Hash)
		if err := s.setKey(o.HashKey); err != nil {
			return nil, &OptionError{Option: OptionHashKey, Err: err}
		}
		if err := s.setBalance(o.HashBalance); err != nil {
			return nil, &OptionError{Option: OptionHashBalance, Err: err}
		}
		return s, nil
	}, OptionHashKey, OptionHashBalance)
}

// Hash sends every request with the same key to the same instance, by
// rendezvous (highest random weight) hashing: each available instance
// scores hash(key, instance), the highest score wins. So
//
//   - adding or removing one of n instances moves only the keys it wins
//     or won, about 1/n of them;
//   - when the chosen instance is unhealthy or drained, the next in the
//     key's ranking takes over, and the key returns when it comes back;
//   - the mapping depends on nothing but the key and the instances' URLs
//     and weights (the hash functions have fixed seeds), so every load
//     balancer with the same config maps a key to the same instance
//     without sharing any state.
//
// With weights, the score is −w / ln(u) for u the hash as a number in
// (0, 1), which gives each instance a share of the keys in proportion to
// its weight and keeps the properties above.
//
// The key (hash_key) is the client's IP address (client_ip, Caddy's, which
// honours trusted_proxies), a request header (header:NAME), a cookie
// (cookie:NAME), a query parameter (query:NAME, as sent, not decoded) or
// the request URI (uri, path and query as sent). A request without the key
// (no such header, cookie or parameter, or an empty one) goes to a random
// instance, in proportion to the weights.
//
// Selection hashes the key once (FNV-1a) and mixes it with each
// instance's precomputed URL hash: O(n), about 1.5 ns per instance with
// equal weights, twice that with weights.
//
// With a load bound (hash_balance, see bounded.go) a key whose instance
// has too many requests in flight goes to the next instance of its
// ranking that has room, requests without a key too.
type Hash struct {
	rng
	kind    keyKind
	name    string  // the header (canonical), cookie or query parameter
	balance float64 // the load bound's factor; 0: none
	lists   listCache[hashList]
}

type keyKind uint8

const (
	keyClientIP keyKind = iota
	keyHost
	keyHeader
	keyCookie
	keyQuery
	keyURI
)

// setKey parses a hash_key.
func (s *Hash) setKey(spec string) error {
	if spec == "" {
		spec = DefaultHashKey
	}
	kind, name, _ := strings.Cut(spec, ":")
	bad := func(why string) error {
		return fmt.Errorf("%w %q: %s; want client_ip, header:NAME, cookie:NAME, query:NAME or uri", ErrInvalidHashKey, spec, why)
	}
	switch kind {
	case "client_ip", "uri":
		if name != "" || strings.Contains(spec, ":") {
			return bad(kind + " takes no name")
		}
		s.kind = keyClientIP
		if kind == "uri" {
			s.kind = keyURI
		}
		return nil
	case "header", "cookie", "query":
	default:
		return bad("unknown kind " + fmt.Sprintf("%q", kind))
	}
	if name == "" {
		return bad("no name after " + kind + ":")
	}
	switch kind {
	case "header":
		if !httpguts.ValidHeaderFieldName(name) {
			return bad("not a header name")
		}
		s.kind, s.name = keyHeader, textproto.CanonicalMIMEHeaderKey(name)
		if s.name == "Host" {
			s.kind = keyHost // net/http moves it out of the header map
		}
	case "cookie":
		if !httpguts.ValidHeaderFieldName(name) {
			return bad("not a cookie name")
		}
		s.kind, s.name = keyCookie, name
	case "query":
		if strings.ContainsAny(name, "&=#? ") {
			return bad("not a query parameter name")
		}
		s.kind, s.name = keyQuery, name
	}
	return nil
}

// Select implements Strategy.
func (s *Hash) Select(pool *backend.Pool, r *http.Request) *backend.Instance {
	list := pool.Available()
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	hl := s.lists.get(list, newHashList)
	key, ok := s.keyHash(r)
	if s.balance > 0 {
		if !ok {
			// A random key: its ranking is a draw in proportion to the
			// weights, walked as a key's is.
			key = s.uint64()
		}
		return list[hl.bounded(list, key, s.balance)]
	}
	if !ok {
		return list[hl.sampler.draw(&s.rng)]
	}
	return list[hl.best(key)]
}

// hashList is what Hash derives from a list of available instances.
type hashList struct {
	ids       []uint64  // per instance: the hash of its URL
	weights   []float64 // per instance; nil when all are equal
	weightSum float64   // of weights
	sampler   sampler   // for requests without a key
}

func newHashList(list []*backend.Instance) hashList {
	hl := hashList{ids: make([]uint64, len(list)), sampler: newSampler(list)}
	for i, in := range list {
		hl.ids[i] = instanceHash(in)
	}
	if !hl.sampler.uniform {
		hl.weights = make([]float64, len(list))
		for i, in := range list {
			hl.weights[i] = float64(in.SelectionWeight())
			hl.weightSum += hl.weights[i]
		}
	}
	return hl
}

// best returns the index of the instance with the highest score for key.
// A tie (equal 64-bit hashes) goes to the earlier instance.
func (hl *hashList) best(key uint64) int {
	best := 0
	if hl.weights == nil {
		// −w/ln(u) grows with u: with equal weights the highest hash wins.
		top := mix(key ^ hl.ids[0])
		for i := 1; i < len(hl.ids); i++ {
			if h := mix(key ^ hl.ids[i]); h > top {
				best, top = i, h
			}
		}
		return best
	}
	// The best score so far is topW/topE with E = −ln(u); instance i beats
	// it if w·topE > topW·E. Since −ln(u) ≥ 1 − u, an instance with
	// w·topE ≤ topW·(1−u) cannot, and most are ruled out without a log.
	topW, topE := hl.weights[0], -math.Log(unit(mix(key^hl.ids[0])))
	for i := 1; i < len(hl.ids); i++ {
		u := unit(mix(key ^ hl.ids[i]))
		w := hl.weights[i]
		if w*topE <= topW*(1-u) {
			continue
		}
		if e := -math.Log(u); w*topE > topW*e {
			best, topW, topE = i, w, e
		}
	}
	return best
}

// unit maps a hash to a number in (0, 1).
func unit(h uint64) float64 {
	return (float64(h>>11) + 0.5) * 0x1p-53
}

// keyHash returns the hash of r's key, or false if r has none.
func (s *Hash) keyHash(r *http.Request) (uint64, bool) {
	if r == nil {
		return 0, false
	}
	var key string
	switch s.kind {
	case keyClientIP:
		key, _ = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
		if key == "" {
			key = hostOf(r.RemoteAddr)
		}
	case keyHost:
		key = r.Host
	case keyHeader:
		if v := r.Header[s.name]; len(v) > 0 {
			key = v[0]
		}
	case keyCookie:
		key = cookie.Value(r.Header["Cookie"], s.name)
	case keyQuery:
		if r.URL != nil {
			key = queryValue(r.URL.RawQuery, s.name)
		}
	case keyURI:
		if r.RequestURI != "" {
			key = r.RequestURI
		} else if r.URL != nil {
			// A request built rather than received: its path and query, as
			// the request line would carry them.
			h := fnv1a(fnvOffset, r.URL.EscapedPath())
			if r.URL.RawQuery != "" {
				h = fnv1a(fnv1a(h, "?"), r.URL.RawQuery)
			}
			return mix(h), true
		}
	}
	if key == "" {
		return 0, false
	}
	return hashKey(key), true
}

// hostOf returns the host of a host:port address, or the address.
func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 && !strings.Contains(addr[i:], "]") {
		addr = addr[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
}

// queryValue returns the first non-empty value of the parameter name in a
// raw query, as sent (not decoded), without allocating.
func queryValue(raw, name string) string {
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		if k, v, _ := strings.Cut(part, "="); k == name && v != "" {
			return v
		}
	}
	return ""
}

// FNV-1a, 64 bits.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// mix is MurmurHash3's 64-bit finalizer: every input bit affects every
// output bit.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// hashKey returns the hash of a key. It is fixed: the same in every
// process and release, so that load balancers agree.
func hashKey(key string) uint64 { return mix(fnv1a(fnvOffset, key)) }

// instanceHash returns the fixed hash of an instance's URL that rendezvous
// hashing combines with keys.
func instanceHash(in *backend.Instance) uint64 { return hashKey(in.URL().String()) }
