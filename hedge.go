package caddylb

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
)

// Hedging: when the first attempt of a request has not answered (its
// response headers) by a delay, a second attempt goes to another
// instance; the first answer wins, the other is cancelled and counts as
// no failure. Only for requests that may be sent twice (idempotent, no
// body, no protocol switch), and within the retry budget.

// Bounds of hedging.
const (
	// hedgeRefresh is how often a quantile delay is estimated again.
	hedgeRefresh = 250 * time.Millisecond
	// hedgeMinSamples latencies of the last minute are needed for a
	// quantile delay: until then, no hedges.
	hedgeMinSamples = 100
)

// Hedging holds the options of hedged requests.
type Hedging struct {
	// When to send a second attempt of a request to another instance: a
	// quantile of the app's response-header latencies over the last
	// minute ("p95", "p99.9": the delay follows the pool as it goes), or
	// a fixed delay ("50ms"). Only requests that may be sent twice are
	// hedged: idempotent ones (GET, HEAD, PUT, DELETE, OPTIONS, TRACE, or
	// with an Idempotency-Key) without a body, not asking to switch
	// protocols, and not pinned by a sticky cookie. Hedges spend from the
	// retry budget (retry_budget_percent), never more. Default: none (no
	// hedging).
	HedgeAfter string `json:"hedge_after,omitempty"`
}

// hedgeSettings are a Hedging, checked; on is false without hedge_after.
type hedgeSettings struct {
	on       bool
	quantile float64       // 0..1, or 0 for a fixed delay
	fixed    time.Duration // the fixed delay
}

func (h *Hedging) compile() (s hedgeSettings, err error) {
	v := h.HedgeAfter
	if v == "" {
		return s, nil
	}
	s.on = true
	if q, ok := strings.CutPrefix(v, "p"); ok {
		f, err := strconv.ParseFloat(q, 64)
		if err != nil || f < 50 || f >= 100 {
			return s, optionError("hedge_after", fmt.Errorf("%w: want a quantile from p50 to p99.99, or a duration, got %q", ErrInvalidDuration, v))
		}
		s.quantile = f / 100
		return s, nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil || d <= 0 {
		return s, optionError("hedge_after", fmt.Errorf("%w: want a quantile such as p95, or a positive duration, got %q", ErrInvalidDuration, v))
	}
	s.fixed = d
	return s, nil
}

// hedgeState is an app's live hedging: the delay now, and counts.
type hedgeState struct {
	mu       sync.Mutex   // held by the request that estimates the delay
	delay    atomic.Int64 // ns; 0: not enough latencies to hedge by
	computed atomic.Int64 // backend.Now when estimated
	sent     atomic.Uint64
	won      atomic.Uint64
}

// hedgeDelay returns the delay after which a request is hedged now; 0
// means no hedging for now (a quantile of too few latencies).
func (a *App) hedgeDelay() time.Duration {
	if a.hedge.fixed > 0 {
		return a.hedge.fixed
	}
	st := &a.hedging
	now := backend.Now()
	if now-st.computed.Load() >= int64(hedgeRefresh) && st.mu.TryLock() {
		d, n := backend.LatencyQuantile(a.pool.All(), a.hedge.quantile, now)
		if n < hedgeMinSamples {
			d = 0
		}
		st.delay.Store(int64(d))
		st.computed.Store(now)
		st.mu.Unlock()
	}
	return time.Duration(st.delay.Load())
}

// hedgeable reports whether r may be sent twice at once: idempotent,
// without a body, not asking to switch protocols, not gRPC.
func hedgeable(r *http.Request) bool {
	if !idempotent(r) || r.ContentLength != 0 || len(r.TransferEncoding) > 0 || isGRPC(r.Header) {
		return false
	}
	_, upgrade := r.Header["Upgrade"]
	return !upgrade
}

// attemptResult is what an attempt's send returned.
type attemptResult struct {
	at  *attempt
	res *http.Response
	err error
}

// proxyHedged is proxy for the first attempt of a hedgeable request: the
// attempt to in through t, and, when it has not answered within the
// hedge delay, a second one to another instance of m (picked as a retry
// would be, if the retry budget allows), the first answer relayed and the
// other attempt cancelled (see attempt.abandon). An attempt that fails
// while the other is under way counts as it would alone; when both fail,
// the last failure is returned, for the retry loop.
func (a *App) proxyHedged(t *target, in *backend.Instance, trial bool, cookie string, rs retryState, w http.ResponseWriter, r *http.Request, m *members, repl *caddy.Replacer) (int, error) {
	delay := a.hedgeDelay()
	if delay <= 0 {
		return a.proxy(t, in, trial, cookie, rs, w, r)
	}
	results := make(chan attemptResult, 2)
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	launch := func(t *target, in *backend.Instance, trial bool, cookie string) {
		ctx, cancel := context.WithCancel(r.Context())
		cancels = append(cancels, cancel)
		at := a.newAttempt(t, in, trial, cookie, rs, w)
		at.quiet = true
		rr := r.WithContext(ctx)
		go func() {
			res, err := at.send(rr)
			results <- attemptResult{at, res, err}
		}()
	}
	launch(t, in, trial, cookie)
	pending, hedged := 1, false
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			if t2, in2, trial2, cookie2, ok := a.pickHedge(r, m, in); ok {
				launch(t2, in2, trial2, cookie2)
				pending, hedged = pending+1, true
				a.hedging.sent.Add(1)
			}
		case res := <-results:
			pending--
			if res.err != nil {
				// A failure (or the client left): it counts as it would
				// alone. With the other attempt under way, that one
				// decides.
				if pending > 0 {
					_, _ = res.at.finish(nil, res.err, r)
					continue
				}
				return res.at.finish(nil, res.err, r)
			}
			// The first answer: it is relayed, the other given up.
			for _, c := range cancels {
				c()
			}
			if pending > 0 {
				defer func() {
					other := <-results
					other.at.abandon(other.res, other.err)
				}()
			}
			if hedged {
				markHedged(r, repl)
				if res.at.in != in {
					a.hedging.won.Add(1)
					announce(r, repl, res.at.t, res.at.in, 0)
				}
			}
			return res.at.finish(res.res, nil, r)
		}
	}
}

// pickHedge picks the instance of a hedge of r, not in, and what sending
// to it takes, if one is available and the retry budget allows.
func (a *App) pickHedge(r *http.Request, m *members, in *backend.Instance) (t *target, in2 *backend.Instance, trial bool, cookie string, ok bool) {
	in2, trial, _, _ = a.pick(r, m, []*backend.Instance{in})
	if in2 == nil {
		return nil, nil, false, "", false
	}
	t = m.targets[in2]
	if t == nil || !a.budget.allowRetry(backend.Now()) {
		if trial {
			in2.AbandonTrial()
		}
		a.done(in2)
		return nil, nil, false, "", false
	}
	if a.sticky != nil {
		cookie = t.cookie
		if r.TLS != nil {
			cookie = t.secureCookie
		}
	}
	return t, in2, trial, cookie, true
}

// hedgedField marks a hedged request in the access log.
var hedgedField = zap.Bool("load_balancer_hedged", true)

// markHedged makes it known to the placeholders and the access log that
// r was hedged: a second attempt went out while the first was under way.
func markHedged(r *http.Request, repl *caddy.Replacer) {
	if repl != nil {
		repl.Set("http.load_balancer.hedged", true)
	}
	if accessLogged(r) {
		if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
			extra.Set(hedgedField)
		}
	}
}
