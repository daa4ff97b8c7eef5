package caddylb

import (
	"errors"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/golb/caddy-lb/backend"
)

// Prometheus metrics, served with Caddy's on the admin endpoint's /metrics
// (and by the metrics handler).
//
// Caddy gives each config load a registry of its own. Each registry gets one
// collector, which every load_balancer handler of that config joins in
// Provision and leaves in Cleanup; the collector reads the live instances
// at scrape time. So gauges are current when scraped, the series of an
// instance go away with the config that had it, and the counts live in the
// instances themselves (backend.Instance), as long as they do.

const metricsPrefix = "caddy_load_balancer_"

var (
	labelsInstance = []string{"app", "instance"}

	descHealthy = prometheus.NewDesc(metricsPrefix+"instance_healthy",
		"Whether the instance passes its health checks (1) or not (0); instances of apps without health checks are healthy.",
		labelsInstance, nil)
	descState = prometheus.NewDesc(metricsPrefix+"instance_state",
		"The instance's state: 1 for the state it is in (healthy, starting, unhealthy, ejected or draining), 0 for the others.",
		append(slices.Clone(labelsInstance), "state"), nil)
	descInFlight = prometheus.NewDesc(metricsPrefix+"instance_in_flight",
		"Requests the instance is serving now.",
		labelsInstance, nil)
	descWeight = prometheus.NewDesc(metricsPrefix+"instance_weight",
		"The instance's weight; 0 means it takes no new requests.",
		labelsInstance, nil)
	descMaxRequests = prometheus.NewDesc(metricsPrefix+"instance_max_requests",
		"The most requests the instance may serve at once now: max_requests (learnt, with max_requests auto), lower in slow start.",
		labelsInstance, nil)
	descRequests = prometheus.NewDesc(metricsPrefix+"requests_total",
		"Requests sent to the instance, by the class of the status the client got (502, 504 and 499 when the instance failed them).",
		append(slices.Clone(labelsInstance), "code_class"), nil)
	descResponseHeader = prometheus.NewDesc(metricsPrefix+"response_header_seconds",
		"Time from sending a request to the instance (dialing included) to its response headers.",
		labelsInstance, nil)
	descChecks = prometheus.NewDesc(metricsPrefix+"health_checks_total",
		"Active health checks of the instance, by result (passed or failed).",
		append(slices.Clone(labelsInstance), "result"), nil)
	descCheckSeconds = prometheus.NewDesc(metricsPrefix+"health_check_seconds",
		"Duration of the active health checks of the instance.",
		labelsInstance, nil)
	descRetries = prometheus.NewDesc(metricsPrefix+"retries_total",
		"Requests retried on another instance after this one failed them.",
		labelsInstance, nil)
	descEjections = prometheus.NewDesc(metricsPrefix+"ejections_total",
		"Times the instance was ejected by passive health checking.",
		labelsInstance, nil)

	labelsSource       = []string{"app", "source"}
	descDynamicUpdates = prometheus.NewDesc(metricsPrefix+"dynamic_updates_total",
		"Sets of instances the app's dynamic source answered with.", labelsSource, nil)
	descDynamicErrors = prometheus.NewDesc(metricsPrefix+"dynamic_errors_total",
		"Failed attempts to learn the app's set from its dynamic source (the last good set stays).", labelsSource, nil)
	descDynamicInstances = prometheus.NewDesc(metricsPrefix+"dynamic_instances",
		"Instances the app's dynamic source gives now.", labelsSource, nil)

	labelsApp       = []string{"app"}
	descQueueLength = prometheus.NewDesc(metricsPrefix+"queue_length",
		"Requests waiting now for an instance under max_requests.", labelsApp, nil)
	descQueueWait = prometheus.NewDesc(metricsPrefix+"queue_wait_seconds",
		"Time requests waited for an instance under max_requests, whether they got one or not.", labelsApp, nil)
	descRejected = prometheus.NewDesc(metricsPrefix+"rejected_total",
		"Requests turned away with 503 because every instance was at max_requests (and the queue full, or the wait over).", labelsApp, nil)

	descActiveTier = prometheus.NewDesc(metricsPrefix+"active_tier",
		"The priority of the failover tier the app serves from now: 0 for the first tier, higher for a backup tier.", labelsApp, nil)

	descHedges = prometheus.NewDesc(metricsPrefix+"hedges_total",
		"Second attempts sent to another instance because the first had not answered within hedge_after.", labelsApp, nil)
	descHedgesWon = prometheus.NewDesc(metricsPrefix+"hedges_won_total",
		"Hedges that answered first (the first attempt was then given up).", labelsApp, nil)

	descSplitRequests = prometheus.NewDesc(metricsPrefix+"split_requests_total",
		"Requests an app that splits sent to each of its pools.", []string{"app", "pool"}, nil)
	descMirrored = prometheus.NewDesc(metricsPrefix+"mirrored_total",
		"Copies of the app's requests sent to its mirror pool.", labelsApp, nil)
	descMirrorDropped = prometheus.NewDesc(metricsPrefix+"mirror_dropped_total",
		"Copies not sent: the mirror's queue was full, or the body too large or of unknown length.", labelsApp, nil)
	descMirrorFailures = prometheus.NewDesc(metricsPrefix+"mirror_failures_total",
		"Copies sent whose answer was an error or a 5xx (the client's answer is never affected).", labelsApp, nil)

	allDescs = []*prometheus.Desc{descHealthy, descState, descInFlight, descWeight, descMaxRequests, descRequests,
		descResponseHeader, descChecks, descCheckSeconds, descRetries, descEjections,
		descDynamicUpdates, descDynamicErrors, descDynamicInstances,
		descQueueLength, descQueueWait, descRejected, descHedges, descHedgesWon, descActiveTier,
		descSplitRequests, descMirrored, descMirrorDropped, descMirrorFailures}
)

