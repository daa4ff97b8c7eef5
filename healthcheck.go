package caddylb

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/golb/caddy-lb/health"
)

// Defaults and bounds of active health checks.
const (
	DefaultHealthCheckCooldown = 30 * time.Second
	// MaxHealthStreak bounds health_passes, health_fails and max_fails.
	MaxHealthStreak = 1000
)

// ActiveHealth holds the options of active health checks, which the
// app's health_uri turns on: each needs it.
type ActiveHealth struct {
	// The method of health checks. Default: GET.
	HealthMethod string `json:"health_method,omitempty"`

	// Headers sent with each health check; "Host" sets the Host header.
	// Values are sent as given.
	HealthHeaders http.Header `json:"health_headers,omitempty"`

	// The port health checks go to, if not the instance's own: 1 to
	// 65535.
	HealthPort *int `json:"health_port,omitempty"`

	// The statuses a passing health check answers with: codes ("200")
	// or classes ("2xx"). Redirects are never followed. Default: 2xx.
	HealthStatus Statuses `json:"health_status,omitempty"`

	// A regular expression (Go syntax) the body of a passing health check
	// must match. At most the first 64 KiB of the body are read. Not with
	// health_method HEAD. Default: any body.
	HealthBody string `json:"health_body,omitempty"`

	// How many consecutive passing health checks bring an unhealthy
	// instance back (HAProxy's rise), 1 to 1000; an instance never checked
	// yet (see initially_unhealthy) is in after its first. Default: 1.
	HealthPasses *int `json:"health_passes,omitempty"`

	// How many consecutive failing health checks take a healthy instance
	// out (HAProxy's fall), 1 to 1000. Default: 1.
	HealthFails *int `json:"health_fails,omitempty"`

	// A new instance starts unhealthy and gets traffic only after its
	// first passing health check, rather than at once. An instance a
	// reload keeps keeps its health either way.
	InitiallyUnhealthy bool `json:"initially_unhealthy,omitempty"`
}

// compile returns what the health checks of instances take, checked, with
// interval and timeout; nil if active checks are off (on says they are
// on: the app has a health_uri).
func (h *ActiveHealth) compile(on bool, interval, timeout time.Duration) (*health.Spec, error) {
	spec := &health.Spec{Interval: interval, Timeout: timeout}
	var err error
	if spec.Method, err = checkMethod(h.HealthMethod); err != nil {
		return nil, optionError("health_method", err)
	}
	if spec.Headers, err = checkHeaders(h.HealthHeaders); err != nil {
		return nil, optionError("health_headers", err)
	}
	if p := h.HealthPort; p != nil && (*p < 1 || *p > 65535) {
		return nil, optionError("health_port", fmt.Errorf("%w: want 1 to 65535, got %d", ErrInvalidPort, *p))
	}
	statuses := h.HealthStatus
	if len(statuses) == 0 {
		statuses = Statuses{"2xx"}
	}
	if spec.Status, err = statuses.parse(); err != nil {
		return nil, optionError("health_status", err)
	}
	if h.HealthBody != "" {
		if spec.Method == http.MethodHead {
			return nil, optionError("health_body", fmt.Errorf("%w: answers to health_method HEAD have no body", ErrInapplicableOption))
		}
		if spec.Body, err = regexp.Compile(h.HealthBody); err != nil {
			return nil, optionError("health_body", fmt.Errorf("%w: %v", ErrInvalidRegexp, err))
		}
	}
	if spec.Passes, err = count(h.HealthPasses, 1, 1, MaxHealthStreak); err != nil {
		return nil, optionError("health_passes", err)
	}
	if spec.Fails, err = count(h.HealthFails, 1, 1, MaxHealthStreak); err != nil {
		return nil, optionError("health_fails", err)
	}
	if !on {
		if name := firstSet(h); name != "" {
			return nil, optionError(name, fmt.Errorf("%w: it configures active health checks, which need health_uri or health_grpc", ErrInapplicableOption))
		}
		return nil, nil
	}
	return spec, nil
}

