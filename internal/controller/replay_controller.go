package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// ReplayFinalizer purges a deleted replay's copies, so it stops.
const ReplayFinalizer = "webhooks.herald.dev/replay"

// DefaultReplayPoll is how often a running replay's outcomes are counted.
const DefaultReplayPoll = 2 * time.Second

// WebhookReplayReconciler runs WebhookReplays: it selects their events,
// copies them to the namespace's replay stream (the endpoint's dispatcher
// sends them, at the replay's rate), counts their outcomes into status,
// and deletes finished replays after their TTL.
type WebhookReplayReconciler struct {
	client.Client
	JS       jetstream.JetStream
	Recorder events.EventRecorder
	// Poll is how often a running replay is counted (DefaultReplayPoll).
	Poll time.Duration
}

// RBAC, and what each rule is for:
// replays: read, add/remove the finalizer, delete after the TTL, status.
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookreplays,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookreplays/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookreplays/finalizers,verbs=update

// SetupWithManager registers the controller: replays, and the endpoints
// a pending replay waits for.
func (r *WebhookReplayReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Poll <= 0 {
		r.Poll = DefaultReplayPoll
	}
	toReplays := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		var list v1.WebhookReplayList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, rp := range list.Items {
			if rp.Spec.Endpoint == o.GetName() && rp.Status.StartTime == nil {
				out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rp.Namespace, Name: rp.Name}})
			}
		}
		return out
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("webhookreplay").
		For(&v1.WebhookReplay{}).
		Watches(&v1.WebhookEndpoint{}, toReplays).
		Complete(r)
}

