// Package controller reconciles Herald's custom resources: WebhookEndpoints
// into JetStream consumers and dispatchers, delivery health back into
// their status, and RetryPolicies into their usage counts.
package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/streams"
	heraldevents "github.com/herald-dev/herald/pkg/events"
)

const (
	// ConsumerFinalizer deletes an endpoint's JetStream consumer with it.
	ConsumerFinalizer = "webhooks.herald.dev/consumer"
	// FieldOwner names the operator in managedFields.
	FieldOwner = "herald-operator"
)

// DispatchMode says where deliveries run.
type DispatchMode string

const (
	// DispatchInProcess runs the dispatcher inside the manager, for every
	// namespace (local development and tests).
	DispatchInProcess DispatchMode = "in-process"
	// DispatchDeployment runs a dispatcher Deployment per namespace that
	// has endpoints (production).
	DispatchDeployment DispatchMode = "deployment"
)

// Defaults of the reconciler's tunables.
const (
	DefaultResyncInterval         = 15 * time.Second
	DefaultMinStatusWriteInterval = 5 * time.Second
	DefaultStatusWriteBudget      = 80 // status writes a second that change no condition, all endpoints together
	DefaultQuietResyncBudget      = 50 // periodic passes a second over quiet endpoints, all together

	endpointWorkers       = 4 // concurrent passes (of different endpoints)
	DefaultCleanupTimeout = 5 * time.Second
)

// WebhookEndpointReconciler keeps each endpoint's JetStream consumer in
// place and writes its delivery health into status.
type WebhookEndpointReconciler struct {
	client.Client
	// APIReader reads Secrets' data uncached (only their metadata is
	// watched, so the manager never holds every Secret in memory).
	APIReader client.Reader
	JS        jetstream.JetStream
	Recorder  events.EventRecorder
	Mode      DispatchMode

	// ResyncInterval is the periodic pass that repairs consumer drift and
	// refreshes backlog and lag.
	ResyncInterval time.Duration
	// QuietResyncBudget bounds the periodic passes of quiet endpoints
	// (Ready, no backlog, no failures) together, per second: with more of
	// them than it covers at ResyncInterval, their interval stretches.
	// Each pass is a few NATS requests and a Secret read, so 10,000 idle
	// endpoints at 15 s would be thousands a second doing nothing.
	QuietResyncBudget float64
	// MinStatusWriteInterval bounds status writes that change no condition.
	MinStatusWriteInterval time.Duration
	// StatusWriteBudget bounds those writes of all endpoints together, per
	// second: with more endpoints than it covers at MinStatusWriteInterval,
	// each endpoint's interval stretches (see spread).
	StatusWriteBudget float64
	// CleanupTimeout bounds the finalizer's NATS calls.
	CleanupTimeout time.Duration
	// HealthEvents, when set, wakes endpoints whose health record changed
	// (see HealthWatcher), so status follows deliveries within seconds.
	HealthEvents <-chan event.TypedGenericEvent[*v1.WebhookEndpoint]
	// EventsRetention is how long the events stream keeps an event (the
	// manager's --events-max-age; default streams.DefaultLimits()). Status
	// measures the oldest waiting event and the retry window against it.
	EventsRetention time.Duration
	// Streams are the limits a namespace's streams are created with when
	// its first endpoint arrives (the manager's flags); zero means
	// streams.DefaultLimits().
	Streams streams.Limits
	// LookupNetIP resolves an endpoint's URL hostname for the egress
	// check (see reconcileEgress); nil means the system resolver. Tests
	// set a fixed table.
	LookupNetIP HostLookup
	// Egress is the dispatchers' egress guard (the manager's
	// --egress-allow and --egress-deny): an endpoint whose URL is an
	// address it refuses is Stalled with URLRefused. Nil means the
	// default denied set.
	Egress *egress.Guard
	// Pool is the shared dispatcher pool's Deployment (default
	// DefaultPool()): in Deployment mode, the endpoints of a namespace
	// labelled DispatcherLabel=shared are Ready with it.
	Pool types.NamespacedName

	secrets *secretReader

	health sync.Map // namespace -> jetstream.KeyValue: its health bucket, opened once

	mu        sync.Mutex
	lastWrite map[types.NamespacedName]time.Time
}