// stateLabels are the values of the state label.
var stateLabels = [...]backend.State{backend.StateHealthy, backend.StateStarting, backend.StateUnhealthy,
	backend.StateEjected, backend.StateDraining}

// collector reports the instances of the load balancers of one config.
type collector struct {
	mu       sync.Mutex
	handlers []*Handler
}

var (
	collectorsMu sync.Mutex
	collectors   = map[*prometheus.Registry]*collector{}
)

// registerMetrics adds h to the metrics of registry reg and returns the
// function that removes it. A nil registry (a bare caddy.Context) has no
// metrics.
func registerMetrics(reg *prometheus.Registry, h *Handler) (unregister func(), err error) {
	if reg == nil {
		return func() {}, nil
	}
	collectorsMu.Lock()
	defer collectorsMu.Unlock()
	c := collectors[reg]
	if c == nil {
		c = new(collector)
		if err := reg.Register(c); err != nil {
			are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
			if !ok {
				return nil, err
			}
			if c, ok = are.ExistingCollector.(*collector); !ok {
				return nil, err
			}
		}
		collectors[reg] = c
	}
	c.mu.Lock()
	c.handlers = append(c.handlers, h)
	c.mu.Unlock()
	return func() {
		collectorsMu.Lock()
		defer collectorsMu.Unlock()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.handlers = slices.DeleteFunc(c.handlers, func(x *Handler) bool { return x == h })
		if len(c.handlers) == 0 && collectors[reg] == c {
			// The config is going away; should the registry get another
			// handler, Register finds c again.
			delete(collectors, reg)
		}
	}, nil
}

