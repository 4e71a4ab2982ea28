package dispatcher

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// WithoutVersionRecords and WithoutDeliveryLog switch off one durable write
// each, for BenchmarkDeliveryCost only: it shows what each costs.
func WithoutVersionRecords() Option {
	return func(o *options) error { o.noVersionRecords = true; return nil }
}

func WithoutDeliveryLog() Option {
	return func(o *options) error { o.noDeliveryLog = true; return nil }
}

// VersionCacheBytes is what the endpoints' version caches hold together.
func (d *Dispatcher) VersionCacheBytes() int64 { return d.versionCache.used.Load() }

// WithoutAdaptiveLimits gives every endpoint maxInFlight from the start
// and no adaptive rate, for BenchmarkRecovery's baseline only.
func WithoutAdaptiveLimits() Option {
	return func(o *options) error { o.fixedLimits = true; return nil }
}

// ResponsesCounted is herald_responses_total for one endpoint and code.
func ResponsesCounted(namespace, endpoint string, code int) float64 {
	return testutil.ToFloat64(responses.WithLabelValues(namespace, endpoint, strconv.Itoa(code)))
}

// WithLogPublisher makes the delivery log's publisher small: at most
// maxPending entries unconfirmed, each confirmed within ackTimeout, and
// retries failed entries waiting for a retry.
func WithLogPublisher(maxPending int, ackTimeout time.Duration, retries int) Option {
	return func(o *options) error {
		o.logMaxPending, o.logAckTimeout, o.logRetries = maxPending, ackTimeout, retries
		return nil
	}
}
