package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Gauges the operator exports from its status pass, so alerts can use the
// same numbers `kubectl get webhookendpoints` shows.
var (
	backlogGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_backlog",
		Help: "Events not yet delivered to an endpoint (waiting, in flight or waiting to retry).",
	}, []string{"namespace", "endpoint"})
	lagGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_oldest_pending_seconds",
		Help: "Age of the oldest event not yet delivered to an endpoint; 0 when the backlog is empty.",
	}, []string{"namespace", "endpoint"})
	// Each endpoint's own thresholds, so one alert rule holds every
	// endpoint to its spec.latency rather than to one number for all.
	targetGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_latency_target_seconds",
		Help: "The endpoint's spec.latency.target: how soon after it is stored an event should be delivered.",
	}, []string{"namespace", "endpoint"})
	warnAfterGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_latency_warn_after_seconds",
		Help: "The endpoint's spec.latency.warnAfter: the oldest pending event's age at which it is Degraded.",
	}, []string{"namespace", "endpoint"})
	// From the operator, not the dispatchers: it is there when they are
	// down, which is when "nothing delivered anywhere" must still fire.
	lastSuccessGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_last_success_timestamp_seconds",
		Help: "When the endpoint last answered a delivery with success (Unix time); absent until it has.",
	}, []string{"namespace", "endpoint"})
	statusWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_status_writes_total",
		Help: "WebhookEndpoint status writes by the operator (bounded per endpoint; see MinStatusWriteInterval).",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(backlogGauge, lagGauge, targetGauge, warnAfterGauge, lastSuccessGauge, statusWrites)
}

// exportEndpointMetrics sets what one status pass observed of ep.
func exportEndpointMetrics(ep *v1.WebhookEndpoint, obs *observation) {
	targetGauge.WithLabelValues(ep.Namespace, ep.Name).Set(latencyTarget(ep).Seconds())
	warnAfterGauge.WithLabelValues(ep.Namespace, ep.Name).Set(warnAfter(ep).Seconds())
	if b := obs.Backlog; b != nil {
		backlogGauge.WithLabelValues(ep.Namespace, ep.Name).Set(float64(b.Backlog))
		lag := 0.0
		if b.OldestPending != nil {
			lag = obs.Now.Sub(*b.OldestPending).Seconds()
		}
		lagGauge.WithLabelValues(ep.Namespace, ep.Name).Set(lag)
	}
	if h := obs.Health; h != nil && h.LastSuccess != nil {
		lastSuccessGauge.WithLabelValues(ep.Namespace, ep.Name).Set(float64(h.LastSuccess.UnixMilli()) / 1000)
	}
}

func forgetEndpointMetrics(namespace, name string) {
	for _, g := range []*prometheus.GaugeVec{backlogGauge, lagGauge, targetGauge, warnAfterGauge, lastSuccessGauge} {
		g.DeleteLabelValues(namespace, name)
	}
}
