package strategy_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

func newHash(t testing.TB, key string) strategy.Strategy {
	t.Helper()
	return seeded(t, "hash", strategy.Options{HashKey: key}, 9)
}

// hostsAt returns instances for the given hosts, weights all 1 unless given.
func hostsAt(t testing.TB, hosts []string, weights ...int) []*backend.Instance {
	t.Helper()
	ins := make([]*backend.Instance, len(hosts))
	for i, h := range hosts {
		u, err := url.Parse("http://" + h)
		if err != nil {
			t.Fatal(err)
		}
		w := 1
		if i < len(weights) {
			w = weights[i]
		}
		ins[i] = newInstance(u, w)
	}
	return ins
}

func hostNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.%d.%d:8080", i/250, 1+i%250)
	}
	return out
}

// withHeader returns a request with X-Key: key.
func withHeader(key string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	r.Header.Set("X-Key", key)
	return r
}

// mapping returns, for keys user-0 … user-(n-1), the host each goes to.
func mapping(t testing.TB, s strategy.Strategy, p *backend.Pool, n int) []string {
	t.Helper()
	out := make([]string, n)
	for k := range out {
		in := s.Select(p, withHeader(fmt.Sprintf("user-%d", k)))
		if in == nil {
			t.Fatal("Select = nil")
		}
		out[k] = in.URL().Host
	}
	return out
}

// TestHashIsFixed pins the mapping of a few keys: it must be the same in
// every process and release, or load balancers running different builds
// would disagree. A change here is a breaking change.
func TestHashIsFixed(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    string // the index of the instance of keys user-0 … user-19
	}{
		{name: "equal weights", want: "dbabddddecdaeabdbeba"},
		{name: "weighted", weights: []int{1, 2, 3, 4, 5}, want: "dbeeddddecdcedbdbebe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := hostNames(5)
			ins := hostsAt(t, hosts, tt.weights...)
			got := mapping(t, newHash(t, "header:X-Key"), backend.NewPool(ins...), 20)
			var b strings.Builder
			for _, h := range got {
				for i, want := range hosts {
					if h == want {
						b.WriteString(label(i))
					}
				}
			}
			if b.String() != tt.want {
				t.Errorf("mapping = %s, want %s", b.String(), tt.want)
			}
		})
	}
}

// TestHashKeyIsFNV1aMixed: keys are hashed with the standard FNV-1a (64
// bits) and MurmurHash3's finalizer, nothing process-specific.
func TestHashKeyIsFNV1aMixed(t *testing.T) {
	fmix := func(h uint64) uint64 {
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
		h *= 0xc4ceb9fe1a85ec53
		h ^= h >> 33
		return h
	}
	for _, key := range []string{"", "user-1", "203.0.113.9", "http://10.0.0.1:8080", strings.Repeat("ü", 100)} {
		f := fnv.New64a()
		f.Write([]byte(key))
		if got, want := strategy.HashKey(key), fmix(f.Sum64()); got != want {
			t.Errorf("HashKey(%q) = %#x, want %#x", key, got, want)
		}
	}
	if got, want := strategy.HashKey("user-1"), uint64(0x41a2fca5c68401c5); got != want {
		t.Errorf("HashKey(user-1) = %#x, want %#x", got, want)
	}
}

// TestHashAgreesAcrossLoadBalancers: two strategies built apart, over
// instances built apart from the same URLs, map every key alike.
func TestHashAgreesAcrossLoadBalancers(t *testing.T) {
	for _, weights := range [][]int{nil, {3, 1, 4, 1, 5, 9, 2, 6}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			hosts := hostNames(8)
			a := mapping(t, seeded(t, "hash", strategy.Options{HashKey: "header:X-Key"}, 1), backend.NewPool(hostsAt(t, hosts, weights...)...), 2000)
			b := mapping(t, seeded(t, "hash", strategy.Options{HashKey: "header:x-key"}, 2), backend.NewPool(hostsAt(t, hosts, weights...)...), 2000)
			for k := range a {
				if a[k] != b[k] {
					t.Fatalf("key user-%d: %s on one, %s on the other", k, a[k], b[k])
				}
			}
		})
	}
}

