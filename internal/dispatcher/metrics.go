package dispatcher

import (
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

// endpointMetrics are one endpoint's series, looked up once per worker
// rather than by label on every delivery.
type endpointMetrics struct {
	outcomes map[string]prometheus.Counter
	latency  prometheus.Observer
	inFlight prometheus.Gauge
}

func newEndpointMetrics(namespace, endpoint string) endpointMetrics {
	m := endpointMetrics{
		outcomes: map[string]prometheus.Counter{},
		latency:  attemptSeconds.WithLabelValues(namespace, endpoint),
		inFlight: inFlightGauge.WithLabelValues(namespace, endpoint),
	}
	for _, o := range []string{OutcomeDelivered, OutcomeRetrying, OutcomeDead, OutcomeSuperseded} {
		m.outcomes[o] = deliveries.WithLabelValues(namespace, endpoint, o)
	}
	return m
}

func (m endpointMetrics) outcome(o string) { m.outcomes[o].Inc() }
