package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Ordering says which events of one endpoint may be in flight together.
// +kubebuilder:validation:Enum=PerKey;None
type Ordering string

const (
	// OrderingPerKey sends the events of one key one at a time, in stream
	// order; different keys go concurrently.
	OrderingPerKey Ordering = "PerKey"
	// OrderingNone sends everything concurrently up to maxInFlight.
	OrderingNone Ordering = "None"
)

// LocalObjectReference names an object in the referrer's own namespace. It
// has no namespace field on purpose: a tenant can never point at another
// namespace's secret or policy.
type LocalObjectReference struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// RateLimit caps the request rate to one endpoint.
type RateLimit struct {
	// RequestsPerSecond is the sustained rate.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	RequestsPerSecond int32 `json:"requestsPerSecond"`
	// Burst is how many requests may go at once above the rate; defaults
	// to requestsPerSecond.
	// +kubebuilder:validation:Minimum=1
	// +optional
	Burst *int32 `json:"burst,omitempty"`
}

// Latency sets what "instant" means for an endpoint.
// +kubebuilder:validation:XValidation:rule="!has(self.warnAfter) || !has(self.target) || duration(self.warnAfter) >= duration(self.target)",message="latency.warnAfter must not be shorter than latency.target"
type Latency struct {
	// Target is the publish-to-delivery time the endpoint is expected to meet.
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Target *metav1.Duration `json:"target,omitempty"`
	// WarnAfter is the age of the oldest waiting event past which the
	// endpoint is reported as Lagging.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	WarnAfter *metav1.Duration `json:"warnAfter,omitempty"`
}

// HeaderValue is the value of a static request header. Its length is
// bounded so the CRD's CEL rules on headers stay within the API server's
// cost budget.
// +kubebuilder:validation:MaxLength=8192
type HeaderValue string