// TestHashStabilityOnChange: removing one of n instances moves exactly the
// keys it had (about 1/n), adding one moves only the keys it takes (about
// 1/(n+1)), with or without weights.
func TestHashStabilityOnChange(t *testing.T) {
	const keys = 20000
	for _, tc := range []struct {
		n       int
		weights func(i int) int
	}{
		{n: 10, weights: func(int) int { return 1 }},
		{n: 50, weights: func(int) int { return 1 }},
		{n: 10, weights: func(i int) int { return 1 + i%4 }},
	} {
		t.Run(fmt.Sprintf("n=%d/weighted=%v", tc.n, tc.weights(1) != 1), func(t *testing.T) {
			hosts := hostNames(tc.n + 1)
			weights := make([]int, tc.n+1)
			for i := range weights {
				weights[i] = tc.weights(i)
			}
			s := newHash(t, "header:X-Key")
			all := hostsAt(t, hosts, weights...)
			before := mapping(t, s, backend.NewPool(all[:tc.n]...), keys)
			// Remove instance 3.
			removed := hosts[3]
			fewer := append(append([]*backend.Instance{}, all[:3]...), all[4:tc.n]...)
			after := mapping(t, s, backend.NewPool(fewer...), keys)
			moved, had := 0, 0
			for k := range before {
				if before[k] == removed {
					had++
				}
				if before[k] != after[k] {
					moved++
					if before[k] != removed {
						t.Fatalf("key %d moved from %s to %s, though %s stayed", k, before[k], after[k], before[k])
					}
				}
			}
			if moved != had {
				t.Errorf("%d keys moved, want the %d of the removed instance", moved, had)
			}
			total := 0
			for _, w := range weights[:tc.n] {
				total += w
			}
			checkShares(t, []int{moved, keys - moved}, []float64{float64(weights[3]) / float64(total), 1 - float64(weights[3])/float64(total)})

			// Add instance n.
			grown := mapping(t, s, backend.NewPool(all...), keys)
			moved = 0
			for k := range before {
				if before[k] != grown[k] {
					moved++
					if grown[k] != hosts[tc.n] {
						t.Fatalf("key %d moved from %s to %s, not to the new instance", k, before[k], grown[k])
					}
				}
			}
			share := float64(weights[tc.n]) / float64(total+weights[tc.n])
			checkShares(t, []int{moved, keys - moved}, []float64{share, 1 - share})
		})
	}
}

func TestHashFollowsWeights(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1}, {1, 2, 3}, {10, 1, 1, 0}, {1, 100}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			hosts := hostNames(len(weights))
			ins := hostsAt(t, hosts, weights...)
			const keys = 30000
			got := mapping(t, newHash(t, "header:X-Key"), backend.NewPool(ins...), keys)
			counts := make([]int, len(ins))
			for _, h := range got {
				for i := range hosts {
					if h == hosts[i] {
						counts[i]++
					}
				}
			}
			checkShares(t, counts, shares(weights))
		})
	}
}

// TestHashFailover: when a key's instance is down, the next in the key's
// ranking takes it (the instance it would have without the down one), and
// the key comes back when the instance recovers.
func TestHashFailover(t *testing.T) {
	const keys = 3000
	hosts := hostNames(6)
	ins := hostsAt(t, hosts, 1, 2, 1, 3, 1, 1)
	p := backend.NewPool(ins...)
	s := newHash(t, "header:X-Key")
	before := mapping(t, s, p, keys)

	ins[3].SetHealthy(false)
	during := mapping(t, s, p, keys)
	reference := mapping(t, newHash(t, "header:X-Key"), backend.NewPool(hostsAt(t, append(append([]string{}, hosts[:3]...), hosts[4:]...), 1, 2, 1, 1, 1)...), keys)
	moved := 0
	for k := range before {
		if during[k] == hosts[3] {
			t.Fatalf("key %d still goes to the down instance", k)
		}
		if during[k] != reference[k] {
			t.Fatalf("key %d went to %s with %s down, want %s (its next by rank)", k, during[k], hosts[3], reference[k])
		}
		if before[k] != during[k] {
			moved++
			if before[k] != hosts[3] {
				t.Fatalf("key %d moved from %s, which is up", k, before[k])
			}
		}
	}
	if moved == 0 {
		t.Fatal("no key was on the instance taken down")
	}

	ins[3].SetHealthy(true)
	if again := mapping(t, s, p, keys); strings.Join(again, ",") != strings.Join(before, ",") {
		t.Error("keys did not all return when the instance recovered")
	}
}

