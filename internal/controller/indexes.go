package controller

import (
	"context"
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Field indexes on WebhookEndpoint. They turn "which endpoints use this
// Secret / RetryPolicy" into a cache lookup instead of a namespace scan.
const (
	// SecretRefIndex indexes endpoints by the Secrets they read:
	// spec.signingSecretRef.name and every spec.headersFrom secretKeyRef.name.
	SecretRefIndex = ".spec.secretNames"
	// PolicyRefIndex indexes endpoints by spec.retryPolicyRef.name.
	PolicyRefIndex = ".spec.retryPolicyRef.name"
)

// SetupIndexes registers the field indexes every reconciler of this package
// relies on. Call it once per manager, before the reconcilers' SetupWithManager.
func SetupIndexes(ctx context.Context, mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &v1.WebhookEndpoint{}, SecretRefIndex, func(o client.Object) []string {
		return referencedSecrets(o.(*v1.WebhookEndpoint))
	}); err != nil {
		return fmt.Errorf("indexing webhookendpoints by secret: %w", err)
	}
	if err := idx.IndexField(ctx, &v1.WebhookEndpoint{}, PolicyRefIndex, func(o client.Object) []string {
		ep := o.(*v1.WebhookEndpoint)
		if ep.Spec.RetryPolicyRef == nil || ep.Spec.RetryPolicyRef.Name == "" {
			return nil
		}
		return []string{ep.Spec.RetryPolicyRef.Name}
	}); err != nil {
		return fmt.Errorf("indexing webhookendpoints by retry policy: %w", err)
	}
	return nil
}

// endpointsReferencing maps a Secret or RetryPolicy to the endpoints of its
// namespace that name it. References are local (no namespace field in the
// API), so an object can only ever wake endpoints of its own namespace.
func endpointsReferencing(c client.Reader, index string) func(context.Context, client.Object) []reconcile.Request {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list v1.WebhookEndpointList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "listing endpoints by reference", "index", index, "object", client.ObjectKeyFromObject(o))
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: list.Items[i].Namespace, Name: list.Items[i].Name}})
		}
		return reqs
	}
}

// referencedSecrets are the names of the Secrets an endpoint reads, sorted
// and without duplicates: its signing Secret and its headersFrom Secrets.
func referencedSecrets(ep *v1.WebhookEndpoint) []string {
	var names []string
	if n := ep.Spec.SigningSecretRef.Name; n != "" {
		names = append(names, n)
	}
	for _, h := range ep.Spec.HeadersFrom {
		if n := h.SecretKeyRef.Name; n != "" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}
