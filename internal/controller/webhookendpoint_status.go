package controller

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// defaultWarnAfter matches the CRD default of spec.latency.warnAfter, for
// objects the API server has not defaulted (tests, old objects).
const defaultWarnAfter = 60 * time.Second

// maxFailureMessage caps lastFailure.message; receivers' error texts can
// be long and status is not a log.
const maxFailureMessage = 256

// observation is what one reconcile pass learned. The setters below turn it
// into status without touching a client, so each is tested directly.
type observation struct {
	Now time.Time
	// Stalled is set when a person must act (missing Secret, ...).
	Stalled *stalledError
	// NATSErr is a transient NATS failure; the pass is retried.
	NATSErr error
	// Consumer is the durable consumer's name once it is in place.
	Consumer string
	// DispatcherReady / DispatcherMessage describe the delivery process
	// (always ready in-process; the namespace's Deployment otherwise).
	DispatcherReady   bool
	DispatcherMessage string
	// Backlog is nil when the consumer could not be read.
	Backlog *backlogObservation
	// HealthKnown is false when the health bucket could not be read;
	// Health is nil when the dispatcher has not written a record yet.
	HealthKnown bool
	Health      *dispatcher.Health
}

// succeeded reports whether the pass reached a conclusion about this
// generation (ready, or stalled on something a person must fix).
func (o *observation) succeeded() bool { return o.NATSErr == nil }

// summarise writes every status field this controller owns.
func summarise(ep *v1.WebhookEndpoint, o *observation) {
	setStalledCondition(ep, o)
	setReadyCondition(ep, o)
	setReconcilingCondition(ep, o)
	setHealthyCondition(ep, o)
	setDeliveryStatus(ep, o)
	if o.Consumer != "" {
		ep.Status.Consumer = o.Consumer
	}
	if o.succeeded() {
		ep.Status.ObservedGeneration = ep.Generation
	}
}

func setCondition(ep *v1.WebhookEndpoint, typ string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&ep.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: ep.Generation,
	})
}

// setStalledCondition: Stalled=True with the problem's reason while a
// person must act; absent otherwise (kstatus).
func setStalledCondition(ep *v1.WebhookEndpoint, o *observation) {
	if o.Stalled == nil {
		apimeta.RemoveStatusCondition(&ep.Status.Conditions, v1.StalledCondition)
		return
	}
	setCondition(ep, v1.StalledCondition, metav1.ConditionTrue, o.Stalled.Reason, o.Stalled.Message)
}

// setReadyCondition: True when the consumer and the dispatcher are in
// place and nothing is stalled; False with the blocking reason otherwise.
func setReadyCondition(ep *v1.WebhookEndpoint, o *observation) {
	switch {
	case o.Stalled != nil:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, o.Stalled.Reason, o.Stalled.Message)
	case o.NATSErr != nil:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonNATSError,
			fmt.Sprintf("NATS JetStream unavailable, retrying: %v", o.NATSErr))
	case o.Consumer == "":
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonProgressing, "creating the JetStream consumer")
	case !o.DispatcherReady:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonProgressing, o.DispatcherMessage)
	default:
		msg := fmt.Sprintf("consumer %s in place", o.Consumer)
		if o.DispatcherMessage != "" {
			msg += "; " + o.DispatcherMessage
		}
		setCondition(ep, v1.ReadyCondition, metav1.ConditionTrue, v1.ReasonReady, msg)
	}
}

// setReconcilingCondition: Reconciling=True while the controller is still
// moving towards the spec (transient NATS error, dispatcher starting);
// absent once Ready or Stalled.
func setReconcilingCondition(ep *v1.WebhookEndpoint, o *observation) {
	ready := apimeta.FindStatusCondition(ep.Status.Conditions, v1.ReadyCondition)
	if o.Stalled != nil || (ready != nil && ready.Status == metav1.ConditionTrue) {
		apimeta.RemoveStatusCondition(&ep.Status.Conditions, v1.ReconcilingCondition)
		return
	}
	reason, msg := v1.ReasonProgressing, "reconciling"
	if ready != nil {
		reason, msg = ready.Reason, ready.Message
	}
	setCondition(ep, v1.ReconcilingCondition, metav1.ConditionTrue, reason, msg)
}