// Reconcile is one pass: observe the replay, its endpoint and its
// outcomes; decide where it stands; act (select and copy once, delete
// after the TTL); summarise status.
func (r *WebhookReplayReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rp := &v1.WebhookReplay{}
	if err := r.Get(ctx, req.NamespacedName, rp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !rp.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, rp)
	}
	if !controllerutil.ContainsFinalizer(rp, ReplayFinalizer) {
		patch := client.MergeFrom(rp.DeepCopy())
		controllerutil.AddFinalizer(rp, ReplayFinalizer)
		if err := r.Patch(ctx, rp, patch, client.FieldOwner(FieldOwner)); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}
	if rp.Status.CompletionTime != nil {
		return r.expire(ctx, rp)
	}
	before := rp.Status.DeepCopy()
	var result ctrl.Result
	var err error
	if rp.Status.StartTime == nil {
		result, err = r.start(ctx, rp)
	} else {
		result, err = r.follow(ctx, rp)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	rp.Status.ObservedGeneration = rp.Generation
	if !equality.Semantic.DeepEqual(before, &rp.Status) {
		if err := r.Status().Update(ctx, rp, client.FieldOwner(FieldOwner)); err != nil {
			if apierrors.IsConflict(err) {
				return ctrl.Result{RequeueAfter: time.Second}, nil
			}
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		r.announce(rp, before)
	}
	if rp.Status.CompletionTime != nil {
		return ctrl.Result{RequeueAfter: ttl(rp)}, nil
	}
	return result, nil
}

// start checks the endpoint, selects the events and, unless the
// selection is refused or a dry run, copies them to the replay stream.
func (r *WebhookReplayReconciler) start(ctx context.Context, rp *v1.WebhookReplay) (ctrl.Result, error) {
	ep := &v1.WebhookEndpoint{}
	err := r.Get(ctx, types.NamespacedName{Namespace: rp.Namespace, Name: rp.Spec.Endpoint}, ep)
	if apierrors.IsNotFound(err) {
		rp.Status.Phase = v1.ReplayPending
		stall(rp, v1.ReasonEndpointMissing, fmt.Sprintf("WebhookEndpoint %q does not exist in namespace %s; the replay starts when it does", rp.Spec.Endpoint, rp.Namespace))
		return ctrl.Result{}, nil // the endpoint's creation wakes it
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading the endpoint: %w", err)
	}
	sel, err := r.selectEvents(ctx, rp, ep)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("selecting the replay's events: %w", err)
	}
	limit := int(rp.Spec.Limit)
	if limit <= 0 {
		limit = v1.DefaultReplayLimit
	}
	now := metav1.Now()
	if sel.count > limit {
		count := fmt.Sprintf("%d", sel.count)
		if sel.count >= countCap {
			count = fmt.Sprintf("more than %d", countCap-1)
		}
		rp.Status.Phase, rp.Status.Matched = v1.ReplayFailed, int32(sel.count)
		rp.Status.CompletionTime = &now
		stall(rp, v1.ReasonLimitExceeded, fmt.Sprintf("the selection matches %s events, more than spec.limit %d; nothing was sent: narrow the selection, or create a replay with a higher limit (at most %d)", count, limit, v1.MaxReplayLimit))
		return ctrl.Result{}, nil
	}
	copies := 0
	if !rp.Spec.DryRun {
		if err := r.copyEvents(ctx, rp, sel.events); err != nil {
			// A full replay stream, say: the replay says so, and retries.
			rp.Status.Phase = v1.ReplayPending
			setReplayCondition(rp, v1.ReconcilingCondition, metav1.ConditionTrue, v1.ReasonReplayRefused, err.Error())
			setReplayCondition(rp, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonReplayRefused, err.Error())
			ctrl.LoggerFrom(ctx).Error(err, "copying the replay's events; retrying")
			return ctrl.Result{RequeueAfter: 10 * time.Second}, nil
		}
		if copies, err = r.countCopies(ctx, rp); err != nil {
			return ctrl.Result{}, err
		}
	}
	rp.Status.StartTime = &now
	rp.Status.Matched = int32(len(sel.events))
	rp.Status.Events = nil
	for _, s := range sel.events {
		if s.skip != "" {
			rp.Status.Skipped++
		}
		if len(sel.events) <= v1.MaxReplayEventsListed {
			line := v1.ReplayedEvent{ID: s.id, Sequence: int64(s.seq), Outcome: v1.ReplayOutcomePending}
			switch {
			case s.skip != "":
				line.Outcome, line.Reason = v1.ReplayOutcomeSkipped, s.skip
			case rp.Spec.DryRun:
				line.Outcome = v1.ReplayOutcomeWouldSend
			}
			rp.Status.Events = append(rp.Status.Events, line)
		}
	}
	// What this pass skipped may have been copied by an earlier one that
	// crashed: the copies in the stream are what the replay waits for.
	rp.Status.Matched = max(rp.Status.Matched, int32(copies)+rp.Status.Skipped)
	if rp.Spec.DryRun {
		rp.Status.Phase, rp.Status.CompletionTime = v1.ReplaySucceeded, &now
		finish(rp, metav1.ConditionTrue, v1.ReasonDryRun, fmt.Sprintf("dry run: %d events would be sent, %d skipped; nothing was sent", rp.Status.Matched-rp.Status.Skipped, rp.Status.Skipped))
		return ctrl.Result{}, nil
	}
	return r.follow(ctx, rp)
}