func TestHashKeys(t *testing.T) {
	hosts := hostNames(256)
	ins := hostsAt(t, hosts)
	p := backend.NewPool(ins...)
	req := func(mod func(r *http.Request)) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "http://example.com/a/b?x=1&id=42&y=", nil)
		r.RemoteAddr = "192.0.2.7:51234"
		if mod != nil {
			mod(r)
		}
		return r
	}
	withClientIP := func(ip string) func(r *http.Request) {
		return func(r *http.Request) {
			ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
			*r = *r.WithContext(ctx)
		}
	}
	tests := []struct {
		name   string
		key    string
		a, b   *http.Request // requests that must go to the same instance
		differ *http.Request // a request with another key value (nil: skip)
		keyed  bool          // false: a and b carry no key (random picks)
	}{
		{name: "client_ip from Caddy's variable", key: "client_ip",
			a: req(withClientIP("203.0.113.9")), b: req(func(r *http.Request) { withClientIP("203.0.113.9")(r); r.RemoteAddr = "10.9.9.9:1" }),
			differ: req(withClientIP("203.0.113.10")), keyed: true},
		{name: "client_ip from the remote address, port ignored", key: "client_ip",
			a: req(nil), b: req(func(r *http.Request) { r.RemoteAddr = "192.0.2.7:9" }),
			differ: req(func(r *http.Request) { r.RemoteAddr = "192.0.2.8:51234" }), keyed: true},
		{name: "client_ip, IPv6", key: "client_ip",
			a: req(func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:443" }), b: req(func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:80" }),
			differ: req(func(r *http.Request) { r.RemoteAddr = "[2001:db8::2]:443" }), keyed: true},
		{name: "header", key: "header:X-Tenant",
			a: req(func(r *http.Request) { r.Header.Set("X-Tenant", "acme") }), b: req(func(r *http.Request) { r.Header.Set("X-Tenant", "acme"); r.RemoteAddr = "1.1.1.1:1" }),
			differ: req(func(r *http.Request) { r.Header.Set("X-Tenant", "globex") }), keyed: true},
		{name: "header missing", key: "header:X-Tenant", a: req(nil), b: req(nil)},
		{name: "host header", key: "header:Host",
			a: req(nil), b: req(func(r *http.Request) { r.URL.Path = "/other" }),
			differ: req(func(r *http.Request) { r.Host = "other.example.com" }), keyed: true},
		{name: "cookie", key: "cookie:sid",
			a:      req(func(r *http.Request) { r.Header.Set("Cookie", "a=1; sid=xyz; b=2") }),
			b:      req(func(r *http.Request) { r.Header.Add("Cookie", "other=3"); r.Header.Add("Cookie", `sid="xyz"`) }),
			differ: req(func(r *http.Request) { r.Header.Set("Cookie", "sid=abc") }), keyed: true},
		{name: "cookie missing or empty", key: "cookie:sid",
			a: req(func(r *http.Request) { r.Header.Set("Cookie", "sidx=1; sid=") }), b: req(nil)},
		{name: "query", key: "query:id",
			a: req(nil), b: req(func(r *http.Request) { r.URL.RawQuery = "id=42" }),
			differ: req(func(r *http.Request) { r.URL.RawQuery = "id=43" }), keyed: true},
		{name: "query empty", key: "query:y", a: req(nil), b: req(nil)},
		{name: "uri", key: "uri",
			a: req(nil), b: req(func(r *http.Request) { r.Header.Set("X-Other", "1"); r.RemoteAddr = "1.1.1.1:1" }),
			differ: req(func(r *http.Request) { r.RequestURI = "/a/b?x=2" }), keyed: true},
		{name: "uri of a request built, not received", key: "uri",
			a: req(func(r *http.Request) { r.RequestURI = "" }), b: req(func(r *http.Request) { r.RequestURI = "/a/b?x=1&id=42&y=" }), keyed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHash(t, tt.key)
			first := s.Select(p, tt.a)
			if !tt.keyed {
				// No key: random picks, not all on one instance.
				seen := map[*backend.Instance]bool{}
				for range 200 {
					seen[s.Select(p, tt.a)] = true
					seen[s.Select(p, tt.b)] = true
				}
				if len(seen) < 100 {
					t.Errorf("requests without a key went to %d of 256 instances, want spread", len(seen))
				}
				return
			}
			for range 5 {
				if got := s.Select(p, tt.a); got != first {
					t.Fatalf("the same request went to %s, then %s", first, got)
				}
				if got := s.Select(p, tt.b); got != first {
					t.Fatalf("a request with the same key went to %s, want %s", got, first)
				}
			}
			// Another key value lands elsewhere (with 256 instances, these
			// do), so the key is what decides.
			if tt.differ != nil && s.Select(p, tt.differ) == first {
				t.Errorf("a request with another key went to the same instance %s", first)
			}
		})
	}
}