// healthVerdict is the pure decision behind the Healthy condition.
func healthVerdict(ep *v1.WebhookEndpoint, o *observation) (metav1.ConditionStatus, string, string) {
	h := o.Health
	switch {
	case ep.Spec.Suspend:
		return metav1.ConditionFalse, v1.ReasonSuspended, "deliveries suspended by spec.suspend: events keep queuing and resume from where they stopped when it is set to false"
	case !o.HealthKnown || o.Backlog == nil:
		return metav1.ConditionUnknown, v1.ReasonUnknown, "delivery health cannot be read from NATS right now"
	case h != nil && h.ConsecutiveFailures > 0:
		msg := "delivery failing"
		if f := h.LastFailure; f != nil {
			msg = fmt.Sprintf("delivery failing: last attempt %s", describeFailure(f.StatusCode, f.Reason))
		}
		return metav1.ConditionFalse, v1.ReasonFailing, msg + "; see status.lastFailure and status.nextRetryTime"
	case o.Backlog.OldestPending != nil && o.Now.Sub(*o.Backlog.OldestPending) > warnAfter(ep):
		return metav1.ConditionFalse, v1.ReasonLagging,
			fmt.Sprintf("the oldest waiting event is older than spec.latency.warnAfter (%s); see status.oldestPendingTime and status.backlog", warnAfter(ep))
	case h == nil || (h.Delivered == 0 && h.LastSuccess == nil):
		return metav1.ConditionTrue, v1.ReasonNoDeliveriesYet, "no event delivered yet"
	default:
		return metav1.ConditionTrue, v1.ReasonDelivering, "delivering"
	}
}

// setHealthyCondition: True (Delivering, NoDeliveriesYet), False (Failing,
// Lagging, Suspended) or Unknown (HealthUnknown) when NATS cannot be read.
// Messages avoid counters and ages on purpose: a message that changes on
// every pass would make every pass a condition change.
func setHealthyCondition(ep *v1.WebhookEndpoint, o *observation) {
	status, reason, msg := healthVerdict(ep, o)
	setCondition(ep, v1.HealthyCondition, status, reason, msg)
}

func describeFailure(code int, reason string) string {
	if code > 0 {
		return fmt.Sprintf("got HTTP %d (%s)", code, reason)
	}
	return fmt.Sprintf("failed with %s", reason)
}

func warnAfter(ep *v1.WebhookEndpoint) time.Duration {
	if w := ep.Spec.Latency.WarnAfter; w != nil && w.Duration > 0 {
		return w.Duration
	}
	return defaultWarnAfter
}

// statusTime rounds to what the API stores (RFC 3339, seconds), so that an
// unchanged observation compares equal to what was written before.
func statusTime(t *time.Time) *metav1.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(*t).Rfc3339Copy()
	return &mt
}

// setDeliveryStatus copies the backlog and the health record into status.
// Unknown inputs leave the last known values in place.
func setDeliveryStatus(ep *v1.WebhookEndpoint, o *observation) {
	s := &ep.Status
	if b := o.Backlog; b != nil {
		s.Backlog = b.Backlog
		s.OldestPendingTime = statusTime(b.OldestPending)
	}
	if !o.HealthKnown {
		return
	}
	h := o.Health
	if h == nil {
		h = &dispatcher.Health{}
	}
	s.LastSuccessTime = statusTime(h.LastSuccess)
	s.NextRetryTime = statusTime(h.NextRetry)
	s.ConsecutiveFailures = h.ConsecutiveFailures
	s.Totals = v1.DeliveryTotals{
		Delivered:      h.Delivered,
		FailedAttempts: h.FailedAttempts,
		DeadLettered:   h.DeadLettered,
		Superseded:     h.Superseded,
	}
	s.LastFailure = nil
	if f := h.LastFailure; f != nil {
		msg := f.Message
		if len(msg) > maxFailureMessage {
			msg = msg[:maxFailureMessage] + "…"
		}
		when := f.Time
		if when.IsZero() {
			// The API requires a time; a record without one is from now.
			when = o.Now
		}
		s.LastFailure = &v1.DeliveryFailure{
			Time:       *statusTime(&when),
			StatusCode: int32(f.StatusCode),
			Reason:     f.Reason,
			Message:    msg,
			EventID:    f.EventID,
		}
	}
}

