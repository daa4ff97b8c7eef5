package caddylb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	caddylb "github.com/golb/caddy-lb"
	"github.com/golb/caddy-lb/report"
)

// runAsCaddyEnv makes the test binary behave as the caddy command, so CLI
// tests can run `caddy validate`, `caddy run` and friends with this module
// built in and no separate build step.
const runAsCaddyEnv = "CADDYLB_TEST_RUN_AS_CADDY"

// adminAddr is the admin endpoint of the Caddy that tests run in this
// process. One address for the whole binary: Caddy keeps one admin server.
var adminAddr string

func TestMain(m *testing.M) {
	if os.Getenv(runAsCaddyEnv) == "1" {
		caddycmd.Main()
		return
	}
	adminAddr = fmt.Sprintf("localhost:%d", freePort())
	code := m.Run()
	_ = caddy.Stop()
	os.Exit(code)
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// site is a Caddy config under test: the HTTP port its sites listen on and
// the log file Caddy writes to.
type site struct {
	t       testing.TB
	port    int
	logFile string

	backendURL string // for tests that look one instance up in the report
	global     string // extra global options
}

// newSite returns a site on a fresh port whose config is loaded with load.
func newSite(t testing.TB) *site {
	t.Helper()
	s := &site{t: t, port: freePort(), logFile: filepath.Join(t.TempDir(), "caddy.log")}
	t.Cleanup(func() { _ = caddy.Stop() })
	return s
}

// caddyfile wraps site blocks in the global options every test needs:
// the test admin endpoint, loopback only, no HTTPS, logs to a file. In body,
// {port} stands for the site's port.
func (s *site) caddyfile(body string) string {
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	skip_install_trust
	default_bind 127.0.0.1
	grace_period 10s
	log {
		output file %s
		format json
		level DEBUG
	}
%s
}
%s`, adminAddr, s.logFile, s.global, strings.ReplaceAll(body, "{port}", strconv.Itoa(s.port)))
}

// adapt turns a Caddyfile into Caddy JSON.
func adapt(t testing.TB, caddyfile string) []byte {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, caddyfile)
	}
	return cfg
}

// load loads body (site blocks, see caddyfile) into the Caddy of this
// process, replacing the running config, and fails the test on error.
func (s *site) load(body string) {
	s.t.Helper()
	if err := s.tryLoad(body); err != nil {
		s.t.Fatalf("load: %v", err)
	}
}

// tryLoad is load that returns the error.
func (s *site) tryLoad(body string) error {
	return caddy.Load(adapt(s.t, s.caddyfile(body)), true)
}

// tryLoadErr is tryLoad for configs that may not adapt: the adapter's
// error is returned too.
func (s *site) tryLoadErr(body string) error {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s.caddyfile(body)), nil)
	if err != nil {
		return err
	}
	return caddy.Load(cfg, true)
}

// url returns the URL of path on the site.
func (s *site) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.port, path)
}

// get sends a GET for path with the given Host and returns status and body.
// Like adminDo, it sends the request again if the connection was reset
// before any answer, as happens to connections queued on a listener that a
// reload of the same port closes: those never reached the load balancer.
func (s *site) get(host, path string) (int, string) {
	s.t.Helper()
	status, body, err := s.tryGet(host, path)
	if err != nil {
		s.t.Fatal(err)
	}
	return status, body
}

// status sends a GET for path with the given Host and returns the status.
func (s *site) status(host, path string) int {
	s.t.Helper()
	status, _ := s.get(host, path)
	return status
}

// client is the HTTP client of the tests: keep-alive, loopback only.
var client = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	Timeout:   30 * time.Second,
}

// adminClient talks to Caddy's admin endpoint, on a new connection each
// time: Caddy replaces its admin server with every config it loads.
var adminClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true},
	Timeout:   30 * time.Second,
}

// adminDo sends req to the admin endpoint. When Caddy replaces its admin
// server it closes the old listener, which on Linux resets connections
// still queued on it: such a request never reached Caddy, and is sent again
// (for a few seconds at most).
func adminDo(req *http.Request) (*http.Response, error) {
	return retryReset(adminClient, req)
}

// retryReset sends req with c, and again (for a few seconds at most) while
// the connection is reset or closed before any answer.
func retryReset(c *http.Client, req *http.Request) (*http.Response, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Do(req)
		if err == nil || !isConnReset(err) || time.Now().After(deadline) {
			return resp, err
		}
		if req.GetBody != nil {
			if req.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		time.Sleep(10 * time.Millisecond) // pacing the retries, not waiting for an event
	}
}

// adminGet sends a GET for path to the admin endpoint (see adminDo).
func adminGet(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+adminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	return adminDo(req)
}

// fetchReport reads the load balancer report from the admin endpoint.
func fetchReport(t testing.TB) report.Report {
	t.Helper()
	resp, err := adminGet(report.Path)
	if err != nil {
		t.Fatalf("GET report: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET report: status %d: %s", resp.StatusCode, b)
	}
	var rep report.Report
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatalf("decoding report: %v", err)
	}
	return rep
}

// instanceOf returns the report entry of the instance with the given URL.
func instanceOf(t testing.TB, rep report.Report, host, url string) report.Instance {
	t.Helper()
	for _, app := range rep.Apps {
		if app.Host != host {
			continue
		}
		for _, in := range app.Instances {
			if in.URL == url {
				return in
			}
		}
	}
	t.Fatalf("report has no instance %s in app %q: %+v", url, host, rep)
	return report.Instance{}
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline. It waits for events that have no hook to await directly, such
// as a health check's outcome reaching the report.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backend is a test backend on 127.0.0.1 that answers with its name and
// counts the requests it served (health checks apart).
type backend struct {
	*httptest.Server
	name     string
	requests atomic.Int64
	health   atomic.Int32 // status of GET /health; 0 means 200
	probes   atomic.Int64
	handler  atomic.Pointer[http.HandlerFunc]
}

// newBackend starts a backend. By default it answers "name" to everything
// and 200 to /health; set handler to change that.
func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			b.probes.Add(1)
			if code := b.health.Load(); code != 0 {
				w.WriteHeader(int(code))
				return
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		b.requests.Add(1)
		if h := b.handler.Load(); h != nil {
			(*h)(w, r)
			return
		}
		w.Header().Set("X-Backend", b.name)
		_, _ = io.WriteString(w, b.name)
	}))
	t.Cleanup(b.Close)
	return b
}

// handle sets the backend's handler for non-health requests.
func (b *backend) handle(h http.HandlerFunc) { b.handler.Store(&h) }

// closedURL returns the URL of a port on 127.0.0.1 nothing listens on.
func closedURL() string { return fmt.Sprintf("http://127.0.0.1:%d", freePort()) }

// gate is a barrier a backend handler waits on until the test opens it.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }
func (g *gate) wait(ctx context.Context) error {
	select {
	case <-g.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logLines returns the JSON lines of the site's Caddy log that match.
func logLines(t testing.TB, s *site, match func(map[string]any) bool) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(s.logFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var lines []map[string]any
	for _, raw := range strings.Split(string(data), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(raw), &l) == nil && match(l) {
			lines = append(lines, l)
		}
	}
	return lines
}

// caddyLoad loads raw Caddy JSON.
func caddyLoad(cfg []byte) error { return caddy.Load(cfg, true) }

// jsonDecode decodes a response body.
func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// tryGet is get for goroutines other than the test's, which may not fail
// the test: it returns the error instead.
func (s *site) tryGet(host, path string) (int, string, error) {
	return s.getWith(host, path, func(req *http.Request) (*http.Response, error) { return retryReset(client, req) })
}

// getOnce is tryGet without sending the request again after a reset.
func (s *site) getOnce(host, path string) (int, string, error) {
	return s.getWith(host, path, client.Do)
}

func (s *site) getWith(host, path string, do func(*http.Request) (*http.Response, error)) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, s.url(path), nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s (Host %s): %w", path, host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, string(body), fmt.Errorf("GET %s (Host %s): reading body: %w", path, host, err)
	}
	return resp.StatusCode, string(body), nil
}

// answer is what tryGet returned, sent back from a goroutine.
type answer struct {
	status int
	body   string
	err    error
}

// getAsync sends the GET of tryGet from a goroutine of its own and
// returns the channel its answer comes on.
func (s *site) getAsync(host, path string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		status, body, err := s.tryGet(host, path)
		ch <- answer{status, body, err}
	}()
	return ch
}

// recvTimeout bounds every wait of a test on a channel: a hang fails the
// test with what it waited for, rather than running into go test's
// timeout.
const recvTimeout = 30 * time.Second

// recv returns the next value of ch, failing the test if none comes in
// time.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(recvTimeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// loadResult counts the outcomes of a bounded load.
type loadResult struct {
	mu     sync.Mutex
	ok     int
	resets int // connections reset or closed before any answer
	failed []string
	by     map[string]int // successful answers by body
}

func (lr *loadResult) add(status int, body string, err error) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	switch {
	case err != nil && status == 0 && isConnReset(err):
		lr.resets++
	case err != nil || status != http.StatusOK:
		lr.failed = append(lr.failed, fmt.Sprintf("%d %q %v", status, body, err))
	default:
		lr.ok++
		if lr.by == nil {
			lr.by = map[string]int{}
		}
		lr.by[body]++
	}
}

// load is a bounded load of GETs for / on one host.
type load struct {
	host      string
	workers   int                  // goroutines sending requests, one after the other
	perWorker int                  // requests each sends at most
	progress  func(answered int64) // if set, called after each answer with the count so far
	stop      *atomic.Bool         // if set, ends each worker after its request under way
}

// runLoad runs l against s. Each request is bounded by the client's
// timeout, so the load ends within perWorker of them. A connection reset
// or closed before any answer is counted, not sent again: callers bound
// those they can explain.
func runLoad(s *site, l load) *loadResult {
	lr := &loadResult{}
	var answered atomic.Int64
	var wg sync.WaitGroup
	for range l.workers {
		wg.Go(func() {
			for range l.perWorker {
				if l.stop != nil && l.stop.Load() {
					return
				}
				status, body, err := s.getOnce(l.host, "/")
				lr.add(status, body, err)
				if l.progress != nil {
					l.progress(answered.Add(1))
				}
			}
		})
	}
	wg.Wait()
	return lr
}

// isConnReset reports whether err is a connection closed or reset by the
// server before it sent any response.
func isConnReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// provision provisions a load_balancer handler from its JSON outside
// Caddy's running config, as Caddy would: cleaned up at once if it fails,
// with the test otherwise.
func provision(t testing.TB, handlerJSON string) (*caddylb.Handler, error) {
	t.Helper()
	var h caddylb.Handler
	if err := json.Unmarshal([]byte(handlerJSON), &h); err != nil {
		return nil, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	err := h.Provision(ctx)
	if err == nil {
		err = h.Validate()
	}
	if err != nil {
		cancel()
		if cerr := h.Cleanup(); cerr != nil {
			t.Errorf("cleanup after a failed provisioning: %v", cerr)
		}
		return nil, err
	}
	t.Cleanup(func() {
		cancel()
		_ = h.Cleanup()
	})
	return &h, nil
}

// provisioned is provision that fails the test on error.
func provisioned(t testing.TB, handlerJSON string) *caddylb.Handler {
	t.Helper()
	h, err := provision(t, handlerJSON)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// checkers counts the instance states kept for the given instance URLs
// (those of a test's own backends) and the health monitors among them that
// are probing.
func checkers(urls ...string) string {
	states, monitors := caddylb.InstanceStatesOf(urls...)
	return fmt.Sprintf("%d monitors, %d instance states", monitors, states)
}

// eventLog records the load balancer events of one test, sent to it by
// the events.handlers.lbtest module: `on <event> lbtest <name>` in the
// events global option, where name is the log's.
type eventLog struct {
	name   string
	mu     sync.Mutex
	events []recordedEvent
	notify chan struct{} // a value after each event
	next   int           // of events, for the next call of the method next
}

// recordedEvent is an event and whether it was emitted with a context
// already ended: by a config on its way out.
type recordedEvent struct {
	caddy.Event
	late bool
}

var (
	eventLogsMu sync.Mutex
	eventLogs   = map[string]*eventLog{}
	eventLogSeq int
)

// newEventLog returns a log of the test's events, for the events global
// option it returns.
func newEventLog(t testing.TB, events ...string) (*eventLog, string) {
	eventLogsMu.Lock()
	defer eventLogsMu.Unlock()
	eventLogSeq++
	l := &eventLog{name: fmt.Sprintf("log%d", eventLogSeq), notify: make(chan struct{}, 1)}
	eventLogs[l.name] = l
	t.Cleanup(func() {
		eventLogsMu.Lock()
		defer eventLogsMu.Unlock()
		delete(eventLogs, l.name)
	})
	var b strings.Builder
	b.WriteString("\n\tevents {\n")
	for _, e := range events {
		fmt.Fprintf(&b, "\t\ton %s lbtest %s\n", e, l.name)
	}
	b.WriteString("\t}")
	return l, b.String()
}

func (l *eventLog) add(e recordedEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// nextEvent returns the log's next event, failing the test if none comes
// in time.
func (l *eventLog) nextEvent(t testing.TB) recordedEvent {
	t.Helper()
	deadline := time.Now().Add(recvTimeout)
	for {
		l.mu.Lock()
		if l.next < len(l.events) {
			e := l.events[l.next]
			l.next++
			l.mu.Unlock()
			return e
		}
		l.mu.Unlock()
		select {
		case <-l.notify:
		case <-time.After(time.Until(deadline)):
			t.Fatal("timed out waiting for an event")
		}
	}
}

// all returns every event the log has recorded.
func (l *eventLog) all() []recordedEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func init() { caddy.RegisterModule(eventRecorder{}) }

// eventRecorder is an event handler module for tests: it adds each event
// it gets to the eventLog it names.
type eventRecorder struct {
	Log string `json:"log"`
}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.lbtest", New: func() caddy.Module { return new(eventRecorder) }}
}

func (r *eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.Args(&r.Log) {
		return d.ArgErr()
	}
	return nil
}

func (r *eventRecorder) Handle(ctx context.Context, e caddy.Event) error {
	eventLogsMu.Lock()
	l := eventLogs[r.Log]
	eventLogsMu.Unlock()
	if l != nil {
		l.add(recordedEvent{Event: e, late: ctx.Err() != nil})
	}
	return nil
}

var _ caddyevents.Handler = (*eventRecorder)(nil)
