package dispatcher

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_deliveries_total",
		Help: "Delivery attempts by outcome: delivered, retrying, dead, superseded.",
	}, []string{"namespace", "endpoint", "outcome"})
	// The status code of each attempt, so a cluster of 401s at one
	// endpoint (a rotated secret) stands apart from 503s (an outage).
	responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_responses_total",
		Help: "Attempts by the receiver's HTTP status code; code 0: no answer (timeout, refused connection, egress refused).",
	}, []string{"namespace", "endpoint", "code"})
	attemptSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_attempt_duration_seconds",
		Help:    "Time from sending a webhook to its response (or failure).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"namespace", "endpoint"})
	inFlightGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_in_flight",
		Help: "Requests in flight to an endpoint.",
	}, []string{"namespace", "endpoint"})
	overTarget = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_deliveries_over_target_total",
		Help: "Deliveries that reached the endpoint later than its latency target after the event was stored.",
	}, []string{"namespace", "endpoint"})
	bookkeepingFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_bookkeeping_failures_total",
		Help: "Failed writes of a decided outcome (what: version, versionRead, deadLetter); the event is kept and not sent again.",
	}, []string{"namespace", "endpoint", "what"})
	pendingWrites = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_bookkeeping_pending",
		Help: "Events whose outcome is decided but whose version record or dead letter is still being written.",
	}, []string{"namespace", "endpoint"})
	concurrencyLimit = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_concurrency_limit",
		Help: "The adaptive concurrency limit: requests an endpoint may have in flight now, at most its maxInFlight.",
	}, []string{"namespace", "endpoint"})
	adaptiveRate = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_endpoint_adaptive_rate",
		Help: "The adaptive rate limit (requests/s) set after the endpoint answered 429 or 503; 0 while none is in force.",
	}, []string{"namespace", "endpoint"})
	logPublishFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_delivery_log_publish_failures_total",
		Help: "Delivery-log publishes that failed: first publishes queued for a retry, and failed retries.",
	})
	logPublishWaits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_delivery_log_publish_waits_total",
		Help: "Delivery-log entries that waited for NATS to confirm earlier ones: the dispatcher slowed to the log's pace.",
	})
	logEntriesLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_delivery_log_lost_total",
		Help: "Delivery-log entries lost after their retries failed (each is also logged as an error).",
	})
)

func init() {
	metrics.Registry.MustRegister(deliveries, responses, attemptSeconds, inFlightGauge, overTarget,
		bookkeepingFailures, pendingWrites, concurrencyLimit, adaptiveRate, logPublishFailures, logPublishWaits, logEntriesLost)
}

// endpointMetrics are one endpoint's series, looked up once per worker
// rather than by label on every delivery.
type endpointMetrics struct {
	namespace, endpoint string
	outcomes            map[string]prometheus.Counter
	latency             prometheus.Observer
	inFlight            prometheus.Gauge
	overTarget          prometheus.Counter
	pending             prometheus.Gauge
	concurrencyLimit    prometheus.Gauge
	adaptiveRate        prometheus.Gauge
	// codes are the herald_responses_total series by status code, made on
	// a code's first answer; read without a lock on every attempt.
	codes *sync.Map
}

func newEndpointMetrics(namespace, endpoint string) endpointMetrics {
	m := endpointMetrics{
		namespace: namespace, endpoint: endpoint,
		overTarget: overTarget.WithLabelValues(namespace, endpoint),
		pending:    pendingWrites.WithLabelValues(namespace, endpoint),
		outcomes:   map[string]prometheus.Counter{},
		latency:    attemptSeconds.WithLabelValues(namespace, endpoint),
		inFlight:   inFlightGauge.WithLabelValues(namespace, endpoint),

		concurrencyLimit: concurrencyLimit.WithLabelValues(namespace, endpoint),
		adaptiveRate:     adaptiveRate.WithLabelValues(namespace, endpoint),
		codes:            &sync.Map{},
	}
	for _, o := range []string{OutcomeDelivered, OutcomeRetrying, OutcomeDead, OutcomeSuperseded} {
		m.outcomes[o] = deliveries.WithLabelValues(namespace, endpoint, o)
	}
	return m
}

func (m endpointMetrics) outcome(o string) { m.outcomes[o].Inc() }

// attempted counts one attempt's answer: its latency and status code.
func (m endpointMetrics) attempted(status int, latency time.Duration) {
	m.latency.Observe(latency.Seconds())
	c, ok := m.codes.Load(status)
	if !ok {
		c, _ = m.codes.LoadOrStore(status, responses.WithLabelValues(m.namespace, m.endpoint, strconv.Itoa(status)))
	}
	c.(prometheus.Counter).Inc()
}

func (m endpointMetrics) bookkeepingFailed(what string) {
	bookkeepingFailures.WithLabelValues(m.namespace, m.endpoint, what).Inc()
}
