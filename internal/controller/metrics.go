package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
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
	statusWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_status_writes_total",
		Help: "WebhookEndpoint status writes by the operator (bounded per endpoint; see MinStatusWriteInterval).",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(backlogGauge, lagGauge, statusWrites)
}

func forgetEndpointMetrics(namespace, name string) {
	backlogGauge.DeleteLabelValues(namespace, name)
	lagGauge.DeleteLabelValues(namespace, name)
}
