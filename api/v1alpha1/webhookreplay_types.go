package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Replay limits: a selection that matches more than spec.limit is refused
// before anything is sent, and the limit itself is capped.
const (
	DefaultReplayLimit = 100
	MaxReplayLimit     = 10000
	MaxReplayEventIDs  = 1000
	// MaxReplayEventsListed is the largest replay whose status lists
	// every event.
	MaxReplayEventsListed = 100
	// DefaultReplayTTL keeps a finished replay a week: `kubectl get whr`
	// is the replay history.
	DefaultReplayTTL = 7 * 24 * 60 * 60
)

// WebhookReplaySpec says what to resend to which endpoint. It cannot be
// changed once created: a replay is a record of what was asked.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a replay's spec cannot be changed; create another replay"
// +kubebuilder:validation:XValidation:rule="[has(self.eventIDs), has(self.timeRange), has(self.deadLetters)].filter(x, x).size() == 1",message="name exactly one of eventIDs, timeRange or deadLetters"
type WebhookReplaySpec struct {
	// Endpoint is a WebhookEndpoint in the replay's namespace; a replay
	// can reach no other namespace's.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Endpoint string `json:"endpoint"`

	// EventIDs resends these events (their webhook-id values).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9_-]+$`
	// +listType=set
	// +optional
	EventIDs []string `json:"eventIDs,omitempty"`

	// TimeRange resends the events the endpoint's filter matches that the
	// events stream stored in [from, to).
	// +optional
	TimeRange *ReplayTimeRange `json:"timeRange,omitempty"`

	// DeadLetters resends the endpoint's dead letters that no replay has
	// delivered yet.
	// +optional
	DeadLetters *ReplayDeadLetters `json:"deadLetters,omitempty"`

	// Limit is the most events the replay may send. A selection that
	// matches more is refused (Stalled, LimitExceeded) with its count, and
	// nothing is sent.
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	Limit int32 `json:"limit,omitempty"`

	// Rate is the most replayed events sent per second, on top of the
	// endpoint's own rate limit.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Rate int32 `json:"rate,omitempty"`

	// DryRun counts and lists what would be sent, and sends nothing.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`

	// TTLSecondsAfterFinished is how long a finished replay is kept.
	// +kubebuilder:default=604800
	// +kubebuilder:validation:Minimum=0
	// +optional
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`
}

// ReplayTimeRange is a window of the events stream.
//
// +kubebuilder:validation:XValidation:rule="self.from < self.to",message="from must be before to"
type ReplayTimeRange struct {
	From metav1.Time `json:"from"`
	To   metav1.Time `json:"to"`
}

// ReplayDeadLetters narrows a replay of dead letters.
type ReplayDeadLetters struct {
	// Reasons keeps the dead letters with these reasons (TerminalResponse,
	// WindowExhausted, MaxAttempts, Expired, Malformed); empty keeps all.
	// +kubebuilder:validation:MaxItems=5
	// +kubebuilder:validation:items:Enum=TerminalResponse;WindowExhausted;MaxAttempts;Expired;Malformed
	// +listType=set
	// +optional
	Reasons []string `json:"reasons,omitempty"`
	// Since keeps the dead letters that died at or after this time.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`
}

// ReplayPhase is where a replay stands.
// +kubebuilder:validation:Enum=Pending;Running;Succeeded;PartiallyFailed;Failed
type ReplayPhase string

const (
	// ReplayPending: not started (its endpoint is missing, say).
	ReplayPending ReplayPhase = "Pending"
	// ReplayRunning: its events are being sent.
	ReplayRunning ReplayPhase = "Running"
	// ReplaySucceeded: every event ended delivered, superseded or skipped
	// (or, for a dry run, was counted).
	ReplaySucceeded ReplayPhase = "Succeeded"
	// ReplayPartiallyFailed: some events failed again.
	ReplayPartiallyFailed ReplayPhase = "PartiallyFailed"
	// ReplayFailed: nothing could be sent: the selection was refused, or
	// every event failed.
	ReplayFailed ReplayPhase = "Failed"
)

// What became of one replayed event.
const (
	ReplayOutcomeDelivered  = "Delivered"
	ReplayOutcomeSuperseded = "Superseded"
	ReplayOutcomeFailed     = "Failed"
	// ReplayOutcomeSkipped: the event's live delivery is still queued or
	// retrying; the replay leaves it to that.
	ReplayOutcomeSkipped = "Skipped"
	ReplayOutcomePending = "Pending"
	ReplayOutcomeRetry   = "Retrying"
	// ReplayOutcomeWouldSend: a dry run would send it.
	ReplayOutcomeWouldSend = "WouldSend"
)

// Replay condition reasons.
const (
	ReasonEndpointMissing     = "EndpointMissing"
	ReasonLimitExceeded       = "LimitExceeded"
	ReasonReplayRunning       = "Running"
	ReasonReplaySucceeded     = "Succeeded"
	ReasonReplayFailed        = "Failed"
	ReasonReplayPartial       = "PartiallyFailed"
	ReasonDryRun              = "DryRun"
	ReasonNothingMatched      = "NothingMatched"
	ReasonLiveDeliveryPending = "LiveDeliveryPending"
	ReasonEventNotFound       = "EventNotFound"
	ReasonReplayRefused       = "ReplayStreamRefused"
)

// ReplayedEvent is one line of a replay's outcome.
type ReplayedEvent struct {
	ID string `json:"id"`
	// Sequence is the event's place in the events stream.
	// +optional
	Sequence int64 `json:"sequence,omitempty"`
	// Outcome is Pending, Retrying, Delivered, Superseded, Failed, Skipped
	// or WouldSend.
	Outcome string `json:"outcome"`
	// Code is the last HTTP status code.
	// +optional
	Code int32 `json:"code,omitempty"`
	// Reason says why it failed or was skipped.
	// +optional
	Reason string `json:"reason,omitempty"`
}

// WebhookReplayStatus is the replay's progress and outcome.
type WebhookReplayStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	Phase ReplayPhase `json:"phase,omitempty"`
	// Matched is how many events the selection holds, skipped ones
	// included.
	// +optional
	Matched int32 `json:"matched"`
	// Sent counts the events sent at least once.
	// +optional
	Sent int32 `json:"sent"`
	// +optional
	Delivered int32 `json:"delivered"`
	// +optional
	Superseded int32 `json:"superseded"`
	// +optional
	Failed int32 `json:"failed"`
	// Skipped counts events left to their live delivery, or not found.
	// +optional
	Skipped int32 `json:"skipped"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Events has one line per event, for replays of up to 100 events.
	// +kubebuilder:validation:MaxItems=100
	// +listType=atomic
	// +optional
	Events []ReplayedEvent `json:"events,omitempty"`
}

// WebhookReplay resends events to one WebhookEndpoint of its namespace:
// a list of ids, a time range of the events stream, or the endpoint's
// dead letters. A replayed event keeps its webhook-id, body and place in
// its key, so newest-version-wins still holds.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whr,categories=herald
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpoint`
// +kubebuilder:printcolumn:name="Matched",type=integer,JSONPath=`.status.matched`
// +kubebuilder:printcolumn:name="Delivered",type=integer,JSONPath=`.status.delivered`
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.failed`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookReplay struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   WebhookReplaySpec   `json:"spec"`
	Status WebhookReplayStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// WebhookReplayList contains a list of WebhookReplay.
type WebhookReplayList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookReplay `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookReplay{}, &WebhookReplayList{})
}
