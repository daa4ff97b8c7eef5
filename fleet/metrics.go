package fleet

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/golb/caddy-lb/health"
)

const metricsPrefix = "caddy_load_balancer_"

var (
	descMembers = prometheus.NewDesc(metricsPrefix+"fleet_members",
		"Live members of the fleet, as this node sees them.", nil, nil)
	descInstances = prometheus.NewDesc(metricsPrefix+"fleet_instances",
		"Instances this node checks with the fleet.", nil, nil)
	descProbedHere = prometheus.NewDesc(metricsPrefix+"fleet_probed_instances",
		"Instances this node probes itself now: those it is a prober of, and those whose probers' verdicts are not fresh.", nil, nil)
	descJoined = prometheus.NewDesc(metricsPrefix+"fleet_joined",
		"Whether this node is a member of the fleet now (1) or probes every instance itself (0).", nil, nil)
	descReceived = prometheus.NewDesc(metricsPrefix+"fleet_verdicts_received_total",
		"Verdicts of other members this node has read.", nil, nil)
	descWritten = prometheus.NewDesc(metricsPrefix+"fleet_verdicts_written_total",
		"Verdicts this node has written.", nil, nil)
	descProbes = prometheus.NewDesc(metricsPrefix+"probes_sent_total",
		"Active health probes this process has sent.", nil, nil)
)

// collector reports the fleet of one config's app.
type collector struct{ a *App }

// registerMetrics registers a's metrics in reg (none if reg is nil) and
// returns the function that unregisters them.
func registerMetrics(reg *prometheus.Registry, a *App) (func(), error) {
	if reg == nil {
		return func() {}, nil
	}
	c := &collector{a}
	if err := reg.Register(c); err != nil {
		if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			return func() {}, nil // one fleet app per config
		}
		return nil, err
	}
	return func() { reg.Unregister(c) }, nil
}

// Describe implements prometheus.Collector.
func (*collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descInstances, descProbedHere, descJoined, descReceived, descWritten, descProbes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descProbes, prometheus.CounterValue, float64(health.ProbesSent()))
	s := c.a.Session()
	if s == nil {
		return
	}
	rep := c.a.Report()
	joined := 0.0
	if rep.State == "joined" {
		joined = 1
	}
	ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(len(rep.Members)))
	ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(rep.Instances))
	ch <- prometheus.MustNewConstMetric(descProbedHere, prometheus.GaugeValue, float64(rep.ProbedHere))
	ch <- prometheus.MustNewConstMetric(descJoined, prometheus.GaugeValue, joined)
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(s.received.Load()))
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(s.written.Load()))
}
