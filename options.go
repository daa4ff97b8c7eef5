package caddylb

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/health"
)

// Defaults of the resilience settings of an app.
const (
	DefaultMaxFails           = 5
	DefaultFailDuration       = 10 * time.Second
	DefaultMaxFailDuration    = 5 * time.Minute
	DefaultMaxEjectedPercent  = 50
	DefaultRetries            = 2
	DefaultRetryBudgetPercent = 20

	// MaxRetries bounds retries: more would only multiply the load a
	// failing fleet gets.
	MaxRetries = 10
	// MaxHealthStreak bounds health_passes and health_fails.
	MaxHealthStreak = 1000
)

// resilience is an app's checked health, passive-check and retry settings.
type resilience struct {
	health  health.Spec    // zero without health_uri
	passive backend.Policy // what passive checks and slow start do
	retries int
	try     time.Duration // 0: no limit
	budget  int           // retry budget, percent of recent requests
	panic   int           // panic threshold, percent; 0: off
}

// activeHealthOptions configure active health checks, so need health_uri;
// in the order provisionResilience checks them.
var activeHealthOptions = []string{
	"health_method", "health_headers", "health_port", "health_status",
	"health_body", "health_passes", "health_fails", "initially_unhealthy",
}

// setsHealthOption reports whether the app sets the active health option
// name (one of activeHealthOptions).
func (a *App) setsHealthOption(name string) bool {
	switch name {
	case "health_method":
		return a.HealthMethod != ""
	case "health_headers":
		return len(a.HealthHeaders) > 0
	case "health_port":
		return a.HealthPort != 0
	case "health_status":
		return len(a.HealthStatus) > 0
	case "health_body":
		return a.HealthBody != ""
	case "health_passes":
		return a.HealthPasses != 0
	case "health_fails":
		return a.HealthFails != 0
	case "initially_unhealthy":
		return a.InitiallyUnhealthy
	}
	return false
}

// provisionResilience checks the app's health, passive-check and retry
// settings, applies their defaults and returns them. timeout and interval
// are the app's; hasHealthURI says it has active health checks.
func (a *App) provisionResilience(timeout, interval time.Duration, hasHealthURI bool) (resilience, error) {
	var r resilience
	var err error
	if !hasHealthURI {
		for _, name := range activeHealthOptions {
			if a.setsHealthOption(name) {
				return r, a.errorf(name, fmt.Errorf("%w: it configures active health checks, which need health_uri", ErrInapplicableOption))
			}
		}
	}
	h := &r.health
	h.Interval, h.Timeout = interval, timeout
	if h.Method, err = checkMethod(a.HealthMethod); err != nil {
		return r, a.errorf("health_method", err)
	}
	if h.Headers, err = checkHeaders(a.HealthHeaders); err != nil {
		return r, a.errorf("health_headers", err)
	}
	if a.HealthPort < 0 || a.HealthPort > 65535 {
		return r, a.errorf("health_port", fmt.Errorf("%w: want 1 to 65535, got %d", ErrInvalidPort, a.HealthPort))
	}
	h.Port = a.HealthPort
	specs := a.HealthStatus
	if len(specs) == 0 {
		specs = []string{"2xx"}
	}
	if h.Status, err = parseStatuses(specs); err != nil {
		return r, a.errorf("health_status", err)
	}
	if a.HealthBody != "" {
		if h.Method == http.MethodHead {
			return r, a.errorf("health_body", fmt.Errorf("%w: answers to health_method HEAD have no body", ErrInapplicableOption))
		}
		if h.Body, err = compileBody(a.HealthBody); err != nil {
			return r, a.errorf("health_body", err)
		}
	}
	if h.Passes, err = checkCount(a.HealthPasses, 1, MaxHealthStreak); err != nil {
		return r, a.errorf("health_passes", err)
	}
	if h.Fails, err = checkCount(a.HealthFails, 1, MaxHealthStreak); err != nil {
		return r, a.errorf("health_fails", err)
	}

	p := &r.passive
	p.InitiallyUnhealthy = a.InitiallyUnhealthy
	p.MaxFails = DefaultMaxFails
	if a.MaxFails != nil {
		if p.MaxFails, err = checkCount(*a.MaxFails, 0, MaxHealthStreak); err != nil {
			return r, a.errorf("max_fails", err)
		}
	}
	if p.UnhealthyStatus, err = parseStatuses(a.UnhealthyStatus); err != nil {
		return r, a.errorf("unhealthy_status", err)
	}
	if p.FailDuration, err = positive(a.FailDuration, DefaultFailDuration); err != nil {
		return r, a.errorf("fail_duration", err)
	}
	if p.MaxFailDuration, err = positive(a.MaxFailDuration, DefaultMaxFailDuration); err != nil {
		return r, a.errorf("max_fail_duration", err)
	}
	if a.MaxFailDuration == nil {
		p.MaxFailDuration = max(p.MaxFailDuration, p.FailDuration)
	} else if p.MaxFailDuration < p.FailDuration {
		return r, a.errorf("max_fail_duration", fmt.Errorf("%w: %v is shorter than fail_duration (%v)",
			ErrInvalidDuration, p.MaxFailDuration, p.FailDuration))
	}
	if p.MaxEjectedPercent, err = percent(a.MaxEjectedPercent, DefaultMaxEjectedPercent); err != nil {
		return r, a.errorf("max_ejected_percent", err)
	}
	if p.SlowStart, err = nonNegative(a.SlowStart); err != nil {
		return r, a.errorf("slow_start", err)
	}
	if r.panic, err = percent(&a.PanicThreshold, 0); err != nil {
		return r, a.errorf("panic_threshold", err)
	}

	r.retries = DefaultRetries
	if a.Retries != nil {
		if r.retries, err = checkCount(*a.Retries, 0, MaxRetries); err != nil {
			return r, a.errorf("retries", err)
		}
	}
	if r.try, err = nonNegative(a.TryDuration); err != nil {
		return r, a.errorf("try_duration", err)
	}
	if r.budget, err = percent(a.RetryBudgetPercent, DefaultRetryBudgetPercent); err != nil {
		return r, a.errorf("retry_budget_percent", err)
	}
	return r, nil
}

