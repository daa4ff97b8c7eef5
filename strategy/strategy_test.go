package strategy_test

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/strategy"
)

// The tests of this package do not run in parallel: a Pool's cache is
// invalidated by a health change of any instance in the process, and
// testing.AllocsPerRun counts every allocation in the process.

// newInstances returns n healthy instances; instance i listens on port
// 10001+i, and names prints it as the letter 'a'+i.
func newInstances(t testing.TB, n int) []*backend.Instance {
	t.Helper()
	ins := make([]*backend.Instance, n)
	for i := range ins {
		u, err := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", 10001+i))
		if err != nil {
			t.Fatal(err)
		}
		ins[i] = newInstance(u, 1)
	}
	return ins
}

// index returns the position of in within ins, or -1 (for nil too).
func index(ins []*backend.Instance, in *backend.Instance) int {
	return slices.Index(ins, in)
}

// label names the instance at index i as a letter, and a nil pick as "-".
func label(i int) string {
	if i < 0 {
		return "-"
	}
	if i < 26 {
		return string(rune('a' + i))
	}
	return fmt.Sprint(i)
}

// pickSequence runs n selections and returns the labels of the picks.
func pickSequence(s strategy.Strategy, p *backend.Pool, ins []*backend.Instance, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(label(index(ins, s.Select(p, nil))))
	}
	return b.String()
}

func TestNewEachRegisteredName(t *testing.T) {
	tests := []struct {
		name string
		want reflect.Type
		// For deterministic strategies: the first picks of a fresh one on
		// a fresh pool of 3, twice, to show each value has its own state.
		first, second string
	}{
		{name: "round_robin", want: reflect.TypeFor[*strategy.RoundRobin](), first: "ab", second: "abc"},
		{name: "least_connections", want: reflect.TypeFor[*strategy.LeastConnections](), first: "ab", second: "abc"},
		{name: "first", want: reflect.TypeFor[*strategy.First](), first: "aa", second: "aaa"},
		{name: "random", want: reflect.TypeFor[*strategy.Random]()},
		{name: "p2c", want: reflect.TypeFor[*strategy.P2C]()},
		{name: "least_latency", want: reflect.TypeFor[*strategy.LeastLatency]()},
		{name: "hash", want: reflect.TypeFor[*strategy.Hash]()},
		{name: strategy.Default, want: reflect.TypeFor[*strategy.RoundRobin](), first: "ab", second: "abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s1, err := strategy.New(tt.name)
			if err != nil {
				t.Fatalf("New(%q): %v", tt.name, err)
			}
			if got := reflect.TypeOf(s1); got != tt.want {
				t.Errorf("New(%q) is a %v, want %v", tt.name, got, tt.want)
			}
			ins1 := newInstances(t, 3)
			p1 := backend.NewPool(ins1...)
			if tt.first == "" {
				// Randomized: every pick is an instance of the pool.
				for range 20 {
					if index(ins1, s1.Select(p1, nil)) < 0 {
						t.Fatal("Select gave no instance of the pool")
					}
				}
				return
			}
			// Each value has its own state: selections by one do not move
			// another, so a fresh one starts on a fresh pool's first
			// instance.
			if got := pickSequence(s1, p1, ins1, len(tt.first)); got != tt.first {
				t.Fatalf("first strategy picks = %s, want %s", got, tt.first)
			}
			s2, err := strategy.New(tt.name)
			if err != nil {
				t.Fatalf("New(%q) again: %v", tt.name, err)
			}
			ins2 := newInstances(t, 3)
			if got := pickSequence(s2, backend.NewPool(ins2...), ins2, len(tt.second)); got != tt.second {
				t.Errorf("second strategy picks = %s, want %s: state shared with the first?", got, tt.second)
			}
		})
	}
}