// follow counts the outcomes the dispatcher recorded, and finishes the
// replay when every copied event has a final one.
func (r *WebhookReplayReconciler) follow(ctx context.Context, rp *v1.WebhookReplay) (ctrl.Result, error) {
	outcomes, err := r.replayOutcomes(ctx, rp)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("counting the replay's outcomes: %w", err)
	}
	s := &rp.Status
	s.Sent, s.Delivered, s.Superseded, s.Failed = 0, 0, 0, 0
	final := int32(0)
	for _, o := range outcomes {
		if o.Attempts > 0 {
			s.Sent++
		}
		switch o.Outcome {
		case dispatcher.OutcomeDelivered:
			s.Delivered++
		case dispatcher.OutcomeSuperseded:
			s.Superseded++
		case dispatcher.OutcomeDead:
			s.Failed++
		}
		if o.Final() {
			final++
		}
	}
	for i := range s.Events {
		line := &s.Events[i]
		if o, ok := outcomes[uint64(line.Sequence)]; ok && line.Outcome != v1.ReplayOutcomeSkipped {
			line.Outcome, line.Code, line.Reason = replayLine(o.Outcome), int32(o.StatusCode), o.Reason
		}
	}
	copies := s.Matched - s.Skipped
	ep := &v1.WebhookEndpoint{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: rp.Namespace, Name: rp.Spec.Endpoint}, ep); apierrors.IsNotFound(err) && final < copies {
		// Deleted mid-replay: what is left is not sent, to it or to an
		// endpoint created later under its name.
		if err := purgeCopies(ctx, r.JS, rp.Namespace, rp.Spec.Endpoint, string(rp.UID)); err != nil {
			return ctrl.Result{}, err
		}
		now := metav1.Now()
		s.Phase, s.CompletionTime = v1.ReplayFailed, &now
		s.Failed += copies - final
		stall(rp, v1.ReasonEndpointMissing, fmt.Sprintf("WebhookEndpoint %q was deleted mid-replay: %d of %d events were not sent", rp.Spec.Endpoint, copies-final, copies))
		return ctrl.Result{}, nil
	} else if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("reading the endpoint: %w", err)
	}
	if final < copies {
		s.Phase = v1.ReplayRunning
		msg := fmt.Sprintf("%d of %d events finished (%d delivered, %d superseded, %d failed), %d skipped, at most %d/s", final, copies, s.Delivered, s.Superseded, s.Failed, s.Skipped, rp.Spec.Rate)
		apimeta.RemoveStatusCondition(&s.Conditions, v1.StalledCondition)
		setReplayCondition(rp, v1.ReconcilingCondition, metav1.ConditionTrue, v1.ReasonReplayRunning, msg)
		setReplayCondition(rp, v1.ReadyCondition, metav1.ConditionFalse, v1.ReasonReplayRunning, msg)
		return ctrl.Result{RequeueAfter: r.Poll}, nil
	}
	// Done: the copies are needed no more, and would hold the stream's
	// budget for a week. The outcomes stay until the replay goes.
	if err := purgeCopies(ctx, r.JS, rp.Namespace, rp.Spec.Endpoint, string(rp.UID)); err != nil {
		return ctrl.Result{}, err
	}
	now := metav1.Now()
	s.CompletionTime = &now
	msg := fmt.Sprintf("%d delivered, %d superseded, %d failed, %d skipped of %d matched", s.Delivered, s.Superseded, s.Failed, s.Skipped, s.Matched)
	switch {
	case s.Failed > 0 && s.Failed == copies:
		s.Phase = v1.ReplayFailed
		finish(rp, metav1.ConditionFalse, v1.ReasonReplayFailed, msg)
	case s.Failed > 0:
		s.Phase = v1.ReplayPartiallyFailed
		finish(rp, metav1.ConditionFalse, v1.ReasonReplayPartial, msg)
	case s.Matched == 0:
		s.Phase = v1.ReplaySucceeded
		finish(rp, metav1.ConditionTrue, v1.ReasonNothingMatched, "the selection matches no events; nothing was sent")
	default:
		s.Phase = v1.ReplaySucceeded
		finish(rp, metav1.ConditionTrue, v1.ReasonReplaySucceeded, msg)
	}
	return ctrl.Result{}, nil
}

func replayLine(outcome string) string {
	switch outcome {
	case dispatcher.OutcomeDelivered:
		return v1.ReplayOutcomeDelivered
	case dispatcher.OutcomeSuperseded:
		return v1.ReplayOutcomeSuperseded
	case dispatcher.OutcomeDead:
		return v1.ReplayOutcomeFailed
	}
	return v1.ReplayOutcomeRetry
}

