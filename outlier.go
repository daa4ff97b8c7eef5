package caddylb

import (
	"fmt"
	"math"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// Defaults of outlier ejection.
const (
	DefaultOutlierInterval    = 10 * time.Second
	DefaultOutlierMinHosts    = 5
	DefaultOutlierMinRequests = 100
)

// OutlierDetection holds the options of statistical outlier ejection
// (Envoy's outlier detection), on top of max_fails: every interval, an
// instance whose requests failed (a status of 500 or more, ours for an
// exchange it broke included) much more often than the others' is
// ejected, as max_fails ejects (the same doubling, max_ejected_percent
// and trial). Both kinds are off unless set.
type OutlierDetection struct {
	// Success-rate ejection: an instance whose success rate over the
	// interval is more than this many standard deviations below the mean
	// of the other instances' is ejected (Envoy: 1.9). The deviation
	// counts as at least 2.5 points, so that among instances that all
	// succeed one that fails now and then is no outlier. 0 to 100.
	SuccessRateStdevFactor *float64 `json:"success_rate_stdev_factor,omitempty"`

	// Failure-percentage ejection: an instance that failed at least this
	// percentage of its requests over the interval is ejected. 1 to 100.
	FailurePercentThreshold *int `json:"failure_percent_threshold,omitempty"`

	// How often instances are judged, over the requests since the last
	// time. Default: 10s.
	OutlierInterval *Duration `json:"outlier_interval,omitempty"`

	// Judging takes at least this many instances, each with at least
	// outlier_min_requests requests in the interval. Defaults: 5 and 100.
	OutlierMinHosts    *int `json:"outlier_min_hosts,omitempty"`
	OutlierMinRequests *int `json:"outlier_min_requests,omitempty"`
}

// outlierSettings are an OutlierDetection, checked, with defaults; on is
// false when neither kind is set.
type outlierSettings struct {
	on       bool
	policy   backend.OutlierPolicy
	interval time.Duration
}

func (o *OutlierDetection) compile() (s outlierSettings, err error) {
	if f := o.SuccessRateStdevFactor; f != nil {
		if *f < 0 || *f > 100 || math.IsNaN(*f) {
			return s, optionError("success_rate_stdev_factor", fmt.Errorf("%w: want a number from 0 to 100, got %v", ErrInvalidCount, *f))
		}
		s.policy.StdevFactor = *f
	}
	if s.policy.FailurePercent, err = count(o.FailurePercentThreshold, 0, 1, 100); err != nil {
		return s, optionError("failure_percent_threshold", err)
	}
	s.on = s.policy.StdevFactor > 0 || s.policy.FailurePercent > 0
	for _, opt := range []struct {
		name string
		set  bool
	}{{"outlier_interval", o.OutlierInterval != nil}, {"outlier_min_hosts", o.OutlierMinHosts != nil}, {"outlier_min_requests", o.OutlierMinRequests != nil}} {
		if opt.set && !s.on {
			return s, optionError(opt.name, fmt.Errorf("%w: it configures outlier ejection, which needs success_rate_stdev_factor or failure_percent_threshold", ErrInapplicableOption))
		}
	}
	if s.interval, err = positive(o.OutlierInterval, DefaultOutlierInterval); err != nil {
		return s, optionError("outlier_interval", err)
	}
	if s.policy.MinHosts, err = count(o.OutlierMinHosts, DefaultOutlierMinHosts, 1, MaxRequestLimit); err != nil {
		return s, optionError("outlier_min_hosts", err)
	}
	if s.policy.MinRequests, err = count(o.OutlierMinRequests, DefaultOutlierMinRequests, 1, MaxRequestLimit); err != nil {
		return s, optionError("outlier_min_requests", err)
	}
	return s, nil
}

// sweepOutliers judges the app's instances every outlier_interval until
// its config is unloaded. It runs while the config runs (see adopt).
func (a *App) sweepOutliers() {
	tick := time.NewTicker(a.outliers.interval)
	defer tick.Stop()
	for {
		select {
		case <-a.config:
			return
		case <-tick.C:
			a.pool.SweepOutliers(&a.outliers.policy, backend.Now())
		}
	}
}