// RBAC, and what each rule is for:
// endpoints: read, add/remove the finalizer (patch), write status.
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookendpoints,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookendpoints/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=webhookendpoints/finalizers,verbs=update
// policies: resolved for endpoints; their status counts users.
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=retrypolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=webhooks.herald.dev,resources=retrypolicies/status,verbs=get;update;patch
// secrets: get to validate (and, in-process, sign with) the referenced
// ones; list/watch as metadata only, to notice creation and rotation.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// events: DeliveryFailing, Lagging, SecretMissing, ...
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller. SetupIndexes must have run.
func (r *WebhookEndpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.ResyncInterval <= 0 {
		r.ResyncInterval = DefaultResyncInterval
	}
	if r.MinStatusWriteInterval <= 0 {
		r.MinStatusWriteInterval = DefaultMinStatusWriteInterval
	}
	if r.StatusWriteBudget <= 0 {
		r.StatusWriteBudget = DefaultStatusWriteBudget
	}
	if r.QuietResyncBudget <= 0 {
		r.QuietResyncBudget = DefaultQuietResyncBudget
	}
	if r.CleanupTimeout <= 0 {
		r.CleanupTimeout = DefaultCleanupTimeout
	}
	if r.Mode == "" {
		r.Mode = DispatchDeployment
	}
	if r.Streams == (streams.Limits{}) {
		r.Streams = streams.DefaultLimits()
	}
	if r.EventsRetention <= 0 {
		r.EventsRetention = r.Streams.EventsMaxAge
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	r.secrets = newSecretReader(r.APIReader, mgr.GetClient())
	r.lastWrite = map[types.NamespacedName]time.Time{}

	b := ctrl.NewControllerManagedBy(mgr).
		Named("webhookendpoint").
		// A pass mostly waits on NATS and the API server: one at a time,
		// 10,000 new endpoints took over five minutes to be Ready.
		WithOptions(crcontroller.Options{MaxConcurrentReconciles: endpointWorkers}).
		// Status-only updates (ours) must not wake the controller again.
		For(&v1.WebhookEndpoint{}, builder.WithPredicates(specOrLifecycleChanged())).
		WatchesMetadata(&metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}},
			handler.EnqueueRequestsFromMapFunc(endpointsReferencing(mgr.GetClient(), SecretRefIndex))).
		Watches(&v1.RetryPolicy{},
			handler.EnqueueRequestsFromMapFunc(endpointsReferencing(mgr.GetClient(), PolicyRefIndex)),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	if r.Mode == DispatchDeployment {
		if r.Pool == (types.NamespacedName{}) {
			r.Pool = DefaultPool()
		}
		b = b.Watches(&appsv1.Deployment{},
			handler.EnqueueRequestsFromMapFunc(endpointsOfDispatcher(mgr.GetClient())),
			builder.WithPredicates(isDispatcherObject())).
			Watches(&appsv1.Deployment{},
				handler.EnqueueRequestsFromMapFunc(endpointsOfSharedNamespaces(mgr.GetClient())),
				builder.WithPredicates(isPool(r.Pool))).
			WatchesMetadata(namespaceMeta(), handler.EnqueueRequestsFromMapFunc(endpointsOfNamespace(mgr.GetClient())),
				builder.WithPredicates(dispatcherLabelChanged()))
	}
	if r.HealthEvents != nil {
		b = b.WatchesRawSource(source.Channel(r.HealthEvents, &handler.TypedEnqueueRequestForObject[*v1.WebhookEndpoint]{}))
	}
	return b.Complete(r)
}

// specOrLifecycleChanged passes creates, deletes, spec changes (generation)
// and the start of deletion, and drops status-only updates.
func specOrLifecycleChanged() predicate.Predicate {
	return predicate.Or(predicate.GenerationChangedPredicate{}, predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero()
		},
	})
}

