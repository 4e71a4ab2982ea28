package controller

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
)

// RetryPolicyReconciler validates RetryPolicies and counts their users.
type RetryPolicyReconciler struct {
	client.Client
	// EventsRetention is how long the events stream keeps an event (the
	// manager's --events-max-age; default streams.DefaultLimits()). A
	// policy whose window does not end RetentionMargin before it is
	// Stalled.
	EventsRetention time.Duration
}

// SetupWithManager registers the controller. SetupIndexes must have run.
func (r *RetryPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.EventsRetention <= 0 {
		r.EventsRetention = streams.DefaultLimits().EventsMaxAge
	}
	// An endpoint that switches policy maps to both: the handler maps the
	// old and the new object of an update.
	toPolicy := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		ep := o.(*v1.WebhookEndpoint)
		if ep.Spec.RetryPolicyRef == nil {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ep.Namespace, Name: ep.Spec.RetryPolicyRef.Name}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("retrypolicy").
		For(&v1.RetryPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1.WebhookEndpoint{}, toPolicy).
		Complete(r)
}

// Reconcile sets Ready, Stalled, status.endpoints and observedGeneration.
func (r *RetryPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &v1.RetryPolicy{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var users v1.WebhookEndpointList
	if err := r.List(ctx, &users, client.InNamespace(p.Namespace), client.MatchingFields{PolicyRefIndex: p.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing endpoints of retry policy: %w", err)
	}
	orig := p.DeepCopy()
	setPolicyStatus(p, int32(len(users.Items)), r.EventsRetention)
	if equality.Semantic.DeepEqual(orig.Status, p.Status) {
		return ctrl.Result{}, nil
	}
	if err := r.Status().Update(ctx, p, client.FieldOwner(FieldOwner)); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return ctrl.Result{}, nil
		case apierrors.IsConflict(err):
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, fmt.Errorf("updating retry policy status: %w", err)
	}
	return ctrl.Result{}, nil
}
