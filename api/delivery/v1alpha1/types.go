package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Phase is where one event stands at one endpoint.
type Phase string

const (
	// PhaseQueued: the event is in the stream and the endpoint's filter
	// matches it, but the dispatcher has not been handed it yet.
	PhaseQueued Phase = "Queued"
	// PhaseSending: the dispatcher holds the event (in flight, or waiting
	// behind an earlier event of its key) and has logged no attempt yet.
	PhaseSending Phase = "Sending"
	// PhaseRetrying: an attempt failed and another is scheduled.
	PhaseRetrying Phase = "Retrying"
	// PhaseSent: the endpoint answered 2xx.
	PhaseSent Phase = "Sent"
	// PhaseFailed: the event was dead-lettered (see deadLetterReason).
	PhaseFailed Phase = "Failed"
	// PhaseSuperseded: a newer version of the key was delivered first, so
	// this one was not sent.
	PhaseSuperseded Phase = "Superseded"
)

// Field selectors the API serves, besides metadata.name and
// metadata.namespace.
const (
	FieldEventID  = "eventID"
	FieldEndpoint = "endpoint"
	FieldPhase    = "phase"
	FieldReason   = "reason"
)

// WebhookDelivery is the latest state of one event at one endpoint. Its
// name is <event id>.<endpoint>; event ids hold no dots.
//
// +kubebuilder:object:root=true
type WebhookDelivery struct {
	metav1.TypeMeta `json:",inline"`
	// metadata.creationTimestamp is the first attempt's time, or while
	// Queued or Sending, when the event was stored;
	// metadata.resourceVersion is the sequence of the delivery log entry
	// (or, while Queued or Sending, of the event) it was read from.
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   WebhookDeliverySpec   `json:"spec"`
	Status WebhookDeliveryStatus `json:"status,omitempty"`
}

// WebhookDeliverySpec is the event and where it goes.
type WebhookDeliverySpec struct {
	// EventID is the event's id (the webhook-id header receivers get).
	EventID string `json:"eventID"`
	// Endpoint is the WebhookEndpoint, in the same namespace.
	Endpoint string `json:"endpoint"`
	// Type is the event type, such as subscription.updated.
	Type string `json:"type,omitempty"`
	// Key is the record the event is about; its events are ordered.
	Key string `json:"key,omitempty"`
	// Version orders the key's events; 0 means stream order.
	Version int64 `json:"version,omitempty"`
	// StreamSequence is the event's position in its namespace's stream.
	StreamSequence int64 `json:"streamSequence,omitempty"`
}

// WebhookDeliveryStatus is what happened so far.
type WebhookDeliveryStatus struct {
	// Phase is Queued, Sending, Retrying, Sent, Failed or Superseded.
	Phase Phase `json:"phase"`
	// Attempts is how many HTTP requests were made.
	Attempts int32 `json:"attempts,omitempty"`
	// FirstAttemptTime is when the first entry of the delivery log was
	// written for it.
	FirstAttemptTime *metav1.Time `json:"firstAttemptTime,omitempty"`
	// LastAttemptTime is when the latest entry was written.
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`
	// LastStatusCode is the last HTTP status; 0 when none came back.
	LastStatusCode int32 `json:"lastStatusCode,omitempty"`
	// Reason classifies the last outcome (HTTP500, Timeout, Refused...).
	Reason string `json:"reason,omitempty"`
	// LastError is the last failure in words.
	LastError string `json:"lastError,omitempty"`
	// LastResponse is the start of the last response body, as logged.
	LastResponse string `json:"lastResponse,omitempty"`
	// LastLatency is how long the receiver took to answer the last
	// attempt; absent when no attempt was made.
	LastLatency *metav1.Duration `json:"lastLatency,omitempty"`
	// NextAttemptTime is when the next attempt is due, while Retrying.
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`
	// DeadLetterReason is why it was dead-lettered, when Failed:
	// TerminalResponse, WindowExhausted, MaxAttempts, Expired or Malformed.
	DeadLetterReason string `json:"deadLetterReason,omitempty"`
	// Message says what else happened, in words.
	Message string `json:"message,omitempty"`
	// Replay names the WebhookReplay the latest attempt was made for.
	Replay string `json:"replay,omitempty"`
	// History is every logged attempt, oldest first; on get only.
	History []Attempt `json:"history,omitempty"`
}

// Attempt is one entry of the delivery log.
type Attempt struct {
	// Attempt counts HTTP requests, this one included.
	Attempt int32       `json:"attempt"`
	Time    metav1.Time `json:"time"`
	// Outcome is delivered, retrying, dead or superseded.
	Outcome    string `json:"outcome"`
	StatusCode int32  `json:"statusCode,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Error      string `json:"error,omitempty"`
	// Latency is how long the request took.
	Latency metav1.Duration `json:"latency,omitempty"`
	// Response is the start of the response body.
	Response        string       `json:"response,omitempty"`
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`
	Message         string       `json:"message,omitempty"`
	// Replay names the WebhookReplay the attempt was made for.
	Replay string `json:"replay,omitempty"`
}

