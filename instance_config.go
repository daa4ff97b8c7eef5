package caddylb

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/golb/caddy-lb/backend"
)

// The configured instances of an app: their options and how they are
// checked and compiled.

// InstanceConfig is one backend instance of an app.
type InstanceConfig struct {
	// The instance's base URL: http or https, a host and optionally a port
	// and a base path that is joined with each request's path. Without a
	// scheme ("127.0.0.1:8081"), http is meant. Userinfo, if any, is sent
	// as basic auth to the instance; a query is added to each request's.
	// Both are redacted in logs, metrics and the report.
	URL string `json:"url"`

	// The instance's share of requests relative to the app's other
	// instances, an integer from 0 to 1000000; every strategy but first
	// honours it. 0 sends the instance no new requests (requests in
	// flight finish) while it stays in the config, its health checks and
	// the report. Default: 1.
	Weight *int `json:"weight,omitempty"`

	// The instance's failover tier, an integer from 0 to 65535: 0 (the
	// default) is the first tier, higher numbers are backup tiers, lower
	// preferred as in DNS SRV. The app serves from its best tier only,
	// and hands over to the next tier when too few of its instances are
	// available (see failover_threshold).
	Priority *int `json:"priority,omitempty"`
}

// compileInstances checks the configured instances and compiles their
// URLs, weights and priorities; there may be none if others are discovered.
func (s *settings) compileInstances(instances []*InstanceConfig, discovered bool) error {
	if len(instances) == 0 && !discovered {
		return optionError("instances", ErrNoInstances)
	}
	s.urls = make([]*url.URL, 0, len(instances))
	s.weights = make([]int, 0, len(instances))
	s.priorities = make([]int, 0, len(instances))
	seen := make(map[string]int, len(instances))
	for i, ic := range instances {
		field := fmt.Sprintf("instances[%d].url", i)
		if ic == nil {
			return optionError(field, ErrInvalidURL)
		}
		u, err := parseInstanceURL(ic.URL)
		if err != nil {
			return optionError(field, err)
		}
		if j, dup := seen[u.String()]; dup {
			return optionError(field, fmt.Errorf("%w: %q is instances[%d] already; give it a weight instead", ErrDuplicateInstance, ic.URL, j))
		}
		seen[u.String()] = i
		weight := 1
		if ic.Weight != nil {
			if weight = *ic.Weight; weight < 0 || weight > backend.MaxWeight {
				return optionError(fmt.Sprintf("instances[%d].weight", i),
					fmt.Errorf("%w: want an integer from 0 to %d, got %d", ErrInvalidWeight, backend.MaxWeight, weight))
			}
		}
		priority, err := instancePriority(ic.Priority)
		if err != nil {
			return optionError(fmt.Sprintf("instances[%d].priority", i), err)
		}
		s.urls = append(s.urls, u)
		s.weights = append(s.weights, weight)
		s.priorities = append(s.priorities, priority)
	}
	return nil
}

// parseInstanceURL parses and checks an instance URL; one without a scheme
// means http.
func parseInstanceURL(raw string) (*url.URL, error) {
	s := strings.TrimSpace(raw)
	if i := strings.Index(s, "://"); i < 0 || strings.ContainsAny(s[:i], "/?#:@") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidURL, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c" {
		return nil, fmt.Errorf("%w, got %q in %q", ErrInvalidScheme, u.Scheme, raw)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%w: %q", ErrMissingHost, raw)
	}
	if port := u.Port(); port != "" {
		if n, err := net.LookupPort("tcp", port); err != nil || n == 0 {
			return nil, fmt.Errorf("%w %q: bad port %q", ErrInvalidURL, raw, port)
		}
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w %q: no fragment or opaque part allowed", ErrInvalidURL, raw)
	}
	return u, nil
}