func TestNewWithOptions(t *testing.T) {
	tests := []struct {
		name     string
		strategy string
		opts     strategy.Options
		option   string // the option the error must name; "" for no error
		is       error
		want     []string // substrings of the error
	}{
		{name: "hash with default key", strategy: "hash"},
		{name: "hash, client_ip", strategy: "hash", opts: strategy.Options{HashKey: "client_ip"}},
		{name: "hash, header", strategy: "hash", opts: strategy.Options{HashKey: "header:X-User"}},
		{name: "hash, cookie", strategy: "hash", opts: strategy.Options{HashKey: "cookie:session"}},
		{name: "hash, query", strategy: "hash", opts: strategy.Options{HashKey: "query:id"}},
		{name: "hash, uri", strategy: "hash", opts: strategy.Options{HashKey: "uri"}},
		{name: "hash, host header", strategy: "hash", opts: strategy.Options{HashKey: "header:host"}},
		{name: "least_latency with decay", strategy: "least_latency", opts: strategy.Options{LatencyDecay: time.Second}},
		{
			name: "hash_key on round_robin", strategy: "round_robin", opts: strategy.Options{HashKey: "uri"},
			option: "hash_key", is: strategy.ErrInapplicableOption,
			want: []string{"hash_key: option does not apply: strategy round_robin does not use it (only hash does)"},
		},
		{
			name: "latency_decay on p2c", strategy: "p2c", opts: strategy.Options{LatencyDecay: time.Second},
			option: "latency_decay", is: strategy.ErrInapplicableOption,
			want: []string{"latency_decay: option does not apply", "only least_latency does"},
		},
		{
			name: "latency_decay on hash", strategy: "hash", opts: strategy.Options{LatencyDecay: time.Second},
			option: "latency_decay", is: strategy.ErrInapplicableOption,
		},
		{
			name: "negative latency_decay", strategy: "least_latency", opts: strategy.Options{LatencyDecay: -time.Second},
			option: "latency_decay", is: strategy.ErrInvalidOption, want: []string{"must be positive, got -1s"},
		},
		{name: "hash_key unknown kind", strategy: "hash", opts: strategy.Options{HashKey: "ip"}, option: "hash_key", is: strategy.ErrInvalidHashKey,
			want: []string{`invalid hash_key "ip": unknown kind "ip"; want client_ip, header:NAME, cookie:NAME, query:NAME or uri`}},
		{name: "hash_key header without name", strategy: "hash", opts: strategy.Options{HashKey: "header:"}, option: "hash_key", is: strategy.ErrInvalidHashKey,
			want: []string{"no name after header:"}},
		{name: "hash_key bad header name", strategy: "hash", opts: strategy.Options{HashKey: "header:X User"}, option: "hash_key", is: strategy.ErrInvalidHashKey},
		{name: "hash_key bad cookie name", strategy: "hash", opts: strategy.Options{HashKey: "cookie:a;b"}, option: "hash_key", is: strategy.ErrInvalidHashKey},
		{name: "hash_key bad query name", strategy: "hash", opts: strategy.Options{HashKey: "query:a&b"}, option: "hash_key", is: strategy.ErrInvalidHashKey},
		{name: "hash_key uri with a name", strategy: "hash", opts: strategy.Options{HashKey: "uri:x"}, option: "hash_key", is: strategy.ErrInvalidHashKey,
			want: []string{"uri takes no name"}},
		{name: "hash_key client_ip with a colon", strategy: "hash", opts: strategy.Options{HashKey: "client_ip:"}, option: "hash_key", is: strategy.ErrInvalidHashKey},
		{name: "hash with hash_balance", strategy: "hash", opts: strategy.Options{HashKey: "uri", HashBalance: 1.25}},
		{
			name: "hash_balance on least_connections", strategy: "least_connections", opts: strategy.Options{HashBalance: 1.25},
			option: "hash_balance", is: strategy.ErrInapplicableOption,
			want: []string{"hash_balance: option does not apply: strategy least_connections does not use it (only hash does)"},
		},
		{name: "hash_balance 1", strategy: "hash", opts: strategy.Options{HashBalance: 1}, option: "hash_balance", is: strategy.ErrInvalidOption,
			want: []string{"hash_balance: invalid option: want more than 1.0, got 1"}},
		{name: "hash_balance below 1", strategy: "hash", opts: strategy.Options{HashBalance: 0.5}, option: "hash_balance", is: strategy.ErrInvalidOption},
		{name: "hash_balance negative", strategy: "hash", opts: strategy.Options{HashBalance: -2}, option: "hash_balance", is: strategy.ErrInvalidOption},
		{name: "hash_balance NaN", strategy: "hash", opts: strategy.Options{HashBalance: math.NaN()}, option: "hash_balance", is: strategy.ErrInvalidOption},
		{name: "hash_balance infinite", strategy: "hash", opts: strategy.Options{HashBalance: math.Inf(1)}, option: "hash_balance", is: strategy.ErrInvalidOption},
		{name: "hash_key upper case", strategy: "hash", opts: strategy.Options{HashKey: "URI"}, option: "hash_key", is: strategy.ErrInvalidHashKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := strategy.NewWithOptions(tt.strategy, tt.opts)
			if tt.option == "" {
				if err != nil || s == nil {
					t.Fatalf("NewWithOptions = %v, %v; want a strategy", s, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("NewWithOptions = %T, nil; want an error", s)
			}
			t.Logf("error: %v", err)
			oe, ok := errors.AsType[*strategy.OptionError](err)
			if !ok || oe.Option != tt.option {
				t.Errorf("error %q is not an OptionError for %q", err, tt.option)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("error %q does not wrap %q", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestNewUnknown(t *testing.T) {
	for _, name := range []string{"", "fastest", "Round_Robin", "round_robin ", "roundrobin"} {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			s, err := strategy.New(name)
			if err == nil {
				t.Fatalf("New(%q) = %v, nil; want an error", name, s)
			}
			if s != nil {
				t.Errorf("New(%q) returned a strategy %v with its error", name, s)
			}
			if !errors.Is(err, strategy.ErrUnknown) {
				t.Errorf("New(%q) error %q does not wrap ErrUnknown", name, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("%q", name)) {
				t.Errorf("error %q does not name %q", msg, name)
			}
			for _, known := range strategy.Names() {
				if !strings.Contains(msg, known) {
					t.Errorf("error %q does not list the known strategy %q", msg, known)
				}
			}
		})
	}
}

func TestNames(t *testing.T) {
	names := strategy.Names()
	if !slices.IsSorted(names) {
		t.Errorf("Names() = %v, not sorted", names)
	}
	if len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Names() = %v has duplicates", names)
	}
	for _, want := range []string{"first", "hash", "least_connections", "least_latency", "p2c", "random", "round_robin"} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() = %v, missing %q", names, want)
		}
	}
	// Each name listed can be built.
	for _, n := range names {
		if _, err := strategy.New(n); err != nil {
			t.Errorf("Names() lists %q but New fails: %v", n, err)
		}
	}
	// The result is the caller's: changing it changes nothing else.
	names[0] = "zzz"
	_ = append(names, "appended")
	if again := strategy.Names(); slices.Contains(again, "zzz") || slices.Contains(again, "appended") {
		t.Errorf("Names() = %v after the caller changed an earlier result", again)
	}
}

// A strategy for the registration test.
type fixed struct{}

func (fixed) Select(*backend.Pool, *http.Request) *backend.Instance { return nil }

func TestRegister(t *testing.T) {
	// The registry is process-wide and has no Unregister, so this test adds
	// a name of its own that no other test relies on, once per process
	// (go test -count=N runs the test N times).
	const name = "zz_test_fixed"
	if _, err := strategy.New(name); err == nil {
		t.Logf("%q registered by an earlier run of this test", name)
	} else {
		if !errors.Is(err, strategy.ErrUnknown) {
			t.Fatalf("New(%q) before Register: %v, want ErrUnknown", name, err)
		}
		strategy.Register(name, func(strategy.Options) (strategy.Strategy, error) { return fixed{}, nil })
	}

	if s, err := strategy.New(name); err != nil || s != (fixed{}) {
		t.Errorf("New(%q) = %v, %v after Register", name, s, err)
	}
	if names := strategy.Names(); !slices.Contains(names, name) || !slices.IsSorted(names) {
		t.Errorf("Names() = %v after registering %q", names, name)
	}

	tests := []struct{ name string }{{name}, {"round_robin"}, {"least_connections"}}
	for _, tt := range tests {
		t.Run("duplicate "+tt.name, func(t *testing.T) {
			panicked, msg := func() (panicked bool, msg string) {
				defer func() {
					if r := recover(); r != nil {
						panicked, msg = true, fmt.Sprint(r)
					}
				}()
				strategy.Register(tt.name, func(strategy.Options) (strategy.Strategy, error) { return fixed{}, nil })
				return false, ""
			}()
			if !panicked {
				t.Fatalf("Register(%q) twice did not panic", tt.name)
			}
			if !strings.Contains(msg, tt.name) {
				t.Errorf("panic %q does not name %q", msg, tt.name)
			}
			// The registry still works (its lock was released) and the
			// first registration was kept.
			if _, err := strategy.New(tt.name); err != nil {
				t.Errorf("New(%q) after the duplicate: %v", tt.name, err)
			}
		})
	}
	if s, _ := strategy.New("round_robin"); reflect.TypeOf(s) != reflect.TypeFor[*strategy.RoundRobin]() {
		t.Errorf("a failed duplicate Register replaced round_robin: New gives %T", s)
	}
}

// newInstance returns a healthy instance of the given weight for the
// backend at u, with passive checks and slow start off.
func newInstance(u *url.URL, weight int) *backend.Instance {
	return backend.New(u, weight, &backend.Policy{}, backend.Now())
}