// WebhookDeliveryList is a page of deliveries, newest first.
//
// +kubebuilder:object:root=true
type WebhookDeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookDelivery `json:"items"`
}

// DeadLetter is one event an endpoint will not be sent again without a
// replay. Its name is <event id>.<endpoint>.
//
// +kubebuilder:object:root=true
type DeadLetter struct {
	metav1.TypeMeta `json:",inline"`
	// metadata.creationTimestamp is when it died.
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DeadLetterSpec   `json:"spec"`
	Status DeadLetterStatus `json:"status,omitempty"`
}

// DeadLetterSpec is the event and the endpoint it died at.
type DeadLetterSpec struct {
	EventID  string `json:"eventID"`
	Endpoint string `json:"endpoint"`
	Type     string `json:"type,omitempty"`
	Key      string `json:"key,omitempty"`
	Version  int64  `json:"version,omitempty"`
	// Subject and StreamSequence locate the original in the events stream.
	Subject        string `json:"subject,omitempty"`
	StreamSequence int64  `json:"streamSequence,omitempty"`
}

// DeadLetterStatus is why it died, and on get what it was.
type DeadLetterStatus struct {
	// Reason is TerminalResponse, WindowExhausted, MaxAttempts, Expired or
	// Malformed.
	Reason string `json:"reason"`
	// Message says why in words.
	Message  string      `json:"message,omitempty"`
	DeadTime metav1.Time `json:"deadTime"`
	// Attempts is how many HTTP requests were made in all.
	Attempts int32 `json:"attempts"`
	// AttemptsOmitted is how many of them History leaves out (the first
	// and the last are kept; the delivery log has them all).
	AttemptsOmitted int32  `json:"attemptsOmitted,omitempty"`
	LastStatusCode  int32  `json:"lastStatusCode,omitempty"`
	LastError       string `json:"lastError,omitempty"`
	LastResponse    string `json:"lastResponse,omitempty"`
	// Replay names the WebhookReplay whose attempts failed again, when
	// the dead letter is a replay's.
	Replay string `json:"replay,omitempty"`
	// DeliveredByReplay names the WebhookReplay that later delivered the
	// event; DeliveredTime says when.
	DeliveredByReplay string       `json:"deliveredByReplay,omitempty"`
	DeliveredTime     *metav1.Time `json:"deliveredTime,omitempty"`
	// Headers are the event's headers as published; on get only.
	Headers map[string]string `json:"headers,omitempty"`
	// Payload is the event's body as published, when it is JSON; on get
	// only.
	Payload *runtime.RawExtension `json:"payload,omitempty"`
	// RawPayload is the body when it is not JSON (a malformed event); on
	// get only.
	RawPayload []byte `json:"rawPayload,omitempty"`
	// History is the attempts the dead letter kept; on get only.
	History []Attempt `json:"history,omitempty"`
}

// DeadLetterList is a page of dead letters, newest first.
//
// +kubebuilder:object:root=true
type DeadLetterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DeadLetter `json:"items"`
}

// SummaryName is the name of each namespace's one DeliverySummary.
const SummaryName = "summary"

// DeliverySummary is what is failing in one namespace now, grouped by
// endpoint and by status code, so a cluster of 401s stands out. There is
// one per namespace, named "summary"; `kubectl get deliverysummaries -A`
// is the failures of every customer.
//
// +kubebuilder:object:root=true
type DeliverySummary struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status DeliverySummaryStatus `json:"status,omitempty"`
}

// DeliverySummaryStatus counts the deliveries of the namespace by phase.
type DeliverySummaryStatus struct {
	// Retrying and Failed count deliveries whose latest state is that.
	Retrying int32 `json:"retrying"`
	Failed   int32 `json:"failed"`
	// Codes counts them by last status code, most first.
	Codes []CodeCount `json:"codes,omitempty"`
	// Endpoints are the endpoints with a retrying or failed delivery,
	// worst first.
	Endpoints []EndpointSummary `json:"endpoints,omitempty"`
	// Since is the oldest entry of the delivery log the counts saw: older
	// failures have aged out of it.
	Since *metav1.Time `json:"since,omitempty"`
}

// EndpointSummary is one endpoint's share of the failures.
type EndpointSummary struct {
	Endpoint string `json:"endpoint"`
	Retrying int32  `json:"retrying"`
	Failed   int32  `json:"failed"`
	// Codes counts the endpoint's by last status code, most first.
	Codes []CodeCount `json:"codes,omitempty"`
	// OldestRetrying is the earliest last attempt among its retrying
	// deliveries: how long the most stuck one has waited.
	OldestRetrying *metav1.Time `json:"oldestRetrying,omitempty"`
	// LastError is the error of its latest failure.
	LastError string `json:"lastError,omitempty"`
}

// CodeCount counts failures with one last status code (0: no response,
// such as a timeout or a refused connection).
type CodeCount struct {
	Code     int32 `json:"code"`
	Retrying int32 `json:"retrying"`
	Failed   int32 `json:"failed"`
}

// DeliverySummaryList holds one summary per namespace.
//
// +kubebuilder:object:root=true
type DeliverySummaryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DeliverySummary `json:"items"`
}
