package caddylb

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/golb/caddy-lb/internal/running"
)

// Failover tiers: each instance has a priority (InstanceConfig.Priority,
// or an SRV record's), 0 the first tier and higher numbers backup tiers.
// The app serves from its active tier only (backend/tier.go says how it is
// chosen: the best tier with enough of its instances available); its
// strategy picks among that tier's available instances, and a retry goes
// to a worse tier only once every available instance of the active tier
// was tried (see pick).

// MaxPriority is the highest priority an instance may have, as in DNS SRV.
const MaxPriority = 65535

// Tiers holds the options of failover tiers.
type Tiers struct {
	// A tier with less than this percentage (1 to 100) of its instances
	// available (healthy, not ejected; drained instances and those of
	// weight 0 not counted) hands over to the next tier, whole, as
	// Envoy's priority levels do. Traffic returns to the better tier as
	// soon as it has the share again. When no tier has it, the best tier
	// with any available instance serves. Default: a tier hands over
	// only when none of its instances is available (HAProxy's backup
	// servers).
	FailoverThreshold *int `json:"failover_threshold,omitempty"`
}

// compile returns the failover threshold, in percent; 0 for the default.
func (t *Tiers) compile() (int, error) {
	if t.FailoverThreshold == nil {
		return 0, nil
	}
	if v := *t.FailoverThreshold; v < 1 || v > 100 {
		return 0, optionError("failover_threshold", fmt.Errorf("%w: want 1 to 100, got %d", ErrInvalidPercent, v))
	}
	return *t.FailoverThreshold, nil
}

// instancePriority checks an instance's priority; nil means 0.
func instancePriority(p *int) (int, error) {
	if p == nil {
		return 0, nil
	}
	if *p < 0 || *p > MaxPriority {
		return 0, fmt.Errorf("%w: want an integer from 0 to %d, got %d", ErrInvalidPriority, MaxPriority, *p)
	}
	return *p, nil
}

// onTierChange reports that the app's active tier changed from one
// priority to another: a log line and the event
// load_balancer.tier_changed, while the app's config runs (a config
// being unloaded may still rebuild its lists for the requests it
// finishes, and stays quiet).
func (h *Handler) onTierChange(app *App) func(from, to int) {
	return func(from, to int) {
		if running.Config() != app.config {
			return
		}
		h.logger.Info("active tier changed", zap.String("app", app.name), zap.Int("from", from), zap.Int("to", to))
		if h.events != nil && h.ctx.Err() == nil {
			h.events.Emit(h.ctx, "load_balancer.tier_changed", map[string]any{"app": app.name, "from": from, "to": to})
		}
	}
}
