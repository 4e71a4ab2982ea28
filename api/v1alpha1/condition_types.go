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
	// a missing or malformed secret, a missing policy, a refused URL.
	StalledCondition = "Stalled"
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
	ReasonURLRefused    = "URLRefused"
	// ReasonEventTypesRefused: an eventTypes pattern the consumer
	// derivation refuses (Stalled).
	ReasonEventTypesRefused = "EventTypesRefused"
	// ReasonInvalid: a RetryPolicy the API server accepted but that cannot
	// work (Ready=False).
	ReasonInvalid = "Invalid"

	// Healthy reasons.
	ReasonDelivering      = "Delivering"
	ReasonFailing         = "Failing"
	ReasonLagging         = "Lagging"
	ReasonSuspended       = "Suspended"
	ReasonNoDeliveriesYet = "NoDeliveriesYet"
	ReasonUnknown         = "HealthUnknown"
)
