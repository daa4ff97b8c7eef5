// Package health checks backend instances actively: it asks each one for a
// health URI on an interval and marks it healthy or not by the answer.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/golb/caddy-lb/backend"
)

// maxBodyRead bounds how much of a probe's response body is read (and
// discarded) so the connection can be reused.
const maxBodyRead = 64 << 10

// Checker probes the instances of one app. Run it in its own goroutine; it
// stops when its context ends.
type Checker struct {
	// App names the app in log lines.
	App string
	// Targets are the instances to check, each with its probe URL.
	Targets []Target
	// Interval is the time between rounds of checks.
	Interval time.Duration
	// Timeout bounds each probe, from dial to the end of the headers.
	Timeout time.Duration
	// Client sends the probes. It must not follow redirects: see NewClient.
	Client *http.Client
	// Logger gets one line for each change of an instance's health.
	Logger *zap.Logger
	// OnChange, if set, is called after each change of an instance's
	// health is logged, from the probe's goroutine, with the new health
	// and the reason as logged. It is not called once ctx has ended.
	OnChange func(ctx context.Context, in *backend.Instance, healthy bool, reason string)
}

// Target is an instance and the URL its health is read from.
type Target struct {
	Instance *backend.Instance
	URL      string
}

// NewClient returns a client for probes on the given transport. It never
// follows a redirect, so a probe cannot be sent to another host: a 3xx
// answer is simply not healthy.
func NewClient(rt http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: rt,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Run checks every target at once, then again every Interval, until ctx
// ends. It returns only when no probe it started is still running.
//
// Each probe runs in its own goroutine, so one slow instance does not delay
// the others; a probe still running when the next round comes is not
// stacked with another (see backend.Instance.TryStartCheck), the round just
// skips that instance.
func (c *Checker) Run(ctx context.Context) {
	var probes sync.WaitGroup
	defer probes.Wait()

	ticker := time.NewTicker(c.Interval)
	defer ticker.Stop()
	for {
		for _, t := range c.Targets {
			if !t.Instance.TryStartCheck() {
				continue
			}
			probes.Go(func() { c.check(ctx, t) })
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// check probes one target whose check the caller has started, and records
// and logs the outcome.
func (c *Checker) check(ctx context.Context, t Target) {
	start := time.Now()
	err := Probe(ctx, c.Client, t.URL, c.Timeout)
	took := time.Since(start)
	if ctx.Err() != nil {
		// The config is being unloaded: the probe was cut short by us, so
		// it says nothing about the instance.
		t.Instance.AbandonCheck()
		return
	}
	t.Instance.ObserveCheck(took)
	if !t.Instance.FinishCheck(time.Now(), err) {
		return
	}
	reason := "health check passed"
	if err != nil {
		reason = err.Error()
		c.Logger.Warn("instance unhealthy",
			zap.String("app", c.App),
			zap.String("instance", t.Instance.String()),
			zap.String("reason", reason))
	} else {
		c.Logger.Info("instance healthy",
			zap.String("app", c.App),
			zap.String("instance", t.Instance.String()),
			zap.String("reason", reason))
	}
	if c.OnChange != nil && ctx.Err() == nil {
		c.OnChange(ctx, t.Instance, err == nil, reason)
	}
}

// Probe sends one GET to target and returns nil if the answer is 2xx
// within timeout. The error otherwise says why, without the URL (callers
// know it, and it may carry credentials).
func Probe(ctx context.Context, client *http.Client, target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %v", timeout)
		}
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyRead))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
