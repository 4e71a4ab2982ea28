package v1alpha1

// Condition types. Ready and Healthy are always present once the controller
// has observed an object; Reconciling and Stalled follow kstatus and are
// present only while they are True.
const (
	// ReadyCondition is True when the endpoint's JetStream consumer and its
	// dispatcher are in place (for a RetryPolicy: when it is valid).
	ReadyCondition = "Ready"

	// HealthyCondition reports delivery health. True with reason Delivering
	// or NoDeliveriesYet; False with Failing, Lagging or Suspended.
	HealthyCondition = "Healthy"

	// ReconcilingCondition is present (True) only while the controller is
	// moving the object towards its desired state.
	ReconcilingCondition = "Reconciling"

	// StalledCondition is present (True) only while progress needs a person:
	// a missing or malformed secret (signing or headersFrom), a missing
	// policy, a refused URL; on a
	// RetryPolicy, a window longer than the events are kept
	// (WindowExceedsRetention).
	StalledCondition = "Stalled"

	// BacklogExpiringCondition (WebhookEndpoint) is present, True, only
	// while the oldest waiting event has waited more than half of the time
	// it may wait: the shorter of the retry window (past it, a failing
	// event is dead-lettered) and the events' retention less
	// RetentionMargin (past the retention, the stream drops it
	// undelivered). Abnormal-true like Stalled: absent means fine. Reasons
	// NearRetryWindow and NearRetention say which limit is closer.
	BacklogExpiringCondition = "BacklogExpiring"
)

// Reasons, stable CamelCase strings that tools and alerts can match on.
const (
	// Ready reasons.
	ReasonReady         = "Ready"
	ReasonProgressing   = "Progressing"
	ReasonNATSError     = "NATSUnavailable"
	ReasonSecretMissing = "SecretMissing"
	ReasonSecretInvalid = "SecretMalformed"
	ReasonPolicyMissing = "RetryPolicyMissing"
	// ReasonHeaderSecretMissing: a Secret or a data key named by
	// spec.headersFrom does not exist (Stalled, Ready=False); the message
	// names the Secret and the key.
	ReasonHeaderSecretMissing = "HeaderSecretMissing"
	// ReasonHeaderSecretInvalid: a spec.headersFrom value cannot be sent
	// as a header: empty, too long, or with CR, LF, NUL or another control
	// character (Stalled, Ready=False); the message names the Secret, the
	// key and what is wrong, never the value.
	ReasonHeaderSecretInvalid = "HeaderSecretInvalid"
	// ReasonURLRefused: spec.url's host is an IP address the egress guard
	// refuses, or a name that resolves only to such addresses (Stalled,
	// Ready=False); the message names the address and the --egress-allow
	// value that would open it.
	ReasonURLRefused = "URLRefused"
	// ReasonEventTypesRefused: an eventTypes pattern the consumer
	// derivation refuses (Stalled).
	ReasonEventTypesRefused = "EventTypesRefused"
	// ReasonInvalid: a RetryPolicy the API server accepted but that cannot
	// work (Ready=False).
	ReasonInvalid = "Invalid"
	// ReasonWindowExceedsRetention: a RetryPolicy whose window is longer
	// than the manager's --events-max-age less RetentionMargin (Stalled,
	// Ready=False); the message has both durations.
	ReasonWindowExceedsRetention = "WindowExceedsRetention"
	// ReasonAPIUnavailable: a transient failure reading the endpoint's
	// Secret, RetryPolicy or dispatcher from the Kubernetes API
	// (Ready=Unknown, Reconciling=True; observedGeneration is not advanced).
	ReasonAPIUnavailable = "APIUnavailable"

	// Healthy reasons.
	ReasonDelivering      = "Delivering"
	ReasonFailing         = "Failing"
	ReasonLagging         = "Lagging"
	ReasonSuspended       = "Suspended"
	ReasonNoDeliveriesYet = "NoDeliveriesYet"
	ReasonUnknown         = "HealthUnknown"

	// BacklogExpiring reasons.
	ReasonNearRetryWindow = "NearRetryWindow"
	ReasonNearRetention   = "NearRetention"
)
