// Package report serves the health report of every load balancer in the
// running Caddy config at GET /api/v1/loadBalancers/report on Caddy's admin
// endpoint.
//
// Caddy creates admin modules anew on every config load and never cleans
// them up, so the admin module holds nothing: load balancers add themselves
// to a process-wide registry when they are provisioned and remove themselves
// when they are cleaned up, and the module reads that registry per request.
package report

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/golb/caddy-lb/internal/running"
)

// Path is where the report is served on Caddy's admin endpoint.
const Path = "/api/v1/loadBalancers/report"

// Report is the document served at Path.
type Report struct {
	Apps []App `json:"apps"`

	// Fleet is the fleet this process shares health checks with; absent
	// without one.
	Fleet *Fleet `json:"fleet,omitempty"`

	// DrainAvailable says that whoever serves this document also takes
	// drain and undrain requests for the instances it lists. Current
	// leaves it false; the dashboard's report.json sets it when its
	// allow_drain option is on, and shows its drain buttons only then.
	DrainAvailable bool `json:"drain_available,omitempty"`
}

// App is one app of a load balancer.
type App struct {
	Host string `json:"host"`
	// Pool is the name of a pool (an app with no host, which serves what
	// other apps split or mirror to it); absent for other apps.
	Pool     string `json:"pool,omitempty"`
	Strategy string `json:"strategy"`
	// Split lists the pools an app that splits sends its requests to;
	// absent for other apps.
	Split []SplitPool `json:"split,omitempty"`
	// Mirror describes the copies of the app's requests sent to its
	// mirror pool; absent without one.
	Mirror *Mirror `json:"mirror,omitempty"`
	// Panic says too few of the app's instances are available, so that
	// it balances over all of them (see the app's panic_threshold).
	Panic bool `json:"panic,omitempty"`
	// ActiveTier is the priority of the failover tier the app serves
	// from now (0, the first tier, unless it failed over to a backup
	// tier; see the instances' priority).
	ActiveTier int `json:"active_tier"`
	// Dynamic describes the app's source of dynamic instances; absent
	// without one.
	Dynamic *Dynamic `json:"dynamic,omitempty"`
	// Queued is the number of requests waiting now for an instance under
	// its max_requests; Rejected the number turned away with 503 because
	// every instance was at its max_requests (the queue full, or the wait
	// over), in all. Both absent without max_requests.
	Queued   *int    `json:"queued,omitempty"`
	Rejected *uint64 `json:"rejected,omitempty"`
	// OutlierSweeps is the number of times the app's instances were
	// judged for outlier ejection; absent without it.
	OutlierSweeps *uint64 `json:"outlier_sweeps,omitempty"`
	// HedgeDelayMs is the delay after which a request is hedged now, in
	// milliseconds (0 while a quantile has too few latencies to go by);
	// absent without hedge_after.
	HedgeDelayMs *float64   `json:"hedge_delay_ms,omitempty"`
	Instances    []Instance `json:"instances"`
}

// SplitPool is one pool of a split.
type SplitPool struct {
	Pool string `json:"pool"`
	// Weight is its weight in the split, and Percent its share of the
	// requests that are not pinned.
	Weight  int     `json:"weight"`
	Percent float64 `json:"percent"`
	// Requests is the number of requests the split sent it, pinned ones
	// included, since the config loaded.
	Requests uint64 `json:"requests"`
}

// Mirror is an app's mirroring.
type Mirror struct {
	Pool    string  `json:"pool"`
	Percent float64 `json:"percent"`
	// Mirrored: copies sent; Dropped: copies not sent (the queue full, or
	// a body too large or of unknown length); Failures: copies sent whose
	// answer was an error or a 5xx; Queued: copies waiting now. Since the
	// config loaded.
	Mirrored uint64 `json:"mirrored"`
	Dropped  uint64 `json:"dropped"`
	Failures uint64 `json:"failures"`
	Queued   int    `json:"queued"`
}

// Dynamic is an app's source of dynamic instances.
type Dynamic struct {
	// Source is the source module's name: a, srv, multi, etcd...
	Source string `json:"source"`
	// Instances is the number of valid instances the source gives now
	// (entries skipped as malformed not counted).
	Instances int `json:"instances"`
	// Updated is when the source last answered with a set; absent before
	// its first answer.
	Updated *time.Time `json:"updated,omitempty"`
	// LastError is why the source's last answer failed ("" if it did
	// not); the last good set then stays in service.
	LastError string `json:"last_error"`
}