// Reconcile runs one pass: observe, decide, act, summarise status in one
// deferred patch.
func (r *WebhookEndpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	ep := &v1.WebhookEndpoint{}
	if err := r.Get(ctx, req.NamespacedName, ep); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading webhookendpoint: %w", err)
	}
	ctx = ctrl.LoggerInto(ctx, ctrl.LoggerFrom(ctx).WithValues("webhookEndpoint", klog.KObj(ep)))

	if !ep.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, ep)
	}
	// Finalizer first: nothing exists in NATS before it is persisted, so
	// a deletion racing the creation cannot leak a consumer.
	if !controllerutil.ContainsFinalizer(ep, ConsumerFinalizer) {
		patch := client.MergeFrom(ep.DeepCopy())
		controllerutil.AddFinalizer(ep, ConsumerFinalizer)
		if err := r.Patch(ctx, ep, patch, client.FieldOwner(FieldOwner)); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	orig := ep.DeepCopy()
	obs := r.newObservation()
	defer func() {
		summarise(ep, obs)
		res, err := r.patchStatus(ctx, orig, ep, obs)
		retErr = errors.Join(retErr, err)
		if retErr == nil {
			result = res
		}
	}()
	return ctrl.Result{}, r.runSteps(ctx, ep, obs)
}

// newObservation starts a pass's observation with what the reconciler
// knows without asking anyone.
func (r *WebhookEndpointReconciler) newObservation() *observation {
	return &observation{Now: time.Now(), Retention: r.EventsRetention}
}

// runSteps runs the pass's steps in order. Each step fills obs; a Stalled
// problem is recorded there and the later steps still run (the consumer
// keeps events queued while a person fixes a Secret, and the backlog stays
// visible).
func (r *WebhookEndpointReconciler) runSteps(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation) error {
	var state passState
	steps := []func(context.Context, *v1.WebhookEndpoint, *observation, *passState) error{
		r.reconcileConsumer,
		r.reconcileReferences,
		r.reconcileEgress,
		r.reconcileDispatcher,
		r.reconcileDelivery,
	}
	var errs []error
	for _, step := range steps {
		if err := step(ctx, ep, obs, &state); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// passState carries what one step hands the next.
type passState struct {
	info *jetstream.ConsumerInfo
}

// reconcileConsumer creates or repairs the endpoint's durable consumer,
// and replaces one an earlier endpoint of the same name left behind.
// Sets obs.Consumer; refused eventTypes make the endpoint Stalled; a NATS
// error makes it Ready=False NATSUnavailable and is retried.
func (r *WebhookEndpointReconciler) reconcileConsumer(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation, st *passState) error {
	want, err := desiredConsumer(ep)
	if s, ok := asStalled(err); ok {
		obs.Stalled = s
		return nil
	}
	known := ep.Status.Consumer != ""
	info, action, err := ensureConsumer(ctx, r.JS, want, ep.Namespace, ep.Name, known)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// The namespace's first endpoint, or a NATS that lost its
		// storage: the namespace's streams come first.
		if err = streams.EnsureNamespace(ctx, r.JS, r.Streams, ep.Namespace); err == nil {
			info, action, err = ensureConsumer(ctx, r.JS, want, ep.Namespace, ep.Name, known)
		}
	}
	if err == nil {
		err = ensureReplayConsumer(ctx, r.JS, r.Streams, ep)
	}
	if err != nil {
		obs.NATSErr = err
		return err
	}
	st.info = info
	obs.Consumer = info.Name
	switch {
	case action == consumerCreated && known:
		// It existed before: someone or something deleted it.
		r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, "ConsumerRecreated", "Reconcile",
			"JetStream consumer %s was missing and has been recreated; events published while it was gone were not queued for this endpoint", info.Name)
	case action == consumerReplaced:
		r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, "ConsumerReplaced", "Reconcile",
			"JetStream consumer %s belonged to an earlier endpoint of this name whose cleanup did not run; it was deleted with that endpoint's version and health records and created afresh for this one", info.Name)
		ctrl.LoggerFrom(ctx).Info("consumer reconciled", "consumer", info.Name, "action", string(action))
	case action != consumerUnchanged:
		ctrl.LoggerFrom(ctx).Info("consumer reconciled", "consumer", info.Name, "action", string(action))
	}
	return nil
}

