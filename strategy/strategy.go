// Package strategy holds the ways a load balancer picks the instance that
// serves a request.
//
// A strategy is one file: a type implementing Strategy and a Register call
// in that file's init. Selection runs on every request, so implementations
// are lock-free and allocate nothing. They pick among the pool's available
// instances (healthy, weight above 0), so none ever picks an instance of
// weight 0.
package strategy

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// Strategy picks the instance that serves a request.
type Strategy interface {
	// Select returns one of the pool's available instances for r, or nil
	// when none is available. r may be nil for strategies that ignore it.
	// It must be safe for concurrent use.
	Select(pool *backend.Pool, r *http.Request) *backend.Instance
}

// Observer is implemented by strategies that learn from the answers
// instances give: the app calls Observe with the time an instance took to
// send its response headers.
type Observer interface {
	Observe(in *backend.Instance, latency time.Duration)
}

// Options are the settings of an app that shape its strategy. The zero
// value means defaults everywhere. An option set for a strategy that does
// not use it is refused (OptionError wrapping ErrInapplicableOption), so a
// config never says something it does not do.
type Options struct {
	// HashKey is what the hash strategy hashes: "client_ip", "header:NAME",
	// "cookie:NAME", "query:NAME" or "uri". Default: client_ip.
	HashKey string
	// LatencyDecay is least_latency's decay window τ: a latency sample's
	// weight falls to 1/e after τ. Default: 10s. Must not be negative.
	LatencyDecay time.Duration
	// HashBalance is the hash strategy's load bound (consistent hashing
	// with bounded loads, see bounded.go): no instance takes a request
	// while it has ceil(HashBalance × (in flight in all + 1) × its share
	// of the weight) requests in flight. 0: no bound; otherwise more than
	// 1.
	HashBalance float64
}

// Option names, as in the config.
const (
	OptionHashKey      = "hash_key"
	OptionLatencyDecay = "latency_decay"
	OptionHashBalance  = "hash_balance"
)

// set returns the names of the options given in o.
func (o Options) set() []string {
	var names []string
	if o.HashKey != "" {
		names = append(names, OptionHashKey)
	}
	if o.LatencyDecay != 0 {
		names = append(names, OptionLatencyDecay)
	}
	if o.HashBalance != 0 {
		names = append(names, OptionHashBalance)
	}
	return names
}

// Errors of New and NewWithOptions.
var (
	// ErrUnknown: a name no strategy is registered under.
	ErrUnknown = errors.New("unknown strategy")
	// ErrInapplicableOption: an option the chosen strategy does not use.
	ErrInapplicableOption = errors.New("option does not apply")
	// ErrInvalidHashKey: a hash_key that is none of the known forms.
	ErrInvalidHashKey = errors.New("invalid hash_key")
	// ErrInvalidOption: an option value out of range.
	ErrInvalidOption = errors.New("invalid option")
)

// OptionError is an error in one option; Option is its config name.
type OptionError struct {
	Option string
	Err    error
}

func (e *OptionError) Error() string { return e.Option + ": " + e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

// Constructor builds a strategy with the given options. It is called only
// with options the strategy was registered as using.
type Constructor func(Options) (Strategy, error)

// Default is the strategy used when an app names none.
const Default = "round_robin"

type registration struct {
	constructor Constructor
	options     []string
}

var (
	mu       sync.RWMutex
	registry = map[string]registration{}
)

// Register makes a strategy available by name; options lists the names of
// the options it uses (OptionHashKey, OptionLatencyDecay, OptionHashBalance). Each call to the
// constructor must return a new value with its own state, since each app
// balances independently. It panics on a duplicate name, like
// caddy.RegisterModule, as that is a programming error.
func Register(name string, constructor Constructor, options ...string) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("strategy %q registered twice", name))
	}
	registry[name] = registration{constructor: constructor, options: slices.Clone(options)}
}

// New returns a new strategy registered under name, with default options.
// The error wraps ErrUnknown and lists the known names.
func New(name string) (Strategy, error) { return NewWithOptions(name, Options{}) }

// NewWithOptions returns a new strategy registered under name, set up with
// opts. An unknown name gives an error wrapping ErrUnknown; an option the
// strategy does not use, or a bad option value, an *OptionError naming it.
func NewWithOptions(name string, opts Options) (Strategy, error) {
	mu.RLock()
	reg, ok := registry[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknown, name, Names())
	}
	for _, opt := range opts.set() {
		if !slices.Contains(reg.options, opt) {
			return nil, &OptionError{Option: opt, Err: fmt.Errorf("%w: strategy %s does not use it (only %s does)",
				ErrInapplicableOption, name, strings.Join(users(opt), ", "))}
		}
	}
	return reg.constructor(opts)
}

// users returns the names of the strategies that use option opt, sorted.
func users(opt string) []string {
	mu.RLock()
	defer mu.RUnlock()
	var names []string
	for name, reg := range registry {
		if slices.Contains(reg.options, opt) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
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

// simple registers a strategy that takes no options and cannot fail.
func simple[S Strategy](name string, newS func() S) {
	Register(name, func(Options) (Strategy, error) { return newS(), nil })
}

// Prepare derives what the strategy derives from the pool's list of
// available instances (a schedule, a sampling table, hashes), if that list
// is new, so that a change of the pool (instances discovered or gone) costs
// the request path nothing: the app calls it after changing the pool's
// members. Strategies that derive nothing ignore it.
func Prepare(s Strategy, pool *backend.Pool) {
	if p, ok := s.(preparer); ok && len(pool.Available()) > 1 {
		p.prepare(pool.Available())
	}
}

// preparer is a strategy that derives state from a list of available
// instances.
type preparer interface {
	prepare(list []*backend.Instance)
}

func (s *RoundRobin) prepare(list []*backend.Instance)       { s.schedule.get(list, newSchedule) }
func (s *LeastConnections) prepare(list []*backend.Instance) { s.total.get(list, totalWeight) }
func (s *LeastLatency) prepare(list []*backend.Instance)     { s.samplers.get(list, newSampler) }
func (s *P2C) prepare(list []*backend.Instance)              { s.samplers.get(list, newSampler) }
func (s *Random) prepare(list []*backend.Instance)           { s.samplers.get(list, newSampler) }
func (s *Hash) prepare(list []*backend.Instance)             { s.lists.get(list, newHashList) }