// conditionsMoved reports a change that must be written at once: a
// condition appeared, disappeared, or changed status or reason, or the
// observed generation moved. Message-only changes wait for the throttle.
func conditionsMoved(before, after *v1.WebhookEndpointStatus) bool {
	if before.ObservedGeneration != after.ObservedGeneration || before.Consumer != after.Consumer {
		return true
	}
	if len(before.Conditions) != len(after.Conditions) {
		return true
	}
	for _, a := range after.Conditions {
		b := apimeta.FindStatusCondition(before.Conditions, a.Type)
		if b == nil || b.Status != a.Status || b.Reason != a.Reason || b.ObservedGeneration != a.ObservedGeneration {
			return true
		}
	}
	return false
}

// writeDecision decides whether a pass writes status now. Unchanged status
// is never written; a condition move is written at once; any other change
// (backlog, counters, times) at most once per minInterval per endpoint,
// and the caller requeues after wait to write it then.
func writeDecision(before, after *v1.WebhookEndpointStatus, lastWrite, now time.Time, minInterval time.Duration) (write bool, wait time.Duration) {
	if equality.Semantic.DeepEqual(before, after) {
		return false, 0
	}
	if conditionsMoved(before, after) {
		return true, 0
	}
	if since := now.Sub(lastWrite); since < minInterval {
		return false, minInterval - since
	}
	return true, 0
}

// eventRecord is a Kubernetes Event to emit once status is written.
type eventRecord struct {
	Type, Reason, Note string
}

// transitionEvents compares the written status with the new one and
// returns the Events people should see. They are emitted only after the
// status write succeeded, so a throttled or failed write never emits the
// same Event twice, and DeadLettered is aggregated over the whole delta.
func transitionEvents(before, after *v1.WebhookEndpointStatus) []eventRecord {
	var out []eventRecord
	reasonOf := func(s *v1.WebhookEndpointStatus, typ string) string {
		// Stalled is only present while True, so its reason is enough.
		if c := apimeta.FindStatusCondition(s.Conditions, typ); c != nil {
			return c.Reason
		}
		return ""
	}
	prevHealth, health := reasonOf(before, v1.HealthyCondition), reasonOf(after, v1.HealthyCondition)
	if health != prevHealth {
		switch {
		case health == v1.ReasonFailing:
			note := "delivery failing"
			if f := after.LastFailure; f != nil {
				note = fmt.Sprintf("delivery failing: attempt for event %s %s: %s", f.EventID, describeFailure(int(f.StatusCode), f.Reason), f.Message)
			}
			if after.NextRetryTime != nil {
				note += fmt.Sprintf("; next retry at %s", after.NextRetryTime.UTC().Format(time.RFC3339))
			}
			out = append(out, eventRecord{corev1.EventTypeWarning, "DeliveryFailing", note})
		case health == v1.ReasonLagging:
			note := fmt.Sprintf("%d events waiting", after.Backlog)
			if after.OldestPendingTime != nil {
				note += fmt.Sprintf("; the oldest was published at %s", after.OldestPendingTime.UTC().Format(time.RFC3339))
			}
			out = append(out, eventRecord{corev1.EventTypeWarning, "Lagging", note})
		case prevHealth == v1.ReasonFailing && (health == v1.ReasonDelivering || health == v1.ReasonNoDeliveriesYet):
			out = append(out, eventRecord{corev1.EventTypeNormal, "DeliveryRecovered",
				fmt.Sprintf("delivery recovered after %d consecutive failures", before.ConsecutiveFailures)})
		}
	}
	if d := after.Totals.DeadLettered - before.Totals.DeadLettered; d > 0 {
		out = append(out, eventRecord{corev1.EventTypeWarning, "DeadLettered",
			fmt.Sprintf("%d events moved to the dead-letter queue since the last report (%d in total)", d, after.Totals.DeadLettered)})
	}
	if stalledReason := reasonOf(after, v1.StalledCondition); stalledReason != "" && stalledReason != reasonOf(before, v1.StalledCondition) {
		c := apimeta.FindStatusCondition(after.Conditions, v1.StalledCondition)
		out = append(out, eventRecord{corev1.EventTypeWarning, stalledReason, c.Message})
	}
	return out
}