// TestHashBalance checks the load bound of hash_balance: a hot key's
// requests spill over so that no instance holds more than the bound, in
// the key's ranking; without load, or for keys whose instance is under
// the bound, the mapping is that of plain hashing.
func TestHashBalance(t *testing.T) {
	hosts := hostNames(4)
	for _, tc := range []struct {
		name    string
		weights []int
	}{
		{"equal weights", nil},
		{"weighted", []int{1, 2, 3, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain := seeded(t, "hash", strategy.Options{HashKey: "header:X-Key"}, 1)
			bounded := seeded(t, "hash", strategy.Options{HashKey: "header:X-Key", HashBalance: 1.25}, 1)
			ins := hostsAt(t, hosts, tc.weights...)
			p := backend.NewPool(ins...)
			if a, b := mapping(t, plain, p, 2000), mapping(t, bounded, p, 2000); !slices.Equal(a, b) {
				t.Fatal("without load, bounded hashing maps keys differently from plain hashing")
			}

			// 200 requests of one key, each held: the bound holds at
			// every step, and the spill follows the key's ranking.
			totalW := 0.0
			for _, in := range ins {
				totalW += float64(in.SelectionWeight())
			}
			first := plain.Select(p, withHeader("hot"))
			for n := range 200 {
				in := bounded.Select(p, withHeader("hot"))
				bound := math.Ceil(1.25 * float64(n+1) * float64(in.SelectionWeight()) / totalW)
				if float64(in.InFlight()) >= bound {
					t.Fatalf("request %d went to %s with %d in flight, at its bound %.0f", n, in.URL().Host, in.InFlight(), bound)
				}
				if !in.TryAcquire(0) {
					t.Fatal("TryAcquire without a limit failed")
				}
			}
			if first.InFlight() == 0 {
				t.Error("the hot key's own instance got none of its requests")
			}
			for _, in := range ins {
				share := float64(in.SelectionWeight()) / totalW
				if got, most := float64(in.InFlight()), math.Ceil(1.25*201*share); got > most {
					t.Errorf("%s holds %.0f, more than 1.25 × its share (%.0f)", in.URL().Host, got, most)
				}
			}

			// Keys of instances under the bound stay where plain hashing
			// puts them; only those of instances at it move.
			a, b := mapping(t, plain, p, 2000), mapping(t, bounded, p, 2000)
			atBound := map[string]bool{}
			for _, in := range ins {
				share := float64(in.SelectionWeight()) / totalW
				if float64(in.InFlight()) >= math.Ceil(1.25*201*share) {
					atBound[in.URL().Host] = true
				}
			}
			for k := range a {
				if a[k] != b[k] && !atBound[a[k]] {
					t.Fatalf("key user-%d moved from %s (under its bound) to %s", k, a[k], b[k])
				}
			}
			for _, in := range ins {
				for in.InFlight() > 0 {
					in.Release()
				}
			}
		})
	}
	if _, err := strategy.NewWithOptions("hash", strategy.Options{HashBalance: 1}); err == nil {
		t.Error("hash_balance 1 accepted")
	}
	if _, err := strategy.NewWithOptions("round_robin", strategy.Options{HashBalance: 1.25}); !errors.Is(err, strategy.ErrInapplicableOption) {
		t.Errorf("hash_balance with round_robin: %v, want ErrInapplicableOption", err)
	}
}
