package caddylb

import (
	"errors"
	"fmt"
	"math"

	"github.com/golb/caddy-lb/strategy"
)

// Selection says how an instance is picked for each request.
type Selection struct {
	// How an instance is picked for each request, among the healthy
	// instances of weight above 0. Default: round_robin.
	//
	//   - round_robin: in turn, in proportion to the weights (nginx's
	//     smooth weighted round robin), exact over the available instances.
	//   - least_connections: the fewest requests in flight per unit of
	//     weight; idle instances first.
	//   - p2c: the less loaded of two instances drawn at random (power of
	//     two choices); O(1) at any pool size.
	//   - least_latency: of two instances drawn at random, the one with the
	//     lower peak-EWMA latency × (in flight + 1) / weight.
	//   - hash: the same key (see hash_key) to the same instance, by
	//     rendezvous hashing; agreed by every load balancer with the same
	//     config.
	//   - random: at random, in proportion to the weights.
	//   - first: the first available instance in config order (failover).
	Strategy string `json:"strategy,omitempty"`

	// What strategy hash hashes: "client_ip" (Caddy's client IP, which
	// honours the server's trusted_proxies), "header:NAME", "cookie:NAME",
	// "query:NAME" (the value as sent) or "uri" (path and query as sent).
	// Requests without the key go to a random instance. Only with
	// strategy hash. Default: client_ip.
	HashKey string `json:"hash_key,omitempty"`

	// The decay window of least_latency's latency estimates: the weight of
	// a sample falls to 1/e after this long, and an idle instance's
	// estimate decays toward 0 at that pace, so a slow instance is tried
	// again. Shorter reacts faster and forgets sooner. Only with strategy
	// least_latency. Default: 10s.
	LatencyDecay *Duration `json:"latency_decay,omitempty"`

	// Consistent hashing with bounded loads, for strategy hash: a factor
	// above 1.0 (1.25: an instance may take 25% more than its share). No
	// instance takes a new request while it has ceil(factor × (the
	// requests in flight to the app's serving tier + 1) × its share of the
	// weight) in flight; a key whose instance is at the bound goes to the
	// next of its rendezvous ranking under it, so keys move as little as
	// they can. Only with strategy hash. Default: none (no bound).
	HashBalance *float64 `json:"hash_balance,omitempty"`
}

// compile returns the strategy's name (the default if unset) and the
// strategy.
func (s *Selection) compile() (string, strategy.Strategy, error) {
	name := s.Strategy
	if name == "" {
		name = strategy.Default
	}
	opts := strategy.Options{HashKey: s.HashKey}
	if s.HashBalance != nil {
		if f := *s.HashBalance; !(f > 1) || math.IsInf(f, 0) {
			return "", nil, optionError("hash_balance", fmt.Errorf("%w: want more than 1.0, got %v", ErrInvalidOption, f))
		}
		opts.HashBalance = *s.HashBalance
	}
	if s.LatencyDecay != nil {
		var err error
		if opts.LatencyDecay, err = positive(s.LatencyDecay, 0); err != nil {
			return "", nil, optionError("latency_decay", err)
		}
	}
	st, err := strategy.NewWithOptions(name, opts)
	if err != nil {
		if oe, ok := errors.AsType[*strategy.OptionError](err); ok {
			return "", nil, optionError(oe.Option, oe.Err)
		}
		return "", nil, optionError("strategy", err)
	}
	return name, st, nil
}
