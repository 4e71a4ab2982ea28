package controller

import (
	"context"
	"fmt"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	metaac "k8s.io/client-go/applyconfigurations/meta/v1"
	rbacac "k8s.io/client-go/applyconfigurations/rbac/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// PoolName names the shared dispatcher pool's Deployment and
// ServiceAccount (in the operator's namespace) and, in each namespace it
// serves, the Role and RoleBinding that let it act there.
const PoolName = "herald-dispatcher-pool"

// DefaultPool is where the shared pool runs unless the manager is told
// otherwise: beside the operator in herald-system.
func DefaultPool() types.NamespacedName {
	return types.NamespacedName{Namespace: "herald-system", Name: PoolName}
}

// SharedNamespace says whether a namespace chose the shared dispatcher
// pool (DispatcherLabel). It reads the namespace's metadata only, from
// the cache when c is the manager's client.
func SharedNamespace(ctx context.Context, c client.Reader, namespace string) (bool, error) {
	ns := namespaceMeta()
	if err := c.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
		return false, client.IgnoreNotFound(fmt.Errorf("reading namespace %s: %w", namespace, err))
	}
	return ns.Labels[v1.DispatcherLabel] == v1.DispatcherShared, nil
}

// namespaceMeta is a Namespace's metadata, as the watches below see it.
func namespaceMeta() *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}}
}

// dispatcherLabelChanged passes a Namespace's creation and a change of
// its DispatcherLabel, and nothing else a namespace goes through.
func dispatcherLabelChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectOld.GetLabels()[v1.DispatcherLabel] != e.ObjectNew.GetLabels()[v1.DispatcherLabel]
		},
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// endpointsOfNamespace wakes every endpoint of a namespace.
func endpointsOfNamespace(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		ns := &metav1.PartialObjectMetadata{}
		ns.SetNamespace(o.GetName())
		return endpointsOfDispatcher(c)(ctx, ns)
	}
}

// poolRole lets the shared pool act for a namespace: get the Secrets its
// endpoints name (as the namespace's own dispatcher may) and mint tokens
// of the namespace's dispatcher ServiceAccount, its NATS identity there.
func poolRole(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, secrets []string) *rbacac.RoleApplyConfiguration {
	return rbacac.Role(PoolName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithRules(
			rbacac.PolicyRule().WithAPIGroups("").WithResources("secrets").
				WithResourceNames(secrets...).WithVerbs("get"),
			rbacac.PolicyRule().WithAPIGroups("").WithResources("serviceaccounts/token").
				WithResourceNames(DispatcherName).WithVerbs("create"),
		)
}

func poolRoleBinding(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, pool types.NamespacedName) *rbacac.RoleBindingApplyConfiguration {
	return rbacac.RoleBinding(PoolName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithRoleRef(rbacac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("Role").WithName(PoolName)).
		WithSubjects(rbacac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(pool.Name).WithNamespace(pool.Namespace))
}

// isPool matches the shared pool's Deployment.
func isPool(pool types.NamespacedName) predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == pool.Namespace && o.GetName() == pool.Name
	})
}

// endpointsOfSharedNamespaces wakes every endpoint served by the pool
// (their Ready condition depends on its Deployment).
func endpointsOfSharedNamespaces(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, _ client.Object) []reconcile.Request {
		list := &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "NamespaceList"}}
		var reqs []reconcile.Request
		if err := c.List(ctx, list, client.MatchingLabels{v1.DispatcherLabel: v1.DispatcherShared}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "listing the namespaces of the shared pool")
			return nil
		}
		for i := range list.Items {
			reqs = append(reqs, endpointsOfNamespace(c)(ctx, &list.Items[i])...)
		}
		return reqs
	}
}
