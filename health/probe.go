package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// maxBodyRead bounds how much of a probe's response body is read: matched
// against Spec.Body, or discarded so the connection can be reused.
const maxBodyRead = 64 << 10

// Spec is how an app checks its instances.
type Spec struct {
	// Interval is the time between two checks of an instance; each is
	// jittered by up to a tenth of it either way.
	Interval time.Duration
	// Timeout bounds each probe, from dial to the end of the body read.
	Timeout time.Duration
	// Method of the probes; "" means GET.
	Method string
	// Headers sent with each probe; a "Host" value sets the Host header.
	Headers http.Header
	// Status holds the statuses of a passing check.
	Status backend.StatusSet
	// Body, if set, must match the first 64 KiB of the response body.
	Body *regexp.Regexp
	// Passes and Fails are the consecutive checks that bring an instance
	// back or take it out.
	Passes, Fails int
}

// newClient returns a client for probes on the given transport. It never
// follows a redirect, so a probe cannot be sent to another host: a 3xx
// answer is simply not healthy (unless the Spec's statuses say it is).
func newClient(rt http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: rt,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Probe sends one check to target as spec says, and returns nil if the
// answer has one of spec's statuses (2xx if it has none) and a body
// matching spec's, within spec's timeout. The error otherwise says why,
// without the URL (callers know it, and it may carry credentials).
func Probe(ctx context.Context, client *http.Client, target string, spec *Spec) error {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return err
	}
	for name, values := range spec.Headers {
		if http.CanonicalHeaderKey(name) == "Host" {
			if len(values) > 0 {
				req.Host = values[0]
			}
			continue
		}
		req.Header[http.CanonicalHeaderKey(name)] = values
	}
	resp, err := client.Do(req)
	if err != nil {
		return probeError(err, spec.Timeout)
	}
	defer resp.Body.Close()
	var body []byte
	if spec.Body != nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, maxBodyRead))
	} else {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyRead))
	}
	if !statusOK(spec, resp.StatusCode) {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if err != nil {
		return fmt.Errorf("reading the body: %w", probeError(err, spec.Timeout))
	}
	if spec.Body != nil && !spec.Body.Match(body) {
		return fmt.Errorf("body does not match %q", spec.Body.String())
	}
	return nil
}

func statusOK(spec *Spec, code int) bool {
	if spec.Status.Empty() {
		return code >= 200 && code <= 299
	}
	return spec.Status.Has(code)
}

// probeError makes a probe's transport error short: no URL, and a
// timeout said as such.
func probeError(err error, timeout time.Duration) error {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		err = uerr.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	return err
}
