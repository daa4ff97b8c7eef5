// Package strategy holds the ways a load balancer picks the instance that
// serves a request.
//
// A strategy is one file: a type implementing Strategy and a Register call
// in that file's init. Selection runs on every request, so implementations
// are lock-free and allocate nothing.
package strategy

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"

	"github.com/golb/caddy-lb/backend"
)

// Strategy picks the instance that serves a request.
type Strategy interface {
	// Select returns one of the pool's available instances for r, or nil
	// when none is available. r may be nil for strategies that ignore it.
	// It must be safe for concurrent use.
	Select(pool *backend.Pool, r *http.Request) *backend.Instance
}

// ErrUnknown is returned by New for a name no strategy is registered under.
var ErrUnknown = errors.New("unknown strategy")

// Default is the strategy used when an app names none.
const Default = "round_robin"

var (
	mu       sync.RWMutex
	registry = map[string]func() Strategy{}
)

// Register makes a strategy available by name. Each call to the constructor
// must return a new value with its own state, since each app balances
// independently. It panics on a duplicate name, like caddy.RegisterModule,
// as that is a programming error.
func Register(name string, constructor func() Strategy) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("strategy %q registered twice", name))
	}
	registry[name] = constructor
}

// New returns a new strategy registered under name. The error wraps
// ErrUnknown and lists the known names.
func New(name string) (Strategy, error) {
	mu.RLock()
	constructor, ok := registry[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknown, name, Names())
	}
	return constructor(), nil
}

// Names returns the registered strategy names, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(registry))
	for name := range registry {
		names = append(names, name)
	}
	sort.Strings(names)
	return slices.Clip(names)
}
