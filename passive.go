package caddylb

import (
	"fmt"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// Defaults of passive health checks.
const (
	DefaultMaxFails          = 5
	DefaultFailDuration      = 10 * time.Second
	DefaultMaxFailDuration   = 5 * time.Minute
	DefaultMaxEjectedPercent = 50
)

// PassiveHealth holds the options of passive health checks: failures of
// real requests eject an instance for a while.
type PassiveHealth struct {
	// After this many consecutive failures of real requests (no
	// connection, reset, timeout, a response cut short, or a status listed
	// in unhealthy_status), the instance is ejected for fail_duration. 0
	// turns passive checks off; at most 1000. Default: 5.
	MaxFails *int `json:"max_fails,omitempty"`

	// Statuses of real responses that count as failures for max_fails:
	// codes ("503") or classes ("5xx"). Default: none (only connection
	// errors, timeouts and responses cut short count).
	UnhealthyStatus Statuses `json:"unhealthy_status,omitempty"`

	// How long an instance stays ejected the first time. Each further
	// ejection doubles it, up to max_fail_duration; the doubling unwinds
	// as the instance stays in. When the time is up a single trial request
	// decides whether the instance is back or ejected again. A passing
	// active health check ends an ejection early. Default: 10s.
	FailDuration *Duration `json:"fail_duration,omitempty"`

	// The longest an ejection lasts; not shorter than fail_duration.
	// Default: 5m (or fail_duration, if longer).
	MaxFailDuration *Duration `json:"max_fail_duration,omitempty"`

	// The largest share of the app's instances, in percent, that passive
	// checks may eject at once; at least one may always be. Beyond it,
	// failing instances stay in. Default: 50.
	MaxEjectedPercent *int `json:"max_ejected_percent,omitempty"`

	// Fail-open: when fewer than this percentage of the app's instances
	// are available (healthy and not ejected), requests are balanced over
	// all of them, health ignored, rather than answered 503 (Envoy's
	// healthy panic threshold). Draining instances and those of weight 0
	// stay out. Default: 0 (off).
	PanicThreshold int `json:"panic_threshold,omitempty"`
}

// compile returns the policy passive checks follow (without slow start
// and the initial health, which are other options') and the panic
// threshold.
func (p *PassiveHealth) compile() (pol backend.Policy, panicPercent int, err error) {
	if pol.MaxFails, err = count(p.MaxFails, DefaultMaxFails, 0, MaxHealthStreak); err != nil {
		return pol, 0, optionError("max_fails", err)
	}
	if pol.UnhealthyStatus, err = p.UnhealthyStatus.parse(); err != nil {
		return pol, 0, optionError("unhealthy_status", err)
	}
	if pol.FailDuration, err = positive(p.FailDuration, DefaultFailDuration); err != nil {
		return pol, 0, optionError("fail_duration", err)
	}
	if pol.MaxFailDuration, err = positive(p.MaxFailDuration, DefaultMaxFailDuration); err != nil {
		return pol, 0, optionError("max_fail_duration", err)
	}
	if p.MaxFailDuration == nil {
		pol.MaxFailDuration = max(pol.MaxFailDuration, pol.FailDuration)
	} else if pol.MaxFailDuration < pol.FailDuration {
		return pol, 0, optionError("max_fail_duration", fmt.Errorf("%w: %v is shorter than fail_duration (%v)",
			ErrInvalidDuration, pol.MaxFailDuration, pol.FailDuration))
	}
	if pol.MaxEjectedPercent, err = percent(p.MaxEjectedPercent, DefaultMaxEjectedPercent); err != nil {
		return pol, 0, optionError("max_ejected_percent", err)
	}
	if panicPercent, err = percent(&p.PanicThreshold, 0); err != nil {
		return pol, 0, optionError("panic_threshold", err)
	}
	return pol, panicPercent, nil
}
