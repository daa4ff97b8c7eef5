package caddylb

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// The checks of option values that several options share. Each returns
// the value to use (its default when unset) or an error saying what is
// wrong with it; the option's group names the option (optionError).

// Statuses are HTTP statuses as an option lists them: codes ("503") or
// classes ("5xx").
type Statuses []string

// parse returns the set of statuses s covers; none give the empty set.
func (s Statuses) parse() (backend.StatusSet, error) {
	var set backend.StatusSet
	for _, spec := range s {
		lo, hi, err := parseStatus(spec)
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

// count returns *n, or def if n is nil, checked to be from lo to hi.
func count(n *int, def, lo, hi int) (int, error) {
	if n == nil {
		return def, nil
	}
	if *n < lo || *n > hi {
		return 0, fmt.Errorf("%w: want an integer from %d to %d, got %d", ErrInvalidCount, lo, hi, *n)
	}
	return *n, nil
}

// percent returns *p, or def if p is nil, checked to be from 0 to 100.
func percent(p *int, def int) (int, error) {
	if p == nil {
		return def, nil
	}
	if *p < 0 || *p > 100 {
		return 0, fmt.Errorf("%w: want 0 to 100, got %d", ErrInvalidPercent, *p)
	}
	return *p, nil
}

// positive returns *d, or def if d is nil, checked to be above 0.
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
