package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RetentionMargin is how long before the events stream drops an event its
// retries must be over. A retry window must not be longer than the events'
// retention (the manager's --events-max-age) less this margin, so the last
// retry, and the dead letter it may become, still find the event in the
// stream despite jitter, a Retry-After or a dispatcher that was down.
//
// The API server refuses windows over MaxRetryWindow (the default
// retention less this margin); a manager running with a shorter retention
// marks longer RetryPolicies Stalled (WindowExceedsRetention).
const RetentionMargin = 24 * time.Hour

// MaxRetryWindow is the longest spec.window the API server accepts: the
// events stream's default retention of 7 days less RetentionMargin, 144h.
// The CEL rule on spec.window repeats it as a literal (markers cannot name
// a constant); the API tests keep the two equal.
const MaxRetryWindow = 7*24*time.Hour - RetentionMargin

// RetryOn says which failures are worth another attempt.
type RetryOn struct {
	// StatusCodes that retry: exact codes ("503") or classes ("5xx").
	// Every other 4xx, and 3xx, is terminal.
	// +kubebuilder:default={"408","429","5xx"}
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:Pattern=`^[1-5]([0-9][0-9]|xx)$`
	// +listType=set
	StatusCodes []string `json:"statusCodes,omitempty"`
	// NetworkErrors retries timeouts and connection errors.
	// +kubebuilder:default=true
	NetworkErrors *bool `json:"networkErrors,omitempty"`
}

// RetryAfter says how a receiver's Retry-After header is treated.
type RetryAfter struct {
	// Honor waits as long as the receiver asks (seconds or an HTTP date)
	// instead of the schedule's next delay.
	// +kubebuilder:default=true
	Honor *bool `json:"honor,omitempty"`
	// Max caps the wait a receiver can ask for.
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Max *metav1.Duration `json:"max,omitempty"`
}

// RetryPolicySpec is when failed deliveries are tried again, and when they
// give up and go to the dead-letter queue.
// +kubebuilder:validation:XValidation:rule="!has(self.window) || !has(self.schedule) || size(self.schedule) == 0 || duration(self.window) >= duration(self.schedule[0])",message="window must not be shorter than the first retry delay"
type RetryPolicySpec struct {
	// Schedule is the delay before each retry; the last one repeats.
	// +kubebuilder:default={"10s","30s","2m","10m","1h"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=50
	// +kubebuilder:validation:items:Type=string
	// +kubebuilder:validation:items:MaxLength=32
	// +kubebuilder:validation:items:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="self.all(d, duration(d) > duration('0s'))",message="every schedule delay must be greater than zero"
	Schedule []metav1.Duration `json:"schedule,omitempty"`

	// Window is how long after the event's time it may still be retried.
	// At most 144h (MaxRetryWindow): the events stream keeps an event 7
	// days by default, and retries end RetentionMargin (a day) before it
	// expires.
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('144h')",message="window must be at most 144h (6 days): the events stream keeps an event 7 days, and its retries must end a day before it expires"
	Window *metav1.Duration `json:"window,omitempty"`

	// MaxAttempts caps attempts (the first one included); absent means
	// only the window limits them.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	MaxAttempts *int32 `json:"maxAttempts,omitempty"`

	// JitterPercent spreads each delay by up to this share, either way, so
	// a recovering endpoint is not hit by every retry in the same second.
	// A percentage (20 = a fraction of 0.2) because the API conventions keep
	// floats out of specs.
	// +kubebuilder:default=20
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	JitterPercent *int32 `json:"jitterPercent,omitempty"`

	// +kubebuilder:default={}
	RetryOn RetryOn `json:"retryOn,omitempty"`

	// +kubebuilder:default={}
	RetryAfter RetryAfter `json:"retryAfter,omitempty"`
}

// RetryPolicyStatus reports whether the policy is in use.
type RetryPolicyStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Endpoints counts the WebhookEndpoints that reference this policy.
	// +optional
	Endpoints int32 `json:"endpoints"`
}

// RetryPolicy is a retry schedule that WebhookEndpoints of its namespace
// reference by name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rp,categories=herald
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Window",type=string,JSONPath=`.spec.window`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RetryPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	Spec   RetryPolicySpec   `json:"spec,omitempty"`
	Status RetryPolicyStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// RetryPolicyList contains a list of RetryPolicy.
type RetryPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RetryPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RetryPolicy{}, &RetryPolicyList{})
}
