package dispatcher

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_deliveries_total",
		Help: "Delivery attempts by outcome: delivered, retrying, dead, superseded.",
	}, []string{"namespace", "endpoint", "outcome"})
	attemptSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_attempt_duration_seconds",
		Help:    "Time from sending a webhook to its response (or failure).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"namespace", "endpoint"})
	inFlightGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_in_flight",
		Help: "Requests in flight to an endpoint.",
	}, []string{"namespace", "endpoint"})
)

func init() {
	metrics.Registry.MustRegister(deliveries, attemptSeconds, inFlightGauge)
}

func metricOutcome(ep *Endpoint, outcome string) {
	deliveries.WithLabelValues(ep.Namespace, ep.Name, outcome).Inc()
}

func observeLatency(ep *Endpoint, d time.Duration) {
	attemptSeconds.WithLabelValues(ep.Namespace, ep.Name).Observe(d.Seconds())
}

func inFlight(ep *Endpoint, delta float64) {
	inFlightGauge.WithLabelValues(ep.Namespace, ep.Name).Add(delta)
}