// Describe implements prometheus.Collector.
func (*collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// instanceMetrics is what is reported of one series of instances: one
// instance, or several handlers' instances of the same app and URL merged.
type instanceMetrics struct {
	app, instance string
	healthy       bool
	state         backend.State
	checked       bool // its app has active health checks
	inFlight      int64
	weight        int
	maxRequests   int64 // -1: no limit
	m             backend.Metrics
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	handlers := slices.Clone(c.handlers)
	c.mu.Unlock()

	// Two handlers may have an app of the same host with the same
	// instance URL; a registry refuses two series with the same labels, so
	// theirs are merged: counts added up, healthy only if both are.
	type key struct{ app, instance string }
	index := map[key]int{}
	seen := map[*backend.Instance]bool{} // handlers share the states of instances they share
	var series []instanceMetrics
	for _, h := range handlers {
		for _, app := range h.Apps {
			for _, in := range app.pool.All() {
				if seen[in] {
					continue
				}
				seen[in] = true
				k := key{app.name, in.String()}
				im := instanceMetrics{
					app: k.app, instance: k.instance,
					healthy: in.Healthy(), state: in.Status().State, checked: app.health != nil,
					inFlight: in.InFlight(), weight: in.Weight(), maxRequests: -1, m: in.Metrics(),
				}
				if app.limits.on() {
					im.maxRequests = in.Limit(app.limits.of(in))
				}
				if i, ok := index[k]; ok {
					series[i].merge(&im)
					continue
				}
				index[k] = len(series)
				series = append(series, im)
			}
		}
	}
	for i := range series {
		series[i].collect(ch)
	}
	collectSources(ch, handlers)
	collectOverload(ch, handlers)
	collectHedges(ch, handlers)
	collectTiers(ch, handlers)
	collectTraffic(ch, handlers)
}

// collectTiers reports the active tier of each of the handlers' apps; of
// apps of the same name, the best (lowest) one.
func collectTiers(ch chan<- prometheus.Metric, handlers []*Handler) {
	tiers := map[string]int{}
	var names []string
	for _, h := range handlers {
		for _, app := range h.Apps {
			tier := app.pool.ActiveTier()
			if prev, ok := tiers[app.name]; ok {
				tiers[app.name] = min(prev, tier)
				continue
			}
			tiers[app.name] = tier
			names = append(names, app.name)
		}
	}
	for _, n := range names {
		ch <- prometheus.MustNewConstMetric(descActiveTier, prometheus.GaugeValue, float64(tiers[n]), n)
	}
}

// collectTraffic reports the splits and mirrors of the handlers' apps;
// apps of the same name are added up.
func collectTraffic(ch chan<- prometheus.Metric, handlers []*Handler) {
	type splitKey struct{ app, pool string }
	split := map[splitKey]uint64{}
	var splits []splitKey
	type mirrorCounts struct{ mirrored, dropped, failures uint64 }
	mirrors := map[string]*mirrorCounts{}
	var mirrored []string
	for _, h := range handlers {
		for _, app := range h.Apps {
			if sp := app.split; sp != nil {
				for i, pool := range sp.pools {
					k := splitKey{app.name, pool.name}
					if _, ok := split[k]; !ok {
						splits = append(splits, k)
					}
					split[k] += sp.requests[i].Load()
				}
			}
			if m := app.mirror; m != nil {
				mc := mirrors[app.name]
				if mc == nil {
					mc = new(mirrorCounts)
					mirrors[app.name] = mc
					mirrored = append(mirrored, app.name)
				}
				mc.mirrored += m.mirrored.Load()
				mc.dropped += m.dropped()
				mc.failures += m.failures.Load()
			}
		}
	}
	for _, k := range splits {
		ch <- prometheus.MustNewConstMetric(descSplitRequests, prometheus.CounterValue, float64(split[k]), k.app, k.pool)
	}
	for _, n := range mirrored {
		mc := mirrors[n]
		ch <- prometheus.MustNewConstMetric(descMirrored, prometheus.CounterValue, float64(mc.mirrored), n)
		ch <- prometheus.MustNewConstMetric(descMirrorDropped, prometheus.CounterValue, float64(mc.dropped), n)
		ch <- prometheus.MustNewConstMetric(descMirrorFailures, prometheus.CounterValue, float64(mc.failures), n)
	}
}

// collectHedges reports the hedges of the handlers' apps that hedge;
// apps of the same name are added up.
func collectHedges(ch chan<- prometheus.Metric, handlers []*Handler) {
	sent, won := map[string]uint64{}, map[string]uint64{}
	var names []string
	for _, h := range handlers {
		for _, app := range h.Apps {
			if !app.hedge.on {
				continue
			}
			if _, ok := sent[app.name]; !ok {
				names = append(names, app.name)
			}
			sent[app.name] += app.hedging.sent.Load()
			won[app.name] += app.hedging.won.Load()
		}
	}
	for _, n := range names {
		ch <- prometheus.MustNewConstMetric(descHedges, prometheus.CounterValue, float64(sent[n]), n)
		ch <- prometheus.MustNewConstMetric(descHedgesWon, prometheus.CounterValue, float64(won[n]), n)
	}
}

// collectOverload reports the queues and rejections of the handlers' apps
// that have max_requests; apps of the same name are added up.
func collectOverload(ch chan<- prometheus.Metric, handlers []*Handler) {
	type appOverload struct {
		queued   int
		rejected uint64
		waits    backend.HistogramSnapshot
	}
	index := map[string]int{}
	var names []string
	var apps []appOverload
	for _, h := range handlers {
		for _, app := range h.Apps {
			if !app.limits.on() {
				continue
			}
			o := appOverload{queued: app.queued(), rejected: app.overload.rejected.Load(), waits: app.overload.waits.Snapshot()}
			if i, ok := index[app.name]; ok {
				apps[i].queued += o.queued
				apps[i].rejected += o.rejected
				mergeHistogram(&apps[i].waits, &o.waits)
				continue
			}
			index[app.name] = len(apps)
			names = append(names, app.name)
			apps = append(apps, o)
		}
	}
	for i, o := range apps {
		ch <- prometheus.MustNewConstMetric(descQueueLength, prometheus.GaugeValue, float64(o.queued), names[i])
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(o.rejected), names[i])
		ch <- prometheus.MustNewConstHistogram(descQueueWait, o.waits.Count, o.waits.Sum, histogramBuckets(&o.waits), names[i])
	}
}