// firstSet returns the JSON name of the first field of the struct *v that
// is not its zero value, or "".
func firstSet(v any) string {
	rv := reflect.ValueOf(v).Elem()
	for i := range rv.NumField() {
		if !rv.Field(i).IsZero() {
			name, _, _ := strings.Cut(rv.Type().Field(i).Tag.Get("json"), ",")
			return name
		}
	}
	return ""
}

// checkMethod checks a health_method; "" means GET.
func checkMethod(m string) (string, error) {
	if m == "" {
		return http.MethodGet, nil
	}
	if !httpguts.ValidHeaderFieldName(m) { // a method is a token, like a field name
		return "", fmt.Errorf("%w %q", ErrInvalidMethod, m)
	}
	return m, nil
}

// checkHeaders checks health_headers, names and values an HTTP request can
// carry, and returns them with canonical names (values of names that differ
// only in case merged), so that a probe sends each exactly once.
func checkHeaders(h http.Header) (http.Header, error) {
	if len(h) == 0 {
		return nil, nil
	}
	out := make(http.Header, len(h))
	for name, values := range h {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("%w: bad name %q", ErrInvalidHeader, name)
		}
		for _, v := range values {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("%w: bad value %q for %s", ErrInvalidHeader, v, name)
			}
		}
		key := http.CanonicalHeaderKey(name)
		out[key] = append(out[key], values...)
	}
	if len(out["Host"]) > 1 {
		return nil, fmt.Errorf("%w: Host takes one value, got %q", ErrInvalidHeader, out["Host"])
	}
	return out, nil
}

// parseHealthURI checks a health_uri: a path starting with "/", with an
// optional query.
func parseHealthURI(uri string) (*url.URL, error) {
	// "//x" would parse as a host, not a path.
	if !strings.HasPrefix(uri, "/") || strings.HasPrefix(uri, "//") {
		return nil, fmt.Errorf("%w, got %q", ErrInvalidHealthURI, uri)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidHealthURI, err)
	}
	return u, nil
}

// healthTarget returns what the health checks of the instance at u go to,
// and how: gRPC checks and every check of an h2c instance through its own
// transport; HTTP checks of http and https instances on connections of
// their own.
func (a *App) healthTarget(u *url.URL) health.Target {
	if a.health.GRPC {
		p := url.URL{Scheme: u.Scheme, Host: u.Host}
		if a.HealthPort != nil {
			p.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(*a.HealthPort))
		}
		return health.Target{URL: p.String(), ViaTransport: true}
	}
	return health.Target{
		URL:          probeURL(u, a.healthURI, a.HealthPort),
		Dial:         health.DialFunc(a.dial),
		TLS:          a.tlsConfig,
		ViaTransport: u.Scheme == "h2c",
	}
}

// probeURL returns the URL health checks of the instance at u go to: the
// health URI joined to its base path, on port if set.
func probeURL(u, healthURI *url.URL, port *int) string {
	probe := *u
	probe.Path = joinPath(u.Path, healthURI.Path)
	probe.RawPath = joinPath(u.EscapedPath(), healthURI.EscapedPath())
	probe.RawQuery = healthURI.RawQuery
	if port != nil {
		probe.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(*port))
	}
	return probe.String()
}

// healthSettingsKey returns the part of the instance state keys of app,
// whose checks are spec, that says what its health checks mean: an
// instance checked differently is another state. Intervals, timeouts and
// streaks only say how often and how surely, and follow the running config
// instead.
func healthSettingsKey(a *App, spec *health.Spec) string {
	if spec == nil {
		return ""
	}
	b, _ := json.Marshal(struct {
		URI, Method, Body string
		Port              *int
		Headers           map[string][]string
		Status            []string
		GRPC              *GRPCHealthCheck `json:",omitempty"`
	}{a.HealthURI, spec.Method, a.HealthBody, a.HealthPort, spec.Headers, a.HealthStatus, a.HealthGRPC})
	return string(b)
}
