package controller

import (
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/utils/ptr"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// defaultWarnAfter and defaultTarget match the CRD defaults of
// spec.latency, for objects the API server has not defaulted (tests, old
// objects).
const (
	defaultWarnAfter = 60 * time.Second
	defaultTarget    = 5 * time.Second
)

// expiringShare is the share of its limit (see BacklogExpiringCondition)
// the oldest waiting event may use before the endpoint says so: half
// leaves as long again to act as the event has waited.
const expiringShare = 0.5

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
	// APIErr is a transient failure reading from the Kubernetes API (the
	// Secret, the RetryPolicy, the dispatcher Deployment); the pass is
	// retried.
	APIErr error
	// Retention is how long the events stream keeps an event (the
	// manager's --events-max-age); 0 when unknown.
	Retention time.Duration
	// RetryWindow is the window of the endpoint's retry policy (the
	// built-in one without a retryPolicyRef) and WindowSource names it, for
	// messages; 0 when the policy could not be resolved.
	RetryWindow  time.Duration
	WindowSource string
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
// generation (ready, or stalled on something a person must fix). A
// transient error, from NATS or the Kubernetes API, is no conclusion.
func (o *observation) succeeded() bool { return o.NATSErr == nil && o.APIErr == nil }

// summarise writes every status field this controller owns.
func summarise(ep *v1.WebhookEndpoint, o *observation) {
	setStalledCondition(ep, o)
	setReadyCondition(ep, o)
	setReconcilingCondition(ep, o)
	setHealthyCondition(ep, o)
	setBacklogExpiringCondition(ep, o)
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
// place and nothing is stalled; False with the blocking reason otherwise;
// Unknown (APIUnavailable) when the references could not be read. A retry
// window that outlives the events' retention does not stop deliveries, so
// the endpoint stays Ready and the message says what will go wrong.
func setReadyCondition(ep *v1.WebhookEndpoint, o *observation) {
	switch {
	case o.Stalled != nil:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, o.Stalled.Reason, o.Stalled.Message)
	case o.NATSErr != nil:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonNATSError,
			fmt.Sprintf("NATS JetStream unavailable, retrying: %v", o.NATSErr))
	case o.APIErr != nil:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionUnknown, v1.ReasonAPIUnavailable,
			fmt.Sprintf("reading from the Kubernetes API failed, retrying: %v", o.APIErr))
	case o.Consumer == "":
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonProgressing, "creating the JetStream consumer")
	case !o.DispatcherReady:
		setCondition(ep, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonProgressing, o.DispatcherMessage)
	default:
		msg := fmt.Sprintf("consumer %s in place", o.Consumer)
		if o.DispatcherMessage != "" {
			msg += "; " + o.DispatcherMessage
		}
		if problem, bad := windowProblem("the retry window of "+o.WindowSource, o.RetryWindow, o.Retention); bad {
			msg += "; warning: " + problem
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
			fmt.Sprintf("the oldest waiting event is %s old, over the %s target and spec.latency.warnAfter (%s); see status.oldestPendingTime and status.backlog",
				age(o.Now.Sub(*o.Backlog.OldestPending)), fmtDuration(latencyTarget(ep)), fmtDuration(warnAfter(ep)))
	case h == nil || (h.Delivered == 0 && h.LastSuccess == nil):
		return metav1.ConditionTrue, v1.ReasonNoDeliveriesYet, "no event delivered yet; " + latencyNote(ep, o)
	default:
		return metav1.ConditionTrue, v1.ReasonDelivering, "delivering; " + latencyNote(ep, o)
	}
}

// latencyNote sets the oldest waiting event against spec.latency: its age
// appears only once it is over the target, so the message of an endpoint
// that keeps up does not change from pass to pass.
func latencyNote(ep *v1.WebhookEndpoint, o *observation) string {
	target, warn := fmtDuration(latencyTarget(ep)), fmtDuration(warnAfter(ep))
	switch {
	case o.Backlog.OldestPending == nil:
		return fmt.Sprintf("nothing waiting (target %s, Lagging after %s)", target, warn)
	case o.Now.Sub(*o.Backlog.OldestPending) <= latencyTarget(ep):
		return fmt.Sprintf("the oldest waiting event is within the %s target (Lagging after %s)", target, warn)
	default:
		return fmt.Sprintf("the oldest waiting event is %s old, over the %s target (Lagging after %s)",
			age(o.Now.Sub(*o.Backlog.OldestPending)), target, warn)
	}
}