// SecretKeyReference names one data key of a Secret in the referrer's own
// namespace. It has no namespace field on purpose.
type SecretKeyReference struct {
	// Name is the Secret's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key is the data key whose value is used.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// HeaderFromSecret is one request header whose value is a Secret's key.
type HeaderFromSecret struct {
	// Name is the HTTP header name, such as Authorization.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')",message="header names must be HTTP tokens (letters, digits and !#$%&*+.^_|~-)"
	// +kubebuilder:validation:XValidation:rule="!self.lowerAscii().startsWith('webhook-') && !self.lowerAscii().startsWith('proxy-') && !(self.lowerAscii() in ['content-type', 'content-length', 'content-encoding', 'host', 'user-agent', 'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect', 'accept-encoding'])",message="headersFrom must not set reserved names: webhook-*, content-type, content-length, content-encoding, host, user-agent, connection, keep-alive, transfer-encoding, te, trailer, upgrade, proxy-*, expect, accept-encoding"
	Name string `json:"name"`
	// SecretKeyRef is the Secret key that holds the value. The value must
	// not contain control characters other than tab (a trailing newline
	// from `echo` counts), or the endpoint is Stalled with
	// HeaderSecretInvalid.
	SecretKeyRef SecretKeyReference `json:"secretKeyRef"`
}

// WebhookEndpointSpec is where and how one receiver gets its events.
// +kubebuilder:validation:XValidation:rule="!has(self.headers) || !has(self.headersFrom) || self.headersFrom.all(h, !self.headers.exists(k, k.lowerAscii() == h.name.lowerAscii()))",message="a header name may not appear in both headers and headersFrom"
// +kubebuilder:validation:XValidation:rule="(has(self.headers) ? size(self.headers) : 0) + (has(self.headersFrom) ? size(self.headersFrom) : 0) <= 32",message="headers and headersFrom together may have at most 32 entries"
type WebhookEndpointSpec struct {
	// URL receives a POST per event. http or https, absolute, with no
	// credentials and no fragment.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an absolute http:// or https:// URL with a host"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')",message="url must not carry credentials (user:password@); put credentials in a Secret and send them with spec.headersFrom instead"
	// +kubebuilder:validation:XValidation:rule="!self.contains('#')",message="url must not have a fragment (#...)"
	URL string `json:"url"`

	// EventTypes selects the events of this namespace the endpoint receives:
	// exact types such as invoice.paid, or patterns where * stands for one
	// dot-separated part (subscription.*) and a trailing > for the rest.
	// Empty means every event of the namespace.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=255
	// +kubebuilder:validation:items:Pattern=`^([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?$|^>$`
	// +listType=set
	// +optional
	EventTypes []string `json:"eventTypes,omitempty"`

	// SigningSecretRef names a Secret in this namespace. Every value in its
	// data is a signing secret in whsec_<base64> form; each request carries
	// one signature per secret, so adding a key and removing the old one
	// later rotates without a gap.
	SigningSecretRef LocalObjectReference `json:"signingSecretRef"`

	// RetryPolicyRef names a RetryPolicy in this namespace; absent means
	// the built-in default schedule.
	// +optional
	RetryPolicyRef *LocalObjectReference `json:"retryPolicyRef,omitempty"`

	// Timeout bounds one request, from connect to the last byte of the
	// response.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('60s')",message="timeout must be more than 0s and at most 60s"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Ordering is PerKey (events of one key in order, one at a time) or
	// None (everything concurrent).
	// +kubebuilder:default=PerKey
	Ordering Ordering `json:"ordering,omitempty"`

	// MaxInFlight caps concurrent requests to this endpoint.
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxInFlight int32 `json:"maxInFlight,omitempty"`

	// RateLimit caps requests per second; absent means no cap beyond
	// maxInFlight.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`

	// Headers are static extra request headers, in plain text in the
	// resource: put tokens in a Secret and use headersFrom instead. Names
	// are HTTP tokens; names that Herald sets or that HTTP owns (webhook-*,
	// content-type, content-length, host, user-agent, connection,
	// transfer-encoding, ...) are refused, and so are values with control
	// characters (CR, LF, NUL, ...).
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(k) <= 256 && k.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$'))",message="header names must be HTTP tokens (letters, digits and !#$%&*+.^_|~-), at most 256 characters"
	// +kubebuilder:validation:XValidation:rule="self.all(k, !k.lowerAscii().startsWith('webhook-') && !k.lowerAscii().startsWith('proxy-') && !(k.lowerAscii() in ['content-type', 'content-length', 'content-encoding', 'host', 'user-agent', 'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect', 'accept-encoding']))",message="headers must not set reserved names: webhook-*, content-type, content-length, content-encoding, host, user-agent, connection, keep-alive, transfer-encoding, te, trailer, upgrade, proxy-*, expect, accept-encoding"
	// +kubebuilder:validation:XValidation:rule="self.all(k, !self[k].matches('[\\x00-\\x08\\x0a-\\x1f\\x7f]'))",message="header values must not contain control characters (CR, LF, NUL, ...); tabs and spaces are allowed"
	// +kubebuilder:validation:XValidation:rule="self.all(k, self.exists_one(j, j.lowerAscii() == k.lowerAscii()))",message="header names must be unique regardless of case"
	// +optional
	Headers map[string]HeaderValue `json:"headers,omitempty"`

	// HeadersFrom are extra request headers whose values are read from
	// Secrets in this namespace, for receivers' auth tokens. The same
	// names are refused as in headers, and a name may not appear in both.
	// Values are never written to status, Events, logs, the delivery log
	// or dead letters.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(h, self.exists_one(o, o.name.lowerAscii() == h.name.lowerAscii()))",message="headersFrom names must be unique regardless of case"
	// +listType=atomic
	// +optional
	HeadersFrom []HeaderFromSecret `json:"headersFrom,omitempty"`

	// Suspend stops deliveries; events keep queuing and are delivered from
	// where they stopped when it is set back to false.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// Latency sets the delivery target and when lag is reported.
	// +kubebuilder:default={}
	Latency Latency `json:"latency,omitempty"`
}

// DeliveryFailure is the last failed attempt, as the receiver answered it.
type DeliveryFailure struct {
	Time metav1.Time `json:"time"`
	// StatusCode is the HTTP status, 0 when no response came back.
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`
	// Reason is a CamelCase class: Timeout, ConnectionError, HTTPError,
	// Redirect.
	Reason string `json:"reason"`
	// Message is a short human text; never a secret.
	// +optional
	Message string `json:"message,omitempty"`
	// EventID is the failed event's id (webhook-id).
	// +optional
	EventID string `json:"eventID,omitempty"`
}

// DeliveryTotals count outcomes since the endpoint was created.
type DeliveryTotals struct {
	Delivered      int64 `json:"delivered"`
	FailedAttempts int64 `json:"failedAttempts"`
	DeadLettered   int64 `json:"deadLettered"`
	Superseded     int64 `json:"superseded"`
}

// AdaptiveLimits are what the dispatcher lets an endpoint have now, below
// its maxInFlight and rateLimit: they start low after an outage, grow with
// successes and fall when it answers 429 or 503, times out or slows down.
type AdaptiveLimits struct {
	// Concurrency is how many requests may be in flight to it now.
	Concurrency int32 `json:"concurrency"`

	// RequestsPerSecond is the rate set after it answered 429 or 503,
	// rounded up; absent while none is in force.
	// +optional
	RequestsPerSecond *int32 `json:"requestsPerSecond,omitempty"`
}

// WebhookEndpointStatus is what delivery to this endpoint looks like now.
type WebhookEndpointStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Backlog counts events not yet delivered: waiting, in flight or
	// waiting to retry.
	// +optional
	Backlog int64 `json:"backlog"`

	// OldestPendingTime is when the oldest undelivered event was published
	// (the sync lag is now minus this).
	// +optional
	OldestPendingTime *metav1.Time `json:"oldestPendingTime,omitempty"`

	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`

	// +optional
	LastFailure *DeliveryFailure `json:"lastFailure,omitempty"`

	// NextRetryTime is the earliest scheduled retry.
	// +optional
	NextRetryTime *metav1.Time `json:"nextRetryTime,omitempty"`

	// NextRetryIn is NextRetryTime relative to the last status write, in
	// kubectl's age style: "in 47s", "in 3m20s", "due" once it has passed.
	// It is as of that write, not of the moment it is read (while a retry
	// is pending, status is rewritten at most once per status write
	// interval); NextRetryTime is exact.
	// +optional
	NextRetryIn string `json:"nextRetryIn,omitempty"`

	// +optional
	ConsecutiveFailures int64 `json:"consecutiveFailures"`

	// +optional
	Totals DeliveryTotals `json:"totals,omitempty"`

	// AdaptiveLimits are the dispatcher's current limits for this endpoint.
	// +optional
	AdaptiveLimits *AdaptiveLimits `json:"adaptiveLimits,omitempty"`

	// Consumer is the JetStream consumer that holds this endpoint's queue.
	// +optional
	Consumer string `json:"consumer,omitempty"`
}

// WebhookEndpoint delivers the events of its namespace to one URL.
//
// The name is a DNS label (no dots) because it becomes a token of NATS
// subjects and consumer names.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whe,categories=herald
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')",message="metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters, no dots)"
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Health",type=string,JSONPath=`.status.conditions[?(@.type=="Healthy")].reason`
// +kubebuilder:printcolumn:name="Backlog",type=integer,JSONPath=`.status.backlog`
// +kubebuilder:printcolumn:name="Last Success",type=date,JSONPath=`.status.lastSuccessTime`
// +kubebuilder:printcolumn:name="Failures",type=integer,JSONPath=`.status.consecutiveFailures`,priority=1
// +kubebuilder:printcolumn:name="Next Retry",type=string,JSONPath=`.status.nextRetryIn`,priority=1,description="as of the last status write"
// +kubebuilder:printcolumn:name="Concurrency",type=integer,JSONPath=`.status.adaptiveLimits.concurrency`,priority=1,description="the adaptive concurrency limit"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   WebhookEndpointSpec   `json:"spec"`
	Status WebhookEndpointStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// WebhookEndpointList contains a list of WebhookEndpoint.
type WebhookEndpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookEndpoint `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookEndpoint{}, &WebhookEndpointList{})
}

// GetConditions returns the status conditions.
func (e *WebhookEndpoint) GetConditions() []metav1.Condition { return e.Status.Conditions }

// SetConditions replaces the status conditions.
func (e *WebhookEndpoint) SetConditions(c []metav1.Condition) { e.Status.Conditions = c }
