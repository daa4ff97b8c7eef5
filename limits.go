package caddylb

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/golb/caddy-lb/backend"
)

// Adaptive limits: max_requests auto. Each instance's limit follows its
// capacity (backend/limit.go has the algorithm); this file holds the
// option's value and what a request's outcome tells the limit.

// Defaults of max_requests auto.
const (
	DefaultAutoLimitMin = 1
	DefaultAutoLimitMax = 1000
)

// RequestLimit is the value of max_requests: a number of requests, or
// "auto" (JSON: an integer or the string "auto").
type RequestLimit struct {
	N    int
	Auto bool
}

// MarshalJSON writes the limit as JSON: its number, or "auto".
func (l RequestLimit) MarshalJSON() ([]byte, error) {
	if l.Auto {
		return []byte(`"auto"`), nil
	}
	return json.Marshal(l.N)
}

// UnmarshalJSON reads an integer or "auto".
func (l *RequestLimit) UnmarshalJSON(b []byte) error {
	if string(b) == `"auto"` {
		*l = RequestLimit{Auto: true}
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf(`%w: max_requests: want an integer or "auto", got %s`, ErrInvalidCount, b)
	}
	*l = RequestLimit{N: n}
	return nil
}

// parseRequestLimit reads a Caddyfile value of max_requests.
func parseRequestLimit(arg string) (*RequestLimit, error) {
	if arg == "auto" {
		return &RequestLimit{Auto: true}, nil
	}
	n, err := strconv.Atoi(arg)
	if err != nil {
		return nil, fmt.Errorf(`want an integer or "auto", got %q`, arg)
	}
	return &RequestLimit{N: n}, nil
}

// compileAuto checks the bounds of an automatic limit.
func (s *overloadSettings) compileAuto(o *Overload) (err error) {
	for _, b := range []struct {
		name string
		n    *int
	}{{"max_requests_min", o.MaxRequestsMin}, {"max_requests_max", o.MaxRequestsMax}} {
		if b.n != nil && !s.auto {
			return optionError(b.name, fmt.Errorf("%w: it bounds max_requests auto", ErrInapplicableOption))
		}
	}
	if !s.auto {
		return nil
	}
	if s.autoMin, err = count(o.MaxRequestsMin, DefaultAutoLimitMin, 1, MaxRequestLimit); err != nil {
		return optionError("max_requests_min", err)
	}
	if s.autoMax, err = count(o.MaxRequestsMax, DefaultAutoLimitMax, 1, MaxRequestLimit); err != nil {
		return optionError("max_requests_max", err)
	}
	if s.autoMax < s.autoMin {
		return optionError("max_requests_max", fmt.Errorf("%w: want at least max_requests_min (%d), got %d", ErrInvalidCount, s.autoMin, s.autoMax))
	}
	return nil
}

// applyLimit sets in's automatic limit as the app's config says (off
// without max_requests auto), at now.
func (a *App) applyLimit(in *backend.Instance, now int64) {
	if a.limits.auto {
		in.SetAutoLimit(a.limits.autoMin, a.limits.autoMax, now)
	} else {
		in.SetAutoLimit(0, 0, now)
	}
}

// limitOutcome is what an attempt that ended with status (the client's)
// and failure (nil if the instance answered) says of the instance's
// capacity: overloaded when it answered 503 or 429, failed when it did not
// answer or its status counts as a failure (unhealthy_status), nothing
// when the client caused the end.
func limitOutcome(status int, failure error, unhealthy bool, cutShort bool) backend.Outcome {
	switch {
	case status == StatusClientClosedRequest || clientsFault(failure):
		return backend.OutcomeNone
	case cutShort || failure != nil:
		return backend.OutcomeFailed
	case status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests:
		return backend.OutcomeOverloaded
	case unhealthy:
		return backend.OutcomeFailed
	}
	return backend.OutcomeOK
}

// resendOverloaded reports whether the answer of status to r's attempt
// rs, sent with inFlight requests in flight to its instance, is to be
// discarded and r sent again, to any instance that instance included: the
// instance refused it as overloaded (503, 429), so its automatic limit
// drops below inFlight, and r waits for room like any other request (the
// queue, if the app has one). It must be idempotent with a body that can
// be sent again, within retries, try_duration and the retry budget (which
// counts it). Probing the limit upward so costs the clients nothing.
func (a *App) resendOverloaded(r *http.Request, status int, inFlight int64, rs *retryState) bool {
	if status != http.StatusServiceUnavailable && status != http.StatusTooManyRequests {
		return false
	}
	if inFlight <= int64(a.limits.autoMin) || !idempotent(r) || !rs.body.replayable() {
		return false
	}
	now := backend.Now()
	return a.retryWithin(rs, now) && a.budget.allowRetry(now)
}