// reconcileReferences resolves the signing Secret and the RetryPolicy.
// Sets obs.Stalled (SecretMissing, SecretMalformed, HeaderSecretMissing,
// HeaderSecretInvalid, RetryPolicyMissing),
// obs.APIErr when a read failed transiently (Ready=Unknown), and the retry
// window status measures the backlog and the retention against.
func (r *WebhookEndpointReconciler) reconcileReferences(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation, _ *passState) error {
	refs, err := resolveReferences(ctx, r.secrets, r.Client, ep)
	if s, ok := asStalled(err); ok {
		if obs.Stalled == nil {
			obs.Stalled = s
		}
		return nil
	}
	if err != nil {
		obs.APIErr = err
		return err
	}
	obs.RetryWindow = dispatcher.PolicyFromSpec(refs.Policy).Window
	obs.WindowSource = "the default retry policy"
	if ref := ep.Spec.RetryPolicyRef; ref != nil {
		obs.WindowSource = fmt.Sprintf("RetryPolicy %q", ref.Name)
	}
	return nil
}

// reconcileDispatcher checks that something delivers this endpoint's
// events: always true in-process; the namespace's Deployment otherwise
// (created by DispatcherDeploymentReconciler). Sets obs.DispatcherReady.
func (r *WebhookEndpointReconciler) reconcileDispatcher(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation, _ *passState) error {
	if r.Mode == DispatchInProcess {
		obs.DispatcherReady, obs.DispatcherMessage = true, "dispatched by the manager (in-process)"
		return nil
	}
	shared, err := SharedNamespace(ctx, r.Client, ep.Namespace)
	if err != nil {
		obs.APIErr = errors.Join(obs.APIErr, err)
		return err
	}
	key, what := types.NamespacedName{Namespace: ep.Namespace, Name: DispatcherName}, "the dispatcher Deployment "+DispatcherName
	if shared {
		key, what = r.Pool, "the shared dispatcher pool "+r.Pool.String()
	}
	var d appsv1.Deployment
	err = r.Get(ctx, key, &d)
	if apierrors.IsNotFound(err) {
		obs.DispatcherMessage = "waiting for " + what
		return nil
	}
	if err != nil {
		err = fmt.Errorf("reading dispatcher deployment: %w", err)
		obs.APIErr = errors.Join(obs.APIErr, err)
		return err
	}
	obs.DispatcherReady, obs.DispatcherMessage = dispatcherAvailable(&d, what)
	return nil
}

// reconcileDelivery reads the backlog from the consumer and the health
// record the dispatcher writes. Sets obs.Backlog and obs.Health.
func (r *WebhookEndpointReconciler) reconcileDelivery(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation, st *passState) error {
	var errs []error
	if st.info != nil {
		b, err := observeBacklog(ctx, r.JS, st.info)
		if err != nil {
			errs = append(errs, err)
		} else {
			obs.Backlog = &b
		}
	}
	kv, err := r.healthKV(ctx, ep.Namespace)
	if err == nil {
		obs.Health, err = dispatcher.ReadHealth(ctx, kv, ep.Namespace, ep.Name)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("reading delivery health: %w", err))
	} else {
		obs.HealthKnown = true
	}
	exportEndpointMetrics(ep, obs)
	return errors.Join(errs...)
}