// Instance is one backend instance of an app.
type Instance struct {
	URL string `json:"url"`
	// Source says where the instance comes from: "config", or "dynamic"
	// (the app's source of dynamic instances).
	Source string `json:"source,omitempty"`
	// State is one of healthy, starting (healthy, ramping up in slow
	// start), unhealthy (failing active health checks), ejected (by
	// passive health checks) and draining (no new requests, by the
	// operator).
	State string `json:"state,omitempty"`
	// Reason says why the instance entered its state, and Since when.
	Reason string     `json:"reason,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	// Healthy: it passes its active health checks and is not ejected.
	Healthy bool `json:"healthy"`
	// ActiveConnections is the number of requests in flight to it.
	ActiveConnections int64 `json:"active_connections"`
	// MaxRequests is the most requests it may serve at once now: the
	// app's max_requests, lower while it ramps up in slow start. Absent
	// without max_requests.
	MaxRequests   int64      `json:"max_requests,omitempty"`
	TotalRequests uint64     `json:"total_requests"`
	Failures      uint64     `json:"failures"`
	LastChecked   *time.Time `json:"last_checked"`
	LastError     string     `json:"last_error"`

	// ConsecutivePasses and ConsecutiveFails are the current streak of
	// passing or failing health checks; ConsecutiveFailures that of real
	// requests that failed (passive checks).
	ConsecutivePasses   int `json:"consecutive_passes"`
	ConsecutiveFails    int `json:"consecutive_fails"`
	ConsecutiveFailures int `json:"consecutive_failures"`
	// EjectedUntil is when the current ejection ends; absent if none.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// Weight is the configured weight; EffectiveWeight the one traffic
	// is balanced by now (lower while the instance ramps up).
	Weight          int     `json:"weight"`
	EffectiveWeight float64 `json:"effective_weight"`
	// Priority is the instance's failover tier: absent for 0, the first
	// tier; higher numbers are backup tiers.
	Priority int `json:"priority,omitempty"`

	// RequestRate is the number of requests per second sent to the
	// instance over the last minute. It and the three fields below are
	// absent (nil) while the load balancer does not measure them; a
	// measured 0 is present.
	RequestRate *float64 `json:"request_rate,omitempty"`
	// ErrorRate is the share of the last minute's requests that failed,
	// from 0 to 1.
	ErrorRate *float64 `json:"error_rate,omitempty"`
	// LatencyP50Ms is the median time to the response headers over the
	// last minute, in milliseconds.
	LatencyP50Ms *float64 `json:"latency_p50_ms,omitempty"`
	// LatencyP99Ms is the 99th percentile of the time to the response
	// headers over the last minute, in milliseconds.
	LatencyP99Ms *float64 `json:"latency_p99_ms,omitempty"`

	// Fleet says who checks the instance, in a fleet that shares health
	// checks; absent without one.
	Fleet *InstanceFleet `json:"fleet,omitempty"`
}

// InstanceFleet is an instance's checks in a fleet.
type InstanceFleet struct {
	// Probers are the members that probe the instance, best first;
	// Prober says this node is one of them.
	Probers []string `json:"probers"`
	Prober  bool     `json:"prober"`
	// ProbedHere: this node probes the instance now, as one of its
	// probers, or because no verdict of theirs is fresh (or etcd cannot
	// be reached). Otherwise it follows the verdict of VerdictBy,
	// written at VerdictAt (by the prober's clock), whom it last heard
	// from at Confirmed.
	ProbedHere bool       `json:"probed_here"`
	VerdictBy  string     `json:"verdict_by,omitempty"`
	VerdictAt  *time.Time `json:"verdict_at,omitempty"`
	Confirmed  *time.Time `json:"confirmed,omitempty"`
}

// Source is a live load balancer: it describes its apps, and drains their
// instances at runtime.
type Source interface {
	ReportApps() []App

	// Drain drains (drain true) or undrains the instance url of the
	// source's apps that serve host, as Drain (the function) names them,
	// and returns how many of its apps serve host and how many instances
	// it drained or undrained.
	Drain(host, url string, drain bool) (apps, instances int)
}

type entry struct {
	seq    uint64
	server string          // name of the Caddy HTTP server the source is in
	config <-chan struct{} // Done channel of the config the source belongs to
	src    Source
}

var (
	mu      sync.Mutex
	nextSeq uint64
	entries []*entry
)

// Register adds src, a load balancer of the config whose context is ctx, to
// the report, and returns the function that removes it.
//
// The report lists sources by server, then in the order they were
// registered, which is config order within a server. Caddy provisions its
// servers in no fixed order (they are a map), but the Caddyfile adapter
// names them srv0, srv1, ... in the order of the sites, so ordering servers
// by name, numbers compared as numbers, gives Caddyfile order.
func Register(ctx context.Context, src Source) (unregister func()) {
	var server string
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		server = srv.Name()
	}
	mu.Lock()
	defer mu.Unlock()
	nextSeq++
	e := &entry{seq: nextSeq, server: server, config: ctx.Done(), src: src}
	entries = append(entries, e)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		entries = slices.DeleteFunc(entries, func(x *entry) bool { return x == e })
	}
}

// Current returns the report of the running config.
func Current() Report {
	rep := Report{Apps: []App{}}
	for _, src := range Running() {
		rep.Apps = append(rep.Apps, src.ReportApps()...)
	}
	rep.Fleet = currentFleet()
	return rep
}

// Running returns the load balancers of the running config, in report
// order. While a reload is under way, the registry also holds those of the
// config being loaded or unloaded; only those of the config Caddy is
// running are returned.
func Running() []Source {
	running := running.Config()
	mu.Lock()
	live := make([]*entry, 0, len(entries))
	for _, e := range entries {
		if e.config == running {
			live = append(live, e)
		}
	}
	mu.Unlock()
	slices.SortFunc(live, func(a, b *entry) int {
		if c := compareNatural(a.server, b.server); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	srcs := make([]Source, len(live))
	for i, e := range live {
		srcs[i] = e.src
	}
	return srcs
}

// compareNatural compares strings with runs of digits compared as numbers,
// so that "srv2" sorts before "srv10".
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// digitsPrefix returns the length of the run of ASCII digits s starts with.
func digitsPrefix(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin is the admin API module that serves the report. It has no
// configuration; Caddy loads it whenever the admin endpoint is on.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.load_balancer",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the admin routes of the module.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: Path, Handler: caddy.AdminHandlerFunc(serveReport)},
		{Pattern: DrainPath, Handler: serveDrain(true)},
		{Pattern: UndrainPath, Handler: serveDrain(false)},
	}
}

func serveReport(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddy.APIError{
			HTTPStatus: http.StatusMethodNotAllowed,
			Err:        fmt.Errorf("method %s not allowed: the report is read with GET", r.Method),
		}
	}
	body, err := json.Marshal(Current())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(body, '\n'))
	return err
}

// Interface guards
var (
	_ caddy.AdminRouter = (*Admin)(nil)
)

// Fleet is the fleet that shares health checks with this process, as this
// process sees it (see package fleet).
type Fleet struct {
	// Node is this process's name in the fleet; Prefix the fleet's key
	// prefix in etcd.
	Node   string `json:"node"`
	Prefix string `json:"prefix"`
	// State is "joined", or why this node is not a member now (etcd
	// unreachable, its name held by another process...): it then probes
	// every instance itself.
	State string `json:"state"`
	// Members are the live members, sorted; Probers how many of them
	// probe each instance.
	Members []string `json:"members"`
	Probers int      `json:"probers"`
	// Instances is the number of instances this node checks with the
	// fleet, ProbedHere how many of them it probes now, and Share their
	// ratio.
	Instances  int     `json:"instances"`
	ProbedHere int     `json:"probed_here"`
	Share      float64 `json:"share"`
}

type fleetEntry struct {
	config <-chan struct{}
	report func() Fleet
}

var fleets []*fleetEntry // under mu

// RegisterFleet adds the fleet of the config whose context is ctx to the
// report, described by f, and returns the function that removes it.
func RegisterFleet(ctx context.Context, f func() Fleet) (unregister func()) {
	e := &fleetEntry{config: ctx.Done(), report: f}
	mu.Lock()
	fleets = append(fleets, e)
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		fleets = slices.DeleteFunc(fleets, func(x *fleetEntry) bool { return x == e })
	}
}

// currentFleet returns the fleet of the running config, if it has one.
func currentFleet() *Fleet {
	running := running.Config()
	mu.Lock()
	var f func() Fleet
	for _, e := range fleets {
		if e.config == running {
			f = e.report
		}
	}
	mu.Unlock()
	if f == nil {
		return nil
	}
	rep := f()
	return &rep
}
