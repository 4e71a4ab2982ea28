package dispatcher

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/signing"
)

// ErrSecretMalformed is wrapped when a signing Secret holds no usable
// whsec_ secret. The error names the Secret's keys, never their values.
var ErrSecretMalformed = errors.New("signing secret malformed")

// Endpoint is everything the dispatcher needs to deliver to one
// WebhookEndpoint, resolved from its spec, its Secret and its RetryPolicy.
type Endpoint struct {
	Namespace string
	Name      string
	URL       string
	// Keys sign every request, one signature each (rotation overlap).
	Keys        []signing.Key
	Headers     map[string]string
	Timeout     time.Duration
	PerKey      bool
	MaxInFlight int
	// RateLimit is requests per second; 0 means none.
	RateLimit rate.Limit
	Burst     int
	Suspend   bool
	Policy    Policy
	// LatencyTarget is what "instant" means for this endpoint: deliveries
	// later than this after the event was stored are counted.
	LatencyTarget time.Duration
}

// ID is "<namespace>/<name>".
func (e *Endpoint) ID() string { return e.Namespace + "/" + e.Name }

// Policy is a resolved RetryPolicy.
type Policy struct {
	Schedule    []time.Duration
	Window      time.Duration
	MaxAttempts int // 0: only the window limits attempts
	Jitter      float64
	// RetryStatus lists retryable codes: "503" or classes such as "5xx".
	RetryStatus     []string
	NetworkErrors   bool
	HonorRetryAfter bool
	RetryAfterMax   time.Duration
}

// DefaultPolicy is the built-in schedule an endpoint without a
// retryPolicyRef gets; it matches the RetryPolicy CRD's defaults.
func DefaultPolicy() Policy {
	return Policy{
		Schedule:        []time.Duration{10 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, time.Hour},
		Window:          24 * time.Hour,
		Jitter:          0.2,
		RetryStatus:     []string{"408", "429", "5xx"},
		NetworkErrors:   true,
		HonorRetryAfter: true,
		RetryAfterMax:   time.Hour,
	}
}

// PolicyFromSpec resolves a RetryPolicy spec; nil gives DefaultPolicy.
// Fields the API server would have defaulted fall back to the defaults too.
func PolicyFromSpec(s *v1.RetryPolicySpec) Policy {
	p := DefaultPolicy()
	if s == nil {
		return p
	}
	if len(s.Schedule) > 0 {
		p.Schedule = make([]time.Duration, len(s.Schedule))
		for i, d := range s.Schedule {
			p.Schedule[i] = d.Duration
		}
	}
	if s.Window != nil {
		p.Window = s.Window.Duration
	}
	if s.MaxAttempts != nil {
		p.MaxAttempts = int(*s.MaxAttempts)
	}
	if s.JitterPercent != nil {
		p.Jitter = float64(*s.JitterPercent) / 100
	}
	if len(s.RetryOn.StatusCodes) > 0 {
		p.RetryStatus = slices.Clone(s.RetryOn.StatusCodes)
	}
	if s.RetryOn.NetworkErrors != nil {
		p.NetworkErrors = *s.RetryOn.NetworkErrors
	}
	if s.RetryAfter.Honor != nil {
		p.HonorRetryAfter = *s.RetryAfter.Honor
	}
	if s.RetryAfter.Max != nil {
		p.RetryAfterMax = s.RetryAfter.Max.Duration
	}
	return p
}

// retryableStatus reports whether the policy retries this HTTP status.
func (p *Policy) retryableStatus(code int) bool {
	c := strconv.Itoa(code)
	for _, s := range p.RetryStatus {
		if s == c || (strings.HasSuffix(s, "xx") && s[0] == c[0]) {
			return true
		}
	}
	return false
}

// ParseSecretData turns a Secret's data into signing keys, in key order so
// the signature header is stable. Every value must be a whsec_ secret.
func ParseSecretData(data map[string][]byte) ([]signing.Key, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: the Secret has no data; add a key whose value is whsec_<base64>", ErrSecretMalformed)
	}
	names := make([]string, 0, len(data))
	for k := range data {
		names = append(names, k)
	}
	slices.Sort(names)
	keys := make([]signing.Key, 0, len(names))
	for _, n := range names {
		k, err := signing.ParseSecret(string(data[n]))
		if err != nil {
			return nil, fmt.Errorf("%w: data key %q is not whsec_<base64 of at least 24 bytes>", ErrSecretMalformed, n)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// EndpointFromSpec resolves a WebhookEndpoint into an Endpoint. secretData
// is the signing Secret's data; secretHeaders are the spec.headersFrom
// values by header name, as read from their Secrets (each is checked with
// CheckHeaderValue); policy is nil for the default.
func EndpointFromSpec(namespace, name string, spec *v1.WebhookEndpointSpec, secretData map[string][]byte, secretHeaders map[string]string, policy *v1.RetryPolicySpec) (Endpoint, error) {
	keys, err := ParseSecretData(secretData)
	if err != nil {
		return Endpoint{}, err
	}
	for h, v := range secretHeaders {
		if err := CheckHeaderValue([]byte(v)); err != nil {
			return Endpoint{}, fmt.Errorf("header %s: %w", h, err)
		}
	}
	e := endpointFromSpec(namespace, name, spec, policy)
	e.Keys = keys
	e.Headers = requestHeaders(spec.Headers, secretHeaders)
	return e, nil
}

// SweepOnly is the Endpoint of a WebhookEndpoint that cannot deliver (its
// Secret is missing or malformed): nothing is sent, but its waiting events
// are dead-lettered as Expired when their window ends, as a suspended
// endpoint's are, instead of aging out of the stream unseen.
func SweepOnly(namespace, name string, spec *v1.WebhookEndpointSpec, policy *v1.RetryPolicySpec) Endpoint {
	e := endpointFromSpec(namespace, name, spec, policy)
	e.Suspend = true
	return e
}

func endpointFromSpec(namespace, name string, spec *v1.WebhookEndpointSpec, policy *v1.RetryPolicySpec) Endpoint {
	e := Endpoint{
		Namespace:   namespace,
		Name:        name,
		URL:         spec.URL,
		Headers:     requestHeaders(spec.Headers, nil),
		Timeout:     10 * time.Second,
		PerKey:      spec.Ordering != v1.OrderingNone,
		MaxInFlight: int(spec.MaxInFlight),
		Suspend:     spec.Suspend,
		Policy:      PolicyFromSpec(policy),
	}
	if spec.Timeout != nil && spec.Timeout.Duration > 0 {
		e.Timeout = spec.Timeout.Duration
	}
	if e.MaxInFlight <= 0 {
		e.MaxInFlight = 16
	}
	if t := spec.Latency.Target; t != nil {
		e.LatencyTarget = t.Duration
	}
	if rl := spec.RateLimit; rl != nil {
		e.RateLimit = rate.Limit(rl.RequestsPerSecond)
		e.Burst = int(rl.RequestsPerSecond)
		if rl.Burst != nil {
			e.Burst = int(*rl.Burst)
		}
	}
	return e
}