// expire deletes a finished replay once its TTL has passed.
func (r *WebhookReplayReconciler) expire(ctx context.Context, rp *v1.WebhookReplay) (ctrl.Result, error) {
	if left := ttl(rp); left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	if err := r.Delete(ctx, rp, client.Preconditions{UID: &rp.UID}); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("deleting the finished replay: %w", err)
	}
	return ctrl.Result{}, nil
}

// ttl is how long a finished replay has left.
func ttl(rp *v1.WebhookReplay) time.Duration {
	secs := int32(v1.DefaultReplayTTL)
	if rp.Spec.TTLSecondsAfterFinished != nil {
		secs = *rp.Spec.TTLSecondsAfterFinished
	}
	return time.Until(rp.Status.CompletionTime.Add(time.Duration(secs) * time.Second))
}

func (r *WebhookReplayReconciler) reconcileDelete(ctx context.Context, rp *v1.WebhookReplay) error {
	if !controllerutil.ContainsFinalizer(rp, ReplayFinalizer) {
		return nil
	}
	if err := r.purgeReplay(ctx, rp); err != nil {
		return err
	}
	patch := client.MergeFrom(rp.DeepCopy())
	controllerutil.RemoveFinalizer(rp, ReplayFinalizer)
	if err := r.Patch(ctx, rp, patch, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

// announce records an Event when the replay started, finished or stalled.
func (r *WebhookReplayReconciler) announce(rp *v1.WebhookReplay, before *v1.WebhookReplayStatus) {
	if r.Recorder == nil {
		return
	}
	s := &rp.Status
	stalled := apimeta.FindStatusCondition(s.Conditions, v1.StalledCondition)
	wasStalled := apimeta.FindStatusCondition(before.Conditions, v1.StalledCondition)
	switch {
	case stalled != nil && (wasStalled == nil || wasStalled.Reason != stalled.Reason):
		r.Recorder.Eventf(rp, nil, corev1.EventTypeWarning, stalled.Reason, "Replay", "%s", stalled.Message)
	case s.CompletionTime != nil && before.CompletionTime == nil:
		kind := corev1.EventTypeNormal
		if s.Failed > 0 {
			kind = corev1.EventTypeWarning
		}
		ready := apimeta.FindStatusCondition(s.Conditions, v1.ReadyCondition)
		r.Recorder.Eventf(rp, nil, kind, "Replay"+string(s.Phase), "Replay", "%s", ready.Message)
	}
	if s.StartTime != nil && before.StartTime == nil && !rp.Spec.DryRun {
		r.Recorder.Eventf(rp, nil, corev1.EventTypeNormal, "ReplayStarted", "Replay",
			"%d events matched, %d skipped; sending to %s at most %d/s", s.Matched, s.Skipped, rp.Spec.Endpoint, rp.Spec.Rate)
	}
}

func setReplayCondition(rp *v1.WebhookReplay, typ string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&rp.Status.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: rp.Generation})
}

// stall marks a replay that cannot go on without a person.
func stall(rp *v1.WebhookReplay, reason, msg string) {
	apimeta.RemoveStatusCondition(&rp.Status.Conditions, v1.ReconcilingCondition)
	setReplayCondition(rp, v1.StalledCondition, metav1.ConditionTrue, reason, msg)
	setReplayCondition(rp, v1.ReadyCondition, metav1.ConditionFalse, reason, msg)
}

// finish sets the conditions of a replay that has ended.
func finish(rp *v1.WebhookReplay, ready metav1.ConditionStatus, reason, msg string) {
	apimeta.RemoveStatusCondition(&rp.Status.Conditions, v1.ReconcilingCondition)
	apimeta.RemoveStatusCondition(&rp.Status.Conditions, v1.StalledCondition)
	setReplayCondition(rp, v1.ReadyCondition, ready, reason, msg)
}
