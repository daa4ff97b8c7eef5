package caddylb

import (
	"fmt"
	"strings"
)

// router finds the app for a request's Host: an exact host first, then a
// one-label wildcard (*.example.com matches a.example.com, not
// a.b.example.com, as Caddy's host matcher does), then the catch-all.
type router struct {
	exact    map[string]*App
	wildcard map[string]*App // keyed by the suffix after "*", e.g. ".example.com"
	fallback *App
}

// add registers app under its host pattern; pattern must be normalized.
func (rt *router) add(pattern string, app *App) error {
	switch {
	case pattern == "":
		if rt.fallback != nil {
			return ErrDuplicateHost
		}
		rt.fallback = app
	case strings.HasPrefix(pattern, "*."):
		suffix := pattern[1:]
		if _, dup := rt.wildcard[suffix]; dup {
			return ErrDuplicateHost
		}
		if rt.wildcard == nil {
			rt.wildcard = make(map[string]*App)
		}
		rt.wildcard[suffix] = app
	default:
		if _, dup := rt.exact[pattern]; dup {
			return ErrDuplicateHost
		}
		if rt.exact == nil {
			rt.exact = make(map[string]*App)
		}
		rt.exact[pattern] = app
	}
	return nil
}

// match returns the app for the Host header value host, or nil.
func (rt *router) match(host string) *App {
	if rt.exact == nil && rt.wildcard == nil {
		return rt.fallback
	}
	host = normalizeRequestHost(host)
	if app, ok := rt.exact[host]; ok {
		return app
	}
	if dot := strings.IndexByte(host, '.'); dot > 0 {
		if app, ok := rt.wildcard[host[dot:]]; ok {
			return app
		}
	}
	return rt.fallback
}

// normalizeRequestHost strips the port and a trailing dot from a Host header
// value and lower-cases it. It allocates only when the host has upper-case
// letters.
func normalizeRequestHost(host string) string {
	if strings.HasPrefix(host, "[") {
		if end := strings.IndexByte(host, ']'); end > 0 {
			host = host[:end+1]
		}
	} else if colon := strings.LastIndexByte(host, ':'); colon >= 0 {
		host = host[:colon]
	}
	host = strings.TrimSuffix(host, ".")
	return strings.ToLower(host)
}

// normalizeAppHost checks an app's host pattern and returns its canonical
// form: lower case, no trailing dot, and "" for the catch-all ("*" or empty).
func normalizeAppHost(host string) (string, error) {
	h := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(host)), ".")
	if h == "" || h == "*" {
		return "", nil
	}
	rest := h
	if strings.HasPrefix(h, "*.") {
		rest = h[2:]
	}
	if rest == "" || strings.ContainsAny(rest, "*/:@?# \t") {
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") && !strings.ContainsAny(h, "*/@?# \t") {
			return h, nil // an IPv6 literal
		}
		return "", fmt.Errorf("%w %q: want a host name without port, *.domain, or *", ErrInvalidHost, host)
	}
	return h, nil
}
