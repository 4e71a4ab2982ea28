package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/streams"
)

// Dispatch is the part of *dispatcher.Dispatcher the reconciler drives.
type Dispatch interface {
	Upsert(ep dispatcher.Endpoint)
	Remove(namespace, name string)
}

// DefaultDispatchResync is how often the dispatch reconciler re-reads an
// endpoint's Secret when it cannot watch Secrets (the namespaced
// dispatcher's Role only allows `get` on the named ones): a rotated key
// reaches the dispatcher within this time.
const DefaultDispatchResync = 30 * time.Second

// DispatchReconciler feeds a Dispatcher: each WebhookEndpoint with its
// Secret and RetryPolicy resolved becomes an Upsert; a deleted or stalled
// endpoint becomes a Remove. The manager runs it in-process for every
// namespace; the dispatcher binary runs it for its own namespace.
type DispatchReconciler struct {
	client.Client
	// APIReader reads Secrets uncached.
	APIReader  client.Reader
	Dispatcher Dispatch
	// WatchSecrets watches Secrets' metadata to pick up rotations at once.
	// It needs list/watch on Secrets, which the manager has and the
	// namespaced dispatcher has not.
	WatchSecrets bool
	// Resync re-reads references periodically (DefaultDispatchResync).
	Resync time.Duration
	// Egress is the dispatcher's egress guard: an endpoint whose URL is an
	// address it refuses is stalled (URLRefused), so its events wait
	// rather than each being refused. Nil means the default denied set.
	Egress *egress.Guard
	// SharedOnly serves only the namespaces labelled DispatcherLabel=shared
	// (the shared dispatcher pool): a namespace that leaves the pool has
	// its endpoints removed here as its own Deployment takes over.
	SharedOnly bool

	secrets *secretReader
	mu      sync.Mutex
	applied map[types.NamespacedName]string
}

// SetupWithManager registers the controller. SetupIndexes must have run
// when WatchSecrets is set or RetryPolicies are watched.
func (r *DispatchReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Resync <= 0 {
		r.Resync = DefaultDispatchResync
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	var meta client.Reader
	if r.WatchSecrets {
		meta = mgr.GetClient()
	}
	r.secrets = newSecretReader(r.APIReader, meta)
	r.applied = map[types.NamespacedName]string{}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("dispatch").
		For(&v1.WebhookEndpoint{}, builder.WithPredicates(specOrLifecycleChanged())).
		Watches(&v1.RetryPolicy{},
			handler.EnqueueRequestsFromMapFunc(endpointsReferencing(mgr.GetClient(), PolicyRefIndex)),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	if r.SharedOnly {
		b = b.WatchesMetadata(namespaceMeta(), handler.EnqueueRequestsFromMapFunc(endpointsOfNamespace(mgr.GetClient())),
			builder.WithPredicates(dispatcherLabelChanged()))
	}
	if r.WatchSecrets {
		b = b.WatchesMetadata(&metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}},
			handler.EnqueueRequestsFromMapFunc(endpointsReferencing(mgr.GetClient(), SecretRefIndex)))
	}
	return b.Complete(r)
}

// Reconcile hands the endpoint's resolved configuration to the dispatcher.
func (r *DispatchReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	resync := ctrl.Result{}
	if !r.WatchSecrets {
		resync.RequeueAfter = r.Resync
	}
	ep := &v1.WebhookEndpoint{}
	if err := r.Get(ctx, req.NamespacedName, ep); err != nil {
		if apierrors.IsNotFound(err) {
			r.remove(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading webhookendpoint: %w", err)
	}
	if !ep.DeletionTimestamp.IsZero() {
		r.remove(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	if r.SharedOnly {
		shared, err := SharedNamespace(ctx, r.Client, ep.Namespace)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !shared {
			r.remove(req.NamespacedName)
			return ctrl.Result{}, nil
		}
	}
	if _, err := streams.FilterSubjects(ep.Namespace, ep.Spec.EventTypes); err != nil {
		// The endpoint controller reports it as Stalled.
		r.remove(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	refs, err := resolveReferences(ctx, r.secrets, r.Client, ep)
	if err == nil {
		err = urlRefused(egressOrDefault(r.Egress), ep.Spec.URL)
	}
	if s, ok := asStalled(err); ok {
		// Stop delivering rather than sign with a key that is gone; the
		// events wait in the stream until a person fixes it, and those
		// whose window ends meanwhile are dead-lettered as Expired.
		log.V(1).Info("endpoint stalled, not delivering", "webhookEndpoint", klog.KObj(ep), "reason", s.Reason)
		r.sweepOnly(ctx, ep)
		return resync, nil
	}
	if err != nil {
		// Transient: keep the running worker as it is.
		return ctrl.Result{}, err
	}
	cfg, err := dispatcher.EndpointFromSpec(ep.Namespace, ep.Name, &ep.Spec, refs.SecretData, refs.Headers, refs.Policy)
	if err != nil {
		r.sweepOnly(ctx, ep)
		return resync, nil
	}
	r.apply(ctx, ep, cfg, fmt.Sprintf("%s/%d/%s/%s/%s", ep.UID, ep.Generation, refs.SecretVersion, refs.HeaderSecretVersions, refs.PolicyVersion))
	return resync, nil
}

// sweepOnly hands the dispatcher a stalled endpoint that sends nothing but
// still dead-letters the events whose window ends (dispatcher.SweepOnly).
// Its window comes from its RetryPolicy when that can be read.
func (r *DispatchReconciler) sweepOnly(ctx context.Context, ep *v1.WebhookEndpoint) {
	var policy *v1.RetryPolicySpec
	version := "default"
	if ref := ep.Spec.RetryPolicyRef; ref != nil {
		var p v1.RetryPolicy
		if err := r.Get(ctx, types.NamespacedName{Namespace: ep.Namespace, Name: ref.Name}, &p); err == nil {
			policy, version = &p.Spec, p.ResourceVersion
		}
	}
	cfg := dispatcher.SweepOnly(ep.Namespace, ep.Name, &ep.Spec, policy)
	r.apply(ctx, ep, cfg, fmt.Sprintf("%s/%d/stalled/%s", ep.UID, ep.Generation, version))
}

// apply upserts cfg unless the same fingerprint was applied last.
func (r *DispatchReconciler) apply(ctx context.Context, ep *v1.WebhookEndpoint, cfg dispatcher.Endpoint, fingerprint string) {
	req := client.ObjectKeyFromObject(ep)
	r.mu.Lock()
	same := r.applied[req] == fingerprint
	r.applied[req] = fingerprint
	r.mu.Unlock()
	if !same {
		r.Dispatcher.Upsert(cfg)
		ctrl.LoggerFrom(ctx).V(1).Info("endpoint dispatched", "webhookEndpoint", klog.KObj(ep), "suspend", cfg.Suspend)
	}
}

func (r *DispatchReconciler) remove(key types.NamespacedName) {
	r.mu.Lock()
	_, known := r.applied[key]
	delete(r.applied, key)
	r.mu.Unlock()
	if known {
		r.Dispatcher.Remove(key.Namespace, key.Name)
	}
}
