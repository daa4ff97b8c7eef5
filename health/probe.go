package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golb/caddy-lb/backend"
)

// maxBodyRead bounds how much of a probe's response body is read: matched
// against Spec.Body, or discarded so the connection can be reused. A longer
// body closes the connection instead.
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
	// GRPC makes the checks gRPC ones: grpc.health.v1.Health/Check for
	// GRPCService ("" for the whole server), passing if the answer is
	// SERVING. Method, Headers, Status and Body do not apply.
	GRPC        bool
	GRPCService string
	// Node names this load balancer in its fleet: sent as NodeHeader with
	// every probe ("" for none).
	Node string
}

// DialFunc dials instances, as net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Prober sends probes to one URL over one kept-alive HTTP/1.1 connection
// (TLS for https), one probe at a time. A probe writes the request's bytes,
// built once per Spec, and reads the answer with its own small parser
// through a buffer lent by the caller: an idle Prober holds its connection
// and the request's bytes, nothing else. It never follows a redirect: a
// 3xx is just a status, healthy only if the Spec says so.
//
// A probe on a kept-alive connection the instance has closed meanwhile
// (nothing comes back) is sent again, once, on a new connection.
type Prober struct {
	dial       DialFunc
	addr       string      // host:port to dial
	tls        *tls.Config // nil for http
	host       string      // the Host header, but for a Spec's own
	target     string      // the request target: path and query
	auth       string      // Authorization from the URL's userinfo, or ""
	reqSpec    *Spec       // the Spec req was built for
	req        []byte      // the request's bytes
	headerHost string      // a Host the Spec's headers give, "" if none
	method     string      // of req

	mu      sync.Mutex // guards conn and cancel, for abort
	conn    net.Conn   // nil while not connected
	cancel  func()     // ends a dial under way; nil if none
	aborted bool       // see abort
}

// NewProber returns a prober of target, an http or https URL (userinfo, if
// any, is sent as basic auth), dialing through dial (nil: a net.Dialer),
// with tlsConfig for https (nil: the system's roots; its ServerName
// defaults to the URL's host name, and only HTTP/1.1 is offered).
func NewProber(target string, dial DialFunc, tlsConfig *tls.Config) (*Prober, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	p := &Prober{dial: dial, host: u.Host, target: u.RequestURI()}
	if p.dial == nil {
		p.dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
		p.tls = &tls.Config{}
		if tlsConfig != nil {
			p.tls = tlsConfig.Clone()
		}
		if p.tls.ServerName == "" {
			p.tls.ServerName = u.Hostname()
		}
		p.tls.NextProtos = []string{"http/1.1"}
	default:
		return nil, fmt.Errorf("cannot probe a %q URL", u.Scheme)
	}
	p.addr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		pass, _ := u.User.Password()
		p.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	return p, nil
}

// Probe sends one probe as spec says, and returns nil if the answer has
// one of spec's statuses (2xx if it has none) and a body matching spec's,
// within spec's timeout; the error otherwise says why, without the URL
// (callers know it, and it may carry credentials). ctx ending cuts the
// probe short.
func (p *Prober) Probe(ctx context.Context, spec *Spec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	p.aborted = false
	p.mu.Unlock()
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, p.abort)
		defer stop()
	}
	b := getBuffers()
	defer putBuffers(b)
	err := p.probe(spec, b)
	if cerr := ctx.Err(); cerr != nil && err != nil {
		return cerr
	}
	return err
}

// Close closes the prober's connection.
func (p *Prober) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