// patchStatus writes status when it changed, within the write budget, and
// emits the transition Events once the write succeeded.
func (r *WebhookEndpointReconciler) patchStatus(ctx context.Context, orig, ep *v1.WebhookEndpoint, obs *observation) (ctrl.Result, error) {
	key := client.ObjectKeyFromObject(ep)
	r.mu.Lock()
	last := r.lastWrite[key]
	endpoints := len(r.lastWrite)
	r.mu.Unlock()
	interval := spread(r.MinStatusWriteInterval, r.StatusWriteBudget, endpoints)
	requeue := ctrl.Result{RequeueAfter: r.ResyncInterval}
	if quiet(&ep.Status) {
		requeue.RequeueAfter = spread(r.ResyncInterval, r.QuietResyncBudget, endpoints)
	}
	write, wait := writeDecision(&orig.Status, &ep.Status, last, obs.Now, interval)
	if wait > 0 && wait < requeue.RequeueAfter {
		requeue.RequeueAfter = wait
	}
	if !write {
		return requeue, nil
	}
	// A full update, not a merge patch: a merge patch of a nested struct
	// sends only its changed fields, which leaves absent fields absent and
	// fails the schema (totals' fields are required), and cannot clear
	// lastFailure. The resourceVersion check makes a racing spec change a
	// conflict, and that pass is simply run again.
	if err := r.Status().Update(ctx, ep, client.FieldOwner(FieldOwner)); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return ctrl.Result{}, nil
		case apierrors.IsConflict(err):
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, fmt.Errorf("updating status: %w", err)
	}
	statusWrites.Inc()
	r.mu.Lock()
	r.lastWrite[key] = obs.Now
	r.mu.Unlock()
	for _, e := range transitionEvents(&orig.Status, &ep.Status) {
		r.Recorder.Eventf(ep, nil, e.Type, e.Reason, "Deliver", "%s", e.Note)
	}
	return requeue, nil
}

// reconcileDelete deletes the consumer, the version records and the
// health record, bounded by CleanupTimeout: when NATS is unreachable the
// finalizer is removed anyway and a Warning says what was left behind, so
// deletion never hangs. (A later endpoint of the same name does not
// inherit what is left: see ensureConsumer.)
func (r *WebhookEndpointReconciler) reconcileDelete(ctx context.Context, ep *v1.WebhookEndpoint) error {
	if !controllerutil.ContainsFinalizer(ep, ConsumerFinalizer) {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, r.CleanupTimeout)
	defer cancel()
	err := deleteConsumer(cctx, r.JS, ep.Namespace, ep.Name)
	if err == nil {
		err = deleteReplayConsumer(cctx, r.JS, ep.Namespace, ep.Name)
	}
	if err == nil {
		// Unsent copies would go to a later endpoint of this name.
		err = purgeCopies(cctx, r.JS, ep.Namespace, ep.Name, "*")
	}
	if err == nil {
		// A later endpoint of the same name must not inherit old totals
		// or have its events superseded by old versions.
		err = purgeEndpointRecords(cctx, r.JS, ep.Namespace, ep.Name)
	}
	if err != nil {
		r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, "CleanupFailed", "Delete",
			"could not clean up NATS within %s (%v); removing the finalizer anyway: consumer %s on stream %s and the keys %s.* of buckets %s and %s may be left behind (an endpoint created again under this name replaces them)",
			r.CleanupTimeout, err, streams.ConsumerName(ep.Namespace, ep.Name), heraldevents.StreamName(ep.Namespace), streams.EndpointKey(ep.Namespace, ep.Name), streams.VersionsBucket(ep.Namespace), streams.HealthBucket(ep.Namespace))
	}
	patch := client.MergeFrom(ep.DeepCopy())
	controllerutil.RemoveFinalizer(ep, ConsumerFinalizer)
	if err := r.Patch(ctx, ep, patch, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	r.forget(client.ObjectKeyFromObject(ep))
	return nil
}

func (r *WebhookEndpointReconciler) forget(key types.NamespacedName) {
	r.mu.Lock()
	delete(r.lastWrite, key)
	r.mu.Unlock()
	forgetEndpointMetrics(key.Namespace, key.Name)
}

// healthKV opens a namespace's health bucket once; ensureConsumer made
// sure the namespace's buckets exist.
func (r *WebhookEndpointReconciler) healthKV(ctx context.Context, namespace string) (jetstream.KeyValue, error) {
	if kv, ok := r.health.Load(namespace); ok {
		return kv.(jetstream.KeyValue), nil
	}
	kv, err := r.JS.KeyValue(ctx, streams.HealthBucket(namespace))
	if err != nil {
		return nil, fmt.Errorf("opening key-value bucket %s: %w", streams.HealthBucket(namespace), err)
	}
	r.health.Store(namespace, kv)
	return kv, nil
}
