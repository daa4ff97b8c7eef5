package strategy_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

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
		ins[i] = backend.New(u)
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
	}{
		{name: "round_robin", want: reflect.TypeFor[*strategy.RoundRobin]()},
		{name: "least_connections", want: reflect.TypeFor[*strategy.LeastConnections]()},
		{name: strategy.Default, want: reflect.TypeFor[*strategy.RoundRobin]()},
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
			// Each value has its own state: selections by one do not move
			// another, so a fresh one starts on a fresh pool's first
			// instance.
			ins1 := newInstances(t, 3)
			if got := pickSequence(s1, backend.NewPool(ins1...), ins1, 2); got != "ab" {
				t.Fatalf("first strategy picks = %s, want ab", got)
			}
			s2, err := strategy.New(tt.name)
			if err != nil {
				t.Fatalf("New(%q) again: %v", tt.name, err)
			}
			ins2 := newInstances(t, 3)
			if got := pickSequence(s2, backend.NewPool(ins2...), ins2, 3); got != "abc" {
				t.Errorf("second strategy picks = %s, want abc: state shared with the first?", got)
			}
		})
	}
}

func TestNewUnknown(t *testing.T) {
	for _, name := range []string{"", "random", "Round_Robin", "round_robin "} {
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
	for _, want := range []string{"least_connections", "round_robin"} {
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
		strategy.Register(name, func() strategy.Strategy { return fixed{} })
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
				strategy.Register(tt.name, func() strategy.Strategy { return fixed{} })
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