// setHealthyCondition: True (Delivering, NoDeliveriesYet), False (Failing,
// Lagging, Suspended) or Unknown (HealthUnknown) when NATS cannot be read.
// Messages carry no counters, and ages only past the latency target
// (rounded as kubectl rounds ages), so a healthy endpoint's message is
// stable; message-only changes are written within the write budget.
func setHealthyCondition(ep *v1.WebhookEndpoint, o *observation) {
	status, reason, msg := healthVerdict(ep, o)
	if h := o.Health; h != nil && h.PendingWrites > 0 {
		// Decided but not yet recorded in NATS: held, never sent again.
		msg += fmt.Sprintf("; %d delivered or dead-lettered events wait for their version record or dead letter to be written to NATS (held, not sent again)", h.PendingWrites)
	}
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

func latencyTarget(ep *v1.WebhookEndpoint) time.Duration {
	if t := ep.Spec.Latency.Target; t != nil && t.Duration > 0 {
		return t.Duration
	}
	return defaultTarget
}

// age writes an observed age as kubectl writes ages (47s, 3m20s, 13h, 6d).
func age(d time.Duration) string { return duration.HumanDuration(d) }

// expiryLimit is how long the endpoint's oldest waiting event may wait,
// and which limit that is: the retry window (then a failing event is
// dead-lettered) or the events' retention less RetentionMargin (then the
// stream drops it undelivered), whichever is shorter. A retention no
// longer than the margin counts as itself. 0 when neither is known.
func expiryLimit(o *observation) (time.Duration, string) {
	retention := o.Retention - v1.RetentionMargin
	if retention <= 0 {
		retention = o.Retention
	}
	switch {
	case o.RetryWindow > 0 && (retention <= 0 || o.RetryWindow <= retention):
		return o.RetryWindow, v1.ReasonNearRetryWindow
	case retention > 0:
		return retention, v1.ReasonNearRetention
	}
	return 0, ""
}

// setBacklogExpiringCondition: BacklogExpiring=True while the oldest
// waiting event is older than expiringShare of its limit (expiryLimit),
// with both ages in the message; absent otherwise. Left as it is while the
// backlog cannot be read.
func setBacklogExpiringCondition(ep *v1.WebhookEndpoint, o *observation) {
	if o.Backlog == nil {
		return
	}
	limit, reason := expiryLimit(o)
	if o.Backlog.OldestPending == nil || limit <= 0 {
		apimeta.RemoveStatusCondition(&ep.Status.Conditions, v1.BacklogExpiringCondition)
		return
	}
	waited := o.Now.Sub(*o.Backlog.OldestPending)
	if waited <= time.Duration(float64(limit)*expiringShare) {
		apimeta.RemoveStatusCondition(&ep.Status.Conditions, v1.BacklogExpiringCondition)
		return
	}
	msg := fmt.Sprintf("the oldest waiting event is %s old, more than half of the %s it may wait ", age(waited), fmtDuration(limit))
	if reason == v1.ReasonNearRetryWindow {
		msg += fmt.Sprintf("(the retry window of %s): a failing event older than that goes to the dead-letter queue", o.WindowSource)
	} else if limit < o.Retention {
		msg += fmt.Sprintf("(events are kept %s, the manager's --events-max-age, less the %s margin): older events are dropped from the stream undelivered",
			fmtDuration(o.Retention), fmtDuration(v1.RetentionMargin))
	} else {
		msg += fmt.Sprintf("(events are kept only %s, the manager's --events-max-age): older events are dropped from the stream undelivered", fmtDuration(o.Retention))
	}
	setCondition(ep, v1.BacklogExpiringCondition, metav1.ConditionTrue, reason, msg+"; see status.oldestPendingTime and status.backlog")
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
	s.NextRetryIn = nextRetryIn(h.NextRetry, o.Now)
	s.ConsecutiveFailures = h.ConsecutiveFailures
	s.Totals = v1.DeliveryTotals{
		Delivered:      h.Delivered,
		FailedAttempts: h.FailedAttempts,
		DeadLettered:   h.DeadLettered,
		Superseded:     h.Superseded,
	}
	s.AdaptiveLimits = adaptiveLimits(h)
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

// spread is the least interval at which n endpoints, each doing
// something once per interval, do it at most perSecond times a second
// together, and never less than min: 10,000 endpoints within 80 status
// writes a second are written every 125 s each.
func spread(min time.Duration, perSecond float64, n int) time.Duration {
	if perSecond <= 0 {
		return min
	}
	return max(min, time.Duration(float64(n)/perSecond*float64(time.Second)))
}

// quiet is an endpoint with nothing to watch for but drift: Ready, no
// backlog, no failures, no retry due. Health changes wake it at once (see
// HealthWatcher), so its periodic pass can wait longer.
func quiet(s *v1.WebhookEndpointStatus) bool {
	return apimeta.IsStatusConditionTrue(s.Conditions, v1.ReadyCondition) &&
		s.Backlog == 0 && s.ConsecutiveFailures == 0 && s.NextRetryTime == nil
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
	if r := reasonOf(after, v1.BacklogExpiringCondition); r != "" && r != reasonOf(before, v1.BacklogExpiringCondition) {
		c := apimeta.FindStatusCondition(after.Conditions, v1.BacklogExpiringCondition)
		out = append(out, eventRecord{corev1.EventTypeWarning, "BacklogExpiring", c.Message})
	}
	if stalledReason := reasonOf(after, v1.StalledCondition); stalledReason != "" && stalledReason != reasonOf(before, v1.StalledCondition) {
		c := apimeta.FindStatusCondition(after.Conditions, v1.StalledCondition)
		out = append(out, eventRecord{corev1.EventTypeWarning, stalledReason, c.Message})
	}
	return out
}

// nextRetryIn is status.nextRetryIn: the time from now (the pass that
// writes status) to the next retry, as kubectl writes ages: "in 47s",
// "in 3m20s"; "due" once less than a second is left; "" when none is
// scheduled.
func nextRetryIn(next *time.Time, now time.Time) string {
	if next == nil || next.IsZero() {
		return ""
	}
	d := next.Sub(now)
	if d < time.Second {
		return "due"
	}
	return "in " + duration.HumanDuration(d)
}

// adaptiveLimits is the health record's limits for status, nil before a
// dispatcher reported any.
func adaptiveLimits(h *dispatcher.Health) *v1.AdaptiveLimits {
	if h.ConcurrencyLimit <= 0 {
		return nil
	}
	l := &v1.AdaptiveLimits{Concurrency: int32(h.ConcurrencyLimit)}
	if h.AdaptiveRate > 0 {
		l.RequestsPerSecond = ptr.To(int32(math.Ceil(h.AdaptiveRate)))
	}
	return l
}
