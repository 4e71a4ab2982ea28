package controller

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// RetryPolicyReconciler validates RetryPolicies and counts their users.
type RetryPolicyReconciler struct {
	client.Client
}

// SetupWithManager registers the controller. SetupIndexes must have run.
func (r *RetryPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
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

// Reconcile sets Ready, status.endpoints and observedGeneration.
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
	setPolicyStatus(p, int32(len(users.Items)))
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

// setPolicyStatus is the pure status summary of a RetryPolicy.
func setPolicyStatus(p *v1.RetryPolicy, endpoints int32) {
	p.Status.Endpoints = endpoints
	p.Status.ObservedGeneration = p.Generation
	cond := metav1.Condition{Type: v1.ReadyCondition, Status: metav1.ConditionTrue, Reason: v1.ReasonReady,
		Message: "valid", ObservedGeneration: p.Generation}
	if msg := validatePolicy(&p.Spec); msg != "" {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, v1.ReasonInvalid, msg
	}
	apimeta.SetStatusCondition(&p.Status.Conditions, cond)
}

// validatePolicy repeats, for objects that predate the CRD's CEL rules,
// the checks a dispatcher depends on; "" means valid.
func validatePolicy(s *v1.RetryPolicySpec) string {
	for i, d := range s.Schedule {
		if d.Duration <= 0 {
			return fmt.Sprintf("schedule[%d] must be greater than zero", i)
		}
	}
	if s.Window != nil && len(s.Schedule) > 0 && s.Window.Duration < s.Schedule[0].Duration {
		return fmt.Sprintf("window %s is shorter than the first retry delay %s", s.Window.Duration, s.Schedule[0].Duration)
	}
	return ""
}