// abort cuts a probe under way short (its reads and writes fail at once,
// its dial ends), and every later one until Probe starts anew.
func (p *Prober) abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.aborted = true
	if p.conn != nil {
		_ = p.conn.SetDeadline(aLongTimeAgo)
	}
	if p.cancel != nil {
		p.cancel()
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// buffers are what a probe reads its answer through: lent by the worker
// running it, so that idle probers hold none.
type buffers struct {
	br   *bufio.Reader
	body []byte // for Spec.Body; made on first use
}

var bufferPool = sync.Pool{New: func() any { return &buffers{br: bufio.NewReaderSize(nil, 8<<10)} }}

func getBuffers() *buffers  { return bufferPool.Get().(*buffers) }
func putBuffers(b *buffers) { bufferPool.Put(b) }

// probe is Probe without a context, with the caller's buffers.
func (p *Prober) probe(spec *Spec, b *buffers) error {
	deadline := time.Now().Add(spec.Timeout)
	req := p.request(spec)
	for attempt := 0; ; attempt++ {
		c, reused, err := p.connect(deadline)
		if err != nil {
			return probeError(err, spec.Timeout)
		}
		if _, err = c.Write(req); err == nil {
			b.br.Reset(c)
			var res response
			res, err = readResponse(b, p.method, spec.Body != nil)
			clean := err == nil && res.keepAlive && b.br.Buffered() == 0
			b.br.Reset(nil)
			if err == nil || res.code != 0 {
				if !clean {
					p.drop(c)
				}
				return judge(spec, res, err)
			}
		}
		p.drop(c)
		if reused && attempt == 0 && (errors.Is(err, errNoResponse) || isWriteError(err)) {
			continue // a kept-alive connection the instance had closed
		}
		return probeError(err, spec.Timeout)
	}
}

// judge turns a response into the probe's verdict: its status first, then
// what went wrong reading its body, then the body's match.
func judge(spec *Spec, res response, err error) error {
	if !statusOK(spec, res.code) {
		return fmt.Errorf("status %d", res.code)
	}
	if err != nil {
		return fmt.Errorf("reading the body: %w", probeError(err, spec.Timeout))
	}
	if spec.Body != nil && !spec.Body.Match(res.body) {
		return fmt.Errorf("body does not match %q", spec.Body.String())
	}
	return nil
}

// connect returns the kept-alive connection, with the probe's deadline,
// or dials a new one, and says which.
func (p *Prober) connect(deadline time.Time) (c net.Conn, reused bool, err error) {
	p.mu.Lock()
	if p.aborted {
		p.mu.Unlock()
		return nil, false, context.Canceled
	}
	if c = p.conn; c != nil {
		// Under the lock: an abort's deadline in the past must not be
		// replaced.
		err := c.SetDeadline(deadline)
		p.mu.Unlock()
		if err != nil {
			p.drop(c)
			return p.connect(deadline)
		}
		return c, true, nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	p.cancel = cancel
	p.mu.Unlock()
	defer cancel()
	c, err = p.dial(ctx, "tcp", p.addr)
	if err == nil && p.tls != nil {
		tc := tls.Client(c, p.tls)
		if err = tc.HandshakeContext(ctx); err != nil {
			c.Close()
		}
		c = tc
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cancel = nil
	if err != nil {
		if p.aborted {
			err = context.Canceled
		}
		return nil, false, err
	}
	if p.aborted {
		c.Close()
		return nil, false, context.Canceled
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, false, err
	}
	p.conn = c
	return c, false, nil
}

// drop closes c, the prober's connection.
func (p *Prober) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	if p.conn == c {
		p.conn = nil
	}
	p.mu.Unlock()
}

// request returns the bytes of spec's request, built on first use.
func (p *Prober) request(spec *Spec) []byte {
	if spec == p.reqSpec {
		return p.req
	}
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	host := p.host
	headers := make(http.Header, len(spec.Headers))
	for name, values := range spec.Headers {
		name = http.CanonicalHeaderKey(name)
		if name == "Host" {
			if len(values) > 0 {
				host = values[0]
			}
			continue
		}
		headers[name] = append(headers[name], values...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n", method, p.target, host)
	if p.auth != "" && len(headers["Authorization"]) == 0 {
		fmt.Fprintf(&b, "Authorization: %s\r\n", p.auth)
	}
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		b.WriteString("Content-Length: 0\r\n")
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for name := range headers {
			if !yield(name) {
				return
			}
		}
	}) {
		for _, v := range headers[name] {
			fmt.Fprintf(&b, "%s: %s\r\n", name, strings.TrimSpace(v))
		}
	}
	if spec.Node != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", NodeHeader, spec.Node)
	}
	b.WriteString("\r\n")
	p.reqSpec, p.req, p.method = spec, []byte(b.String()), method
	return p.req
}

// Probe sends one probe to target as spec says, on a connection of its own
// (see Prober.Probe).
func Probe(ctx context.Context, target string, dial DialFunc, spec *Spec) error {
	p, err := NewProber(target, dial, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Probe(ctx, spec)
}

func statusOK(spec *Spec, code int) bool {
	if spec.Status.Empty() {
		return code >= 200 && code <= 299
	}
	return spec.Status.Has(code)
}

// probeError makes a probe's error short: a timeout said as such.
func probeError(err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	return err
}

// isWriteError reports whether err is a failed write of the request.
func isWriteError(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "write"
}

// isAborted reports whether abort was called (and Probe not since).
func (p *Prober) isAborted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.aborted
}

// failingDial is the dial of a prober whose target could not be parsed:
// every check fails with err.
func failingDial(err error) DialFunc {
	return func(context.Context, string, string) (net.Conn, error) { return nil, err }
}
