package backend

import (
	"fmt"
	"math"
	"strconv"
)

// Statistical outlier ejection (Envoy's outlier detection): on top of
// consecutive failures, an instance is ejected when its share of failed
// requests over an interval stands out from the pool's (success rate), or
// passes a threshold (failure percentage). The same ejection as
// consecutive failures: the same doubling, the same max_ejected_percent,
// the same trial to come back.

// OutlierPolicy says when a sweep ejects an instance for its statistics.
type OutlierPolicy struct {
	// StdevFactor turns success-rate ejection on (0: off): an instance
	// whose success rate is more than StdevFactor standard deviations
	// below the mean of the others' is ejected. The deviation counts as
	// at least MinStdev, so that among instances that all succeed one
	// that fails now and then is not an outlier.
	StdevFactor float64
	// FailurePercent turns failure-percentage ejection on (0: off): an
	// instance that failed at least this percentage of its requests is
	// ejected.
	FailurePercent int
	// MinHosts instances with MinRequests requests each in the interval
	// are needed for either to judge.
	MinHosts, MinRequests int
}

// MinStdev is the least standard deviation of success rates, as a
// fraction, that success-rate ejection counts with: 2.5 percentage
// points.
const MinStdev = 0.025

// outlierCounts is what a sweep saw of an instance: its responses and
// the failed ones (a status of 500 or more, ours for an exchange it broke
// included), in all.
type outlierCounts struct{ requests, failures uint64 }

func countsOf(in *Instance) outlierCounts {
	var c outlierCounts
	for i := range in.stats.responses {
		n := in.stats.responses[i].Load()
		c.requests += n
		if StatusClasses[i] == "5xx" {
			c.failures += n
		}
	}
	return c
}

// SweepOutliers judges each instance of the pool by its requests since
// the last sweep, at now, and ejects the outliers p finds (within
// MaxEjectedPercent), with the reason. It returns the instances it
// ejected. The first sweep of a pool only takes its counts.
func (pl *Pool) SweepOutliers(p *OutlierPolicy, now int64) []*Instance {
	pl.ejectMu.Lock()
	defer pl.ejectMu.Unlock()
	all := pl.All()
	counts := make(map[*Instance]outlierCounts, len(all))
	type sample struct {
		in       *Instance
		requests uint64
		rate     float64 // of success
	}
	var samples []sample
	for _, in := range all {
		c := countsOf(in)
		counts[in] = c
		last, seen := pl.outlierCounts[in]
		if !seen || c.requests < last.requests {
			continue
		}
		r, f := c.requests-last.requests, c.failures-last.failures
		if r == 0 || r < uint64(p.MinRequests) || in.flags.Load()&(flagEjected|flagDraining) != 0 {
			continue
		}
		samples = append(samples, sample{in, r, 1 - float64(f)/float64(r)})
	}
	pl.outlierCounts = counts
	pl.sweeps.Add(1)
	if len(samples) < max(p.MinHosts, 1) {
		return nil
	}
	var ejected []*Instance
	eject := func(in *Instance, reason string) {
		if in.ejectOutlier(now, reason, pl.roomFor(in)) {
			ejected = append(ejected, in)
		}
	}
	for i, s := range samples {
		if p.FailurePercent > 0 && (1-s.rate)*100 >= float64(p.FailurePercent) {
			eject(s.in, fmt.Sprintf("failure rate %s over %d requests (threshold %d%%)", pct(1-s.rate), s.requests, p.FailurePercent))
			continue
		}
		if p.StdevFactor <= 0 || len(samples) < 2 {
			continue
		}
		// The mean and deviation of the others': an outlier does not
		// pull them toward itself.
		var sum, sq float64
		for j, o := range samples {
			if j != i {
				sum += o.rate
			}
		}
		mean := sum / float64(len(samples)-1)
		for j, o := range samples {
			if j != i {
				sq += (o.rate - mean) * (o.rate - mean)
			}
		}
		stdev := max(math.Sqrt(sq/float64(len(samples)-1)), MinStdev)
		if threshold := mean - p.StdevFactor*stdev; s.rate < threshold {
			eject(s.in, fmt.Sprintf("success rate %s vs pool %s (threshold %s)", pct(s.rate), pct(mean), pct(threshold)))
		}
	}
	return ejected
}

// pct formats a fraction as a percentage, to a tenth of a point at most
// (70%, 98.5%).
func pct(f float64) string {
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%"
}

// Sweeps returns how many outlier sweeps the pool has made.
func (pl *Pool) Sweeps() uint64 { return pl.sweeps.Load() }

// roomFor returns the check of MaxEjectedPercent for ejecting in; the
// caller holds ejectMu.
func (pl *Pool) roomFor(in *Instance) func() bool {
	return func() bool {
		ejected := 0
		all := pl.All()
		for _, x := range all {
			if x != in && x.flags.Load()&flagEjected != 0 {
				ejected++
			}
		}
		allowed := max(1, len(all)*in.policy.Load().MaxEjectedPercent/100)
		return ejected < allowed
	}
}

// ejectOutlier ejects the instance at now for reason, if room allows and
// it is not ejected already, and reports whether it did.
func (in *Instance) ejectOutlier(now int64, reason string, room func() bool) bool {
	in.mu.Lock()
	if in.flags.Load()&flagEjected != 0 || in.st.closed || !room() {
		in.mu.Unlock()
		return false
	}
	c := in.ejectLocked(now, in.policy.Load(), reason)
	in.mu.Unlock()
	in.notify(c)
	return true
}
