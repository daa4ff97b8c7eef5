package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
)

// rtProber probes through an http.RoundTripper: the instance's own
// transport, so that checks share its connections. It serves the checks
// the HTTP/1.1 Prober cannot: any check of an h2c instance, and gRPC
// checks (grpc.health.v1.Health/Check) of any instance. Each probe is a
// whole http.Request: meant for the fleets gRPC and HTTP/2 instances come
// in, not for tens of thousands of instances.
type rtProber struct {
	transport atomic.Pointer[http.RoundTripper] // set by Monitor.Run
	target    *url.URL                          // the health URL (HTTP checks) or the instance's (gRPC)

	mu      sync.Mutex
	ctx     context.Context // ends with abort
	cancel  context.CancelFunc
	aborted bool
}

func newRTProber(target *url.URL) *rtProber {
	ctx, cancel := context.WithCancel(context.Background())
	return &rtProber{target: target, ctx: ctx, cancel: cancel}
}

var errNoTransport = errors.New("no transport to check through")

// roundTrip sends req through the instance's transport.
func (p *rtProber) roundTrip(req *http.Request) (*http.Response, error) {
	rt := p.transport.Load()
	if rt == nil {
		return nil, errNoTransport
	}
	return (*rt).RoundTrip(req)
}

func (p *rtProber) abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.aborted = true
	p.cancel()
}

func (p *rtProber) isAborted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.aborted
}

// Close does nothing: the connections are the transport's.
func (p *rtProber) Close() {}

func (p *rtProber) probe(spec *Spec, b *buffers) error {
	ctx, cancel := context.WithTimeout(p.ctx, spec.Timeout)
	defer cancel()
	var err error
	if spec.GRPC {
		err = p.probeGRPC(ctx, spec, b)
	} else {
		err = p.probeHTTP(ctx, spec, b)
	}
	if err != nil && ctx.Err() != nil {
		return probeError(ctx.Err(), spec.Timeout)
	}
	return err
}

// probeHTTP sends the HTTP check spec describes.
func (p *rtProber) probeHTTP(ctx context.Context, spec *Spec, b *buffers) error {
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	u := *p.target
	u.User = nil
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return err
	}
	if u := p.target.User; u != nil {
		pass, _ := u.Password()
		req.SetBasicAuth(u.Username(), pass)
	}
	for name, values := range spec.Headers {
		name = http.CanonicalHeaderKey(name)
		if name == "Host" {
			if len(values) > 0 {
				req.Host = values[0]
			}
			continue
		}
		req.Header[name] = values
	}
	if spec.Node != "" {
		req.Header[NodeHeader] = []string{spec.Node}
	}
	resp, err := p.roundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	res := response{code: resp.StatusCode}
	body, err := readAtMost(resp.Body, b, spec.Body != nil)
	res.body = body
	return judge(spec, res, err)
}

// readAtMost reads up to maxBodyRead bytes of body, into b.body if keep.
func readAtMost(body io.Reader, b *buffers, keep bool) ([]byte, error) {
	if !keep {
		_, err := io.Copy(io.Discard, io.LimitReader(body, maxBodyRead))
		return nil, err
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(io.LimitReader(body, maxBodyRead))
	b.body = append(b.body[:0], buf.Bytes()...)
	return b.body, err
}

// probeGRPC asks the instance's grpc.health.v1.Health service about
// spec.GRPCService: SERVING passes; any other answer, a gRPC error or the
// timeout fails.
func (p *rtProber) probeGRPC(ctx context.Context, spec *Spec, b *buffers) error {
	u := url.URL{Scheme: p.target.Scheme, Host: p.target.Host, Path: "/grpc.health.v1.Health/Check"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(healthCheckRequest(spec.GRPCService)))
	if err != nil {
		return err
	}
	req.Header["Content-Type"] = []string{"application/grpc"}
	req.Header["Te"] = []string{"trailers"}
	req.Header["User-Agent"] = []string{"caddy-lb-health"}
	if spec.Node != "" {
		req.Header[NodeHeader] = []string{spec.Node}
	}
	resp, err := p.roundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := readAtMost(resp.Body, b, true)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	code, msg := grpcStatus(resp)
	if code != "0" {
		if code == "" {
			return fmt.Errorf("no grpc-status")
		}
		return fmt.Errorf("grpc status %s: %s", code, msg)
	}
	status, err := healthCheckStatus(body)
	if err != nil {
		return err
	}
	if status != servingStatusServing {
		return fmt.Errorf("health service says %s", servingStatusName(status))
	}
	return nil
}

// grpcStatus returns a response's grpc-status and grpc-message: from its
// trailers, or from its headers for a trailers-only response.
func grpcStatus(resp *http.Response) (code, msg string) {
	if code = resp.Trailer.Get("Grpc-Status"); code != "" {
		return code, resp.Trailer.Get("Grpc-Message")
	}
	return resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
}
