package caddylb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Mirroring: a copy of a share of an app's requests goes to a shadow pool,
// to try a new version on real traffic. The client's answer never waits
// for the copy, is never changed by it and never fails because of it: the
// copy is queued, and sent by a few workers of the app; when the shadow is
// slow and the queue is full, copies are dropped and counted, never piled
// up.

// Mirroring holds the options of request mirroring.
type Mirroring struct {
	// The pool (an app of the same load_balancer with a name and no host)
	// that gets the copies. Its answers are read and thrown away.
	Mirror string `json:"mirror,omitempty"`

	// The share of the app's requests copied, in percent (more than 0, at
	// most 100; default 100), spread evenly over the requests.
	MirrorPercent *float64 `json:"mirror_percent,omitempty"`

	// The largest request body copied, in bytes (default 65536). A
	// request with a larger body, or one of unknown length (chunked, or a
	// stream such as gRPC's), or an upgrade, is not copied; a body that is
	// copied is read before the request goes to its instance (so its
	// instance gets it whole, at once).
	MirrorMaxBody *int `json:"mirror_max_body,omitempty"`

	// How many copies may be in flight to the shadow at once (default 16,
	// 1 to 1024), and how many may wait for one of them (default 64, 0 to
	// 100,000). A copy that finds the queue full is dropped.
	MirrorConcurrency *int `json:"mirror_concurrency,omitempty"`
	MirrorQueue       *int `json:"mirror_queue,omitempty"`

	// How long a copy may take, answer body included (default 10s).
	MirrorTimeout *Duration `json:"mirror_timeout,omitempty"`
}

// MirrorHeader is set on every copy, so that the shadow (and its logs) can
// tell a copy from a request of its own.
const MirrorHeader = "X-Lb-Mirror"

// Defaults of the mirroring options.
const (
	DefaultMirrorMaxBody     = 64 << 10
	DefaultMirrorConcurrency = 16
	DefaultMirrorQueue       = 64
	DefaultMirrorTimeout     = 10 * time.Second
)

// mirrorSettings is what compile makes of the options.
type mirrorSettings struct {
	pool        string // "" for no mirroring
	ppm         uint64 // the share copied, per million
	maxBody     int64
	concurrency int
	queue       int
	timeout     time.Duration
}

// compile checks the options of mirroring.
func (mo *Mirroring) compile() (s mirrorSettings, err error) {
	if mo.Mirror == "" {
		for _, o := range []struct {
			name string
			set  bool
		}{{"mirror_percent", mo.MirrorPercent != nil}, {"mirror_max_body", mo.MirrorMaxBody != nil},
			{"mirror_concurrency", mo.MirrorConcurrency != nil}, {"mirror_queue", mo.MirrorQueue != nil}, {"mirror_timeout", mo.MirrorTimeout != nil}} {
			if o.set {
				return s, optionError(o.name, fmt.Errorf("%w: it shapes mirroring, and mirror is not set", ErrInapplicableOption))
			}
		}
		return s, nil
	}
	s.pool = mo.Mirror
	s.ppm = 1_000_000
	if p := mo.MirrorPercent; p != nil {
		if !(*p > 0 && *p <= 100) {
			return s, optionError("mirror_percent", fmt.Errorf("%w: want more than 0, at most 100, got %g", ErrInvalidPercent, *p))
		}
		s.ppm = uint64(*p*10_000 + 0.5)
	}
	maxBody, err := count(mo.MirrorMaxBody, DefaultMirrorMaxBody, 0, 1<<30)
	if err != nil {
		return s, optionError("mirror_max_body", err)
	}
	s.maxBody = int64(maxBody)
	if s.concurrency, err = count(mo.MirrorConcurrency, DefaultMirrorConcurrency, 1, 1024); err != nil {
		return s, optionError("mirror_concurrency", err)
	}
	if s.queue, err = count(mo.MirrorQueue, DefaultMirrorQueue, 0, 100_000); err != nil {
		return s, optionError("mirror_queue", err)
	}
	if s.timeout, err = positive(mo.MirrorTimeout, DefaultMirrorTimeout); err != nil {
		return s, optionError("mirror_timeout", err)
	}
	return s, nil
}

// mirror sends the copies of one app's requests to its shadow pool, for
// as long as the app's config is in use.
type mirror struct {
	mirrorSettings
	shadow *App

	seen  atomic.Uint64 // the app's requests, times ppm
	queue chan *http.Request
	start sync.Once
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	// What became of the copies: sent (mirrored), not made or not queued
	// (dropped, by reason), and sent but failed (an error, or a 5xx).
	mirrored, failures   atomic.Uint64
	droppedFull, skipped atomic.Uint64
}