// histogramBuckets returns h's buckets as Prometheus takes them.
func histogramBuckets(h *backend.HistogramSnapshot) map[float64]uint64 {
	buckets := make(map[float64]uint64, len(h.Buckets))
	for i, b := range backend.HistogramBounds {
		buckets[b] = h.Buckets[i]
	}
	return buckets
}

// collectSources reports the dynamic sources of the handlers' apps, each
// once (apps of one host and source share it).
func collectSources(ch chan<- prometheus.Metric, handlers []*Handler) {
	seen := map[*sourceState]bool{}
	for _, h := range handlers {
		for _, app := range h.Apps {
			if app.dynamic == nil || seen[app.dynamic.state] {
				continue
			}
			st := app.dynamic.state
			seen[st] = true
			st.mu.Lock()
			n := len(st.set.Instances)
			st.mu.Unlock()
			ch <- prometheus.MustNewConstMetric(descDynamicUpdates, prometheus.CounterValue, float64(st.updates.Load()), app.name, st.name)
			ch <- prometheus.MustNewConstMetric(descDynamicErrors, prometheus.CounterValue, float64(st.errors.Load()), app.name, st.name)
			ch <- prometheus.MustNewConstMetric(descDynamicInstances, prometheus.GaugeValue, float64(n), app.name, st.name)
		}
	}
}

func (im *instanceMetrics) merge(o *instanceMetrics) {
	im.healthy = im.healthy && o.healthy
	if !im.healthy && o.state != backend.StateHealthy {
		im.state = o.state
	}
	im.checked = im.checked || o.checked
	im.inFlight += o.inFlight
	im.weight += o.weight
	for i := range im.m.Responses {
		im.m.Responses[i] += o.m.Responses[i]
	}
	mergeHistogram(&im.m.ResponseHeader, &o.m.ResponseHeader)
	im.m.ChecksPassed += o.m.ChecksPassed
	im.m.ChecksFailed += o.m.ChecksFailed
	mergeHistogram(&im.m.CheckDuration, &o.m.CheckDuration)
	im.m.Retries += o.m.Retries
	im.m.Ejections += o.m.Ejections
}

func mergeHistogram(h, o *backend.HistogramSnapshot) {
	h.Count += o.Count
	h.Sum += o.Sum
	for i := range h.Buckets {
		h.Buckets[i] += o.Buckets[i]
	}
}

func (im *instanceMetrics) collect(ch chan<- prometheus.Metric) {
	app, inst := im.app, im.instance
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{app, inst}, extra...)...)
	}
	counter := func(d *prometheus.Desc, v uint64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{app, inst}, extra...)...)
	}
	histogram := func(d *prometheus.Desc, h *backend.HistogramSnapshot) {
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, histogramBuckets(h), app, inst)
	}

	gauge(descHealthy, b2f(im.healthy))
	for _, s := range stateLabels {
		gauge(descState, b2f(s == im.state), string(s))
	}
	gauge(descInFlight, float64(im.inFlight))
	gauge(descWeight, float64(im.weight))
	if im.maxRequests >= 0 {
		gauge(descMaxRequests, float64(im.maxRequests))
	}
	for i, class := range backend.StatusClasses {
		counter(descRequests, im.m.Responses[i], class)
	}
	histogram(descResponseHeader, &im.m.ResponseHeader)
	if im.checked {
		counter(descChecks, im.m.ChecksPassed, "passed")
		counter(descChecks, im.m.ChecksFailed, "failed")
		histogram(descCheckSeconds, &im.m.CheckDuration)
	}
	counter(descRetries, im.m.Retries)
	counter(descEjections, im.m.Ejections)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