// parseStatuses parses status codes ("200") and classes ("2xx") into a
// set; no specs give the empty set.
func parseStatuses(specs []string) (backend.StatusSet, error) {
	var set backend.StatusSet
	for _, s := range specs {
		lo, hi, err := parseStatus(s)
		if err != nil {
			return set, err
		}
		for code := lo; code <= hi; code++ {
			set.Add(code)
		}
	}
	return set, nil
}

// parseStatus parses one status code or class into the range it covers.
func parseStatus(s string) (lo, hi int, err error) {
	if len(s) == 3 && s[0] >= '1' && s[0] <= '5' && strings.EqualFold(s[1:], "xx") {
		c := int(s[0]-'0') * 100
		return c, c + 99, nil
	}
	code, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 || code < 100 || code > 599 {
		return 0, 0, fmt.Errorf("%w %q: want a code from 100 to 599 or a class such as 5xx", ErrInvalidStatus, s)
	}
	return code, code, nil
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

// compileBody compiles a health_body.
func compileBody(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRegexp, err)
	}
	return re, nil
}

// checkCount checks a count from 0 to hi. With def above 0, 0 means def
// and the count is from 1 to hi; with def 0, 0 is a value of its own
// (callers that need it tell it from unset with a pointer).
func checkCount(n, def, hi int) (int, error) {
	lo := 0
	if def > 0 {
		lo = 1
	}
	if n < 0 || n > hi {
		return 0, fmt.Errorf("%w: want an integer from %d to %d, got %d", ErrInvalidCount, lo, hi, n)
	}
	if n == 0 && def > 0 {
		return def, nil
	}
	return n, nil
}

// percent returns *p, def if p is nil, checked to be from 0 to 100.
func percent(p *int, def int) (int, error) {
	if p == nil {
		return def, nil
	}
	if *p < 0 || *p > 100 {
		return 0, fmt.Errorf("%w: want 0 to 100, got %d", ErrInvalidPercent, *p)
	}
	return *p, nil
}

// positive returns *d, def if d is nil, checked to be above 0.
func positive(d *Duration, def time.Duration) (time.Duration, error) {
	v := durationOr(d, def)
	if v <= 0 {
		return 0, fmt.Errorf("%w, got %v", ErrInvalidDuration, v)
	}
	return v, nil
}

// nonNegative returns *d, 0 if d is nil, checked not to be below 0.
func nonNegative(d *Duration) (time.Duration, error) {
	v := durationOr(d, 0)
	if v < 0 {
		return 0, fmt.Errorf("%w, got %v", ErrNegativeDuration, v)
	}
	return v, nil
}