// newMirror returns the mirror of app, whose copies go to shadow; it
// sends nothing until the first copy, and stops at close.
func newMirror(s mirrorSettings, shadow *App) *mirror {
	m := &mirror{mirrorSettings: s, shadow: shadow, queue: make(chan *http.Request, s.queue)}
	m.ctx, m.stop = context.WithCancel(context.Background())
	return m
}

// resolveMirror finds the shadow pool of app's mirror among the handler's
// pools, or returns the error naming the field at fault.
func resolveMirror(app *App, pools map[string]*App) (*mirror, error) {
	shadow := pools[app.mirroring.pool]
	switch {
	case shadow == nil:
		return nil, appError(app, "mirror", fmt.Errorf("%w %q: no pool of this load_balancer has that name (a pool is an app with a name and no host)", ErrUnknownPool, app.mirroring.pool))
	case shadow == app:
		return nil, appError(app, "mirror", fmt.Errorf("%w: a pool cannot mirror to itself", ErrInvalidSplit))
	case len(shadow.splitting.pools) > 0:
		return nil, appError(app, "mirror", fmt.Errorf("%w: pool %q splits its requests; a mirror's pool must have instances", ErrInvalidSplit, shadow.name))
	}
	return newMirror(app.mirroring, shadow), nil
}

// copy queues a copy of r for the shadow, if r is one of the share
// copied and can be copied; r's body, if copied, is read first and r gets
// a replay of it. It never blocks on the shadow.
func (m *mirror) copy(r *http.Request) {
	// Every request adds ppm; a request is copied when that crosses a
	// million, so that the copies are spread evenly.
	if n := m.seen.Add(m.ppm); n/1_000_000 == (n-m.ppm)/1_000_000 {
		return
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength < 0 || r.ContentLength > m.maxBody || r.Header.Get("Upgrade") != "" {
			m.skipped.Add(1)
			return
		}
		buf := make([]byte, r.ContentLength)
		n, err := io.ReadFull(r.Body, buf)
		if err != nil {
			// The client's body ended early: its request goes on with what
			// was read and the same error; no copy.
			r.Body = replayBody{io.MultiReader(bytes.NewReader(buf[:n]), r.Body), r.Body}
			m.skipped.Add(1)
			return
		}
		body = buf
		r.Body = replayBody{bytes.NewReader(body), r.Body}
	}
	c := r.Clone(r.Context())
	c.Header.Set(MirrorHeader, "1")
	c.Body, c.ContentLength = http.NoBody, 0
	if body != nil {
		c.Body, c.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	m.start.Do(m.startWorkers)
	select {
	case m.queue <- c:
	default:
		m.droppedFull.Add(1)
	}
}

// startWorkers starts the workers that send the copies.
func (m *mirror) startWorkers() {
	for range m.concurrency {
		m.wg.Go(func() {
			for {
				select {
				case <-m.ctx.Done():
					return
				case c := <-m.queue:
					m.send(c)
				}
			}
		})
	}
}

// send sends one copy to the shadow and reads its answer to the end.
func (m *mirror) send(c *http.Request) {
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	c = c.WithContext(mirrorContext{Context: ctx, values: c.Context()})
	w := &discardWriter{header: make(http.Header)}
	m.mirrored.Add(1)
	if err := m.shadow.serve(w, c); err != nil || w.status >= 500 {
		m.failures.Add(1)
	}
}

// close stops the workers; copies in flight are cancelled, those queued
// are dropped.
func (m *mirror) close() {
	m.stop()
	m.wg.Wait()
}

// dropped is the copies not sent: not queued (full), or not made (a body
// too large or of unknown length).
func (m *mirror) dropped() uint64 { return m.droppedFull.Load() + m.skipped.Load() }

// mirrorContext is a copy's context: its lifetime is the mirror's (with
// the timeout), its values the client request's but those the client's
// request goes on changing (Caddy's replacer and extra log fields), so
// that the copy neither races with it nor logs into its access log line.
type mirrorContext struct {
	context.Context
	values context.Context
}

// Value returns the client request's value of key, but its replacer's and
// log fields'.
func (c mirrorContext) Value(key any) any {
	switch key {
	case caddy.ReplacerCtxKey, caddyhttp.ExtraLogFieldsCtxKey:
		return nil
	}
	return c.values.Value(key)
}

// replayBody is a request body read ahead: Read reads the replay, Close
// closes the original.
type replayBody struct {
	io.Reader
	orig io.Closer
}

func (b replayBody) Close() error { return b.orig.Close() }

// discardWriter is the ResponseWriter of a copy: it keeps the status and
// throws the rest away.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 || w.status < 200 {
		w.status = status
	}
}

// Flush does nothing: there is no client to flush to.
func (w *discardWriter) Flush() {}

func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
