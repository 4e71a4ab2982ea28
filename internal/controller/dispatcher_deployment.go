package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsac "k8s.io/client-go/applyconfigurations/apps/v1"
	coreac "k8s.io/client-go/applyconfigurations/core/v1"
	metaac "k8s.io/client-go/applyconfigurations/meta/v1"
	rbacac "k8s.io/client-go/applyconfigurations/rbac/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/natsauth"
)

// DispatcherName names every per-namespace dispatcher object: the
// Deployment, its ServiceAccount, Role and RoleBinding. NATS's auth
// callout knows the ServiceAccount by this name.
const DispatcherName = natsauth.DispatcherServiceAccount

// DefaultNATSCAConfigMap names the ConfigMap, in each tenant namespace,
// holding the CA bundle the dispatcher verifies NATS with.
const DefaultNATSCAConfigMap = "herald-nats-ca"

// Where the dispatcher container finds its NATS token and CA bundle.
const (
	natsTokenVolume = "nats-token"
	natsTokenDir    = "/var/run/secrets/herald.dev/nats"
	natsTokenKey    = "token"
	natsCAVolume    = "nats-ca"
	natsCADir       = "/etc/herald/nats-ca"
	natsCAKey       = "ca.crt"
	// The kubelet renews a projected token at 80% of its lifetime and the
	// dispatcher re-reads it at every reconnect.
	natsTokenExpirationSeconds = 3600
)

// Labels on the dispatcher objects. The manager's cache only holds objects
// with managedByLabel=managedByValue, so it never caches every Deployment
// or Role of the cluster.
const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "herald"
	nameLabel      = "app.kubernetes.io/name"
	componentLabel = "app.kubernetes.io/component"
)

// Ports of the dispatcher container.
const (
	DispatcherMetricsPort = 8080
	DispatcherHealthPort  = 8081
)

func dispatcherLabels() map[string]string {
	return map[string]string{nameLabel: DispatcherName, componentLabel: "dispatcher", managedByLabel: managedByValue}
}

// CacheByObject restricts the manager's cache of the kinds it creates per
// namespace to its own objects.
func CacheByObject() map[client.Object]cache.ByObject {
	sel := labels.SelectorFromSet(labels.Set{managedByLabel: managedByValue})
	return map[client.Object]cache.ByObject{
		&appsv1.Deployment{}:          {Label: sel},
		&corev1.ServiceAccount{}:      {Label: sel},
		&rbacv1.Role{}:                {Label: sel},
		&rbacv1.RoleBinding{}:         {Label: sel},
		&corev1.ConfigMap{}:           {Label: sel},
		&networkingv1.NetworkPolicy{}: {Label: sel},
	}
}

// DispatcherConfig is what every dispatcher Deployment runs.
type DispatcherConfig struct {
	Image           string
	ImagePullPolicy corev1.PullPolicy
	NATSURL         string
	// Resources default to DefaultDispatcherResources.
	Resources *corev1.ResourceRequirements
	// EgressAllow and EgressDeny become the dispatcher's --egress-allow
	// and --egress-deny (see internal/egress).
	EgressAllow, EgressDeny []netip.Prefix
	// NATSTokenAuth gives each dispatcher a projected ServiceAccount token
	// with audience NATSAudience (default natsauth.DefaultAudience) as its NATS
	// identity, for the auth callout to map to its namespace.
	NATSTokenAuth bool
	NATSAudience  string
	// NATSCA, a PEM CA bundle, is copied into a ConfigMap named
	// NATSCAConfigMap (default DefaultNATSCAConfigMap) in every tenant
	// namespace, for the dispatcher to verify NATS with; a ConfigMap,
	// not a Secret, since a CA is public. NATSServerName is the name the
	// server's certificate is verified against, when it differs from
	// NATSURL's host. Either makes the dispatcher require TLS.
	NATSCA          []byte
	NATSCAConfigMap string
	NATSServerName  string
	// NetworkPolicy gives the dispatcher pods a NetworkPolicy as a second
	// layer behind the egress guard: DNS, NATS (in NATSNamespace, on
	// NATSPort), the API server and the internet, no private ranges. It
	// needs a CNI that enforces policies.
	NetworkPolicy bool
	NATSNamespace string
	NATSPort      int32
	// Pool is the shared dispatcher pool's Deployment and ServiceAccount
	// (both named alike), which serves the namespaces labelled
	// DispatcherLabel=shared instead of a Deployment of their own.
	Pool types.NamespacedName
}

// natsAudience is the audience the NATS token is issued for.
func (c DispatcherConfig) natsAudience() string {
	if c.NATSAudience == "" {
		return natsauth.DefaultAudience
	}
	return c.NATSAudience
}

// natsCAConfigMap names the tenant namespace's CA ConfigMap.
func (c DispatcherConfig) natsCAConfigMap() string {
	if c.NATSCAConfigMap == "" {
		return DefaultNATSCAConfigMap
	}
	return c.NATSCAConfigMap
}

// DefaultDispatcherResources suit a namespace with a few busy endpoints.
func DefaultDispatcherResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

// DispatcherDeploymentReconciler runs one dispatcher per namespace that has
// at least one WebhookEndpoint, with a ServiceAccount whose Role can read
// only that namespace's endpoints and policies and get only the Secrets
// they name. Requests are keyed by namespace (name: DispatcherName).
type DispatcherDeploymentReconciler struct {
	client.Client
	Config DispatcherConfig
}

// The manager creates these objects in tenant namespaces. It can grant
// the Role's rules because it holds them itself (see the endpoint rules).
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// The shared pool's Role in a namespace grants minting the dispatcher's
// tokens, so the manager holds that right, for that name only; and it
// reads which namespaces chose the pool.
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,resourceNames=herald-dispatcher,verbs=create
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// SetupWithManager registers the controller.
func (r *DispatcherDeploymentReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Config.Pool == (types.NamespacedName{}) {
		r.Config.Pool = DefaultPool()
	}
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: DispatcherName}}}
	})
	own := builder.WithPredicates(isDispatcherObject())
	ownOrPool := builder.WithPredicates(predicate.Or(isDispatcherObject(), isHeraldObject(PoolName)))
	return ctrl.NewControllerManagedBy(mgr).
		Named("dispatcher-deployment").
		// Creation, deletion, and a changed secretRef (it is in the Role).
		Watches(&v1.WebhookEndpoint{}, toNamespace, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&appsv1.Deployment{}, toNamespace, own).
		Watches(&corev1.ServiceAccount{}, toNamespace, own).
		Watches(&rbacv1.Role{}, toNamespace, ownOrPool).
		Watches(&rbacv1.RoleBinding{}, toNamespace, ownOrPool).
		Watches(&networkingv1.NetworkPolicy{}, toNamespace, own).
		Watches(&corev1.ConfigMap{}, toNamespace, builder.WithPredicates(isHeraldObject(r.Config.natsCAConfigMap()))).
		WatchesMetadata(namespaceMeta(), handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetName(), Name: DispatcherName}}}
		}), builder.WithPredicates(dispatcherLabelChanged())).
		Complete(r)
}

func isDispatcherObject() predicate.Predicate { return isHeraldObject(DispatcherName) }

// isHeraldObject matches the objects named name that Herald manages.
func isHeraldObject(name string) predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetName() == name && o.GetLabels()[managedByLabel] == managedByValue
	})
}

// endpointsOfDispatcher wakes every endpoint of a dispatcher's namespace
// (their Ready condition depends on it).
func endpointsOfDispatcher(c client.Reader) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list v1.WebhookEndpointList
		if err := c.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "listing endpoints of a dispatcher", "namespace", o.GetNamespace())
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs
	}
}

// Reconcile applies the namespace's dispatcher objects, or deletes them
// once the namespace has no endpoint left.
func (r *DispatcherDeploymentReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ns := req.Namespace
	var list v1.WebhookEndpointList
	if err := r.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing endpoints: %w", err)
	}
	live := slices.DeleteFunc(list.Items, func(e v1.WebhookEndpoint) bool { return !e.DeletionTimestamp.IsZero() })
	if len(live) == 0 {
		return ctrl.Result{}, r.deleteAll(ctx, ns)
	}
	slices.SortFunc(live, func(a, b v1.WebhookEndpoint) int { return strings.Compare(a.Name, b.Name) })

	shared, err := SharedNamespace(ctx, r.Client, ns)
	if err != nil {
		return ctrl.Result{}, err
	}
	owners := ownerRefs(live)
	objs := []object{
		{"ServiceAccount", dispatcherServiceAccount(ns, owners)},
		{"Role", dispatcherRole(ns, owners, secretNames(live))},
		{"RoleBinding", dispatcherRoleBinding(ns, owners)},
	}
	if shared {
		return r.reconcileShared(ctx, ns, owners, live, objs)
	}
	if len(r.Config.NATSCA) > 0 {
		// Before the Deployment, so its pod does not wait for the volume.
		objs = append(objs, object{"ConfigMap", dispatcherNATSCA(ns, owners, r.Config)})
	}
	if r.Config.NetworkPolicy {
		objs = append(objs, object{"NetworkPolicy", dispatcherNetworkPolicy(ns, owners, networkPolicyConfig{
			NATSNamespace: r.Config.NATSNamespace, NATSPort: r.Config.NATSPort,
			EgressAllow: r.Config.EgressAllow, EgressDeny: r.Config.EgressDeny,
		})})
	}
	objs = append(objs, object{"Deployment", dispatcherDeployment(ns, owners, r.Config)})
	if err := r.applyAll(ctx, ns, objs); err != nil {
		return ctrl.Result{}, err
	}
	if !r.Config.NetworkPolicy {
		if err := r.deleteNetworkPolicy(ctx, ns); err != nil {
			return ctrl.Result{}, err
		}
	}
	// A namespace that left the pool.
	if err := errors.Join(r.deleteIfManaged(ctx, &rbacv1.RoleBinding{}, ns, PoolName),
		r.deleteIfManaged(ctx, &rbacv1.Role{}, ns, PoolName)); err != nil {
		return ctrl.Result{}, err
	}
	if len(r.Config.NATSCA) == 0 {
		// After the Deployment, which no longer mounts it.
		return ctrl.Result{}, r.deleteNATSCA(ctx, ns)
	}
	return ctrl.Result{}, nil
}

// deleteAll removes the dispatcher objects of a namespace. Owner
// references make the garbage collector do the same when the manager is
// down; deleting here makes it prompt and independent of it.
func (r *DispatcherDeploymentReconciler) deleteAll(ctx context.Context, ns string) error {
	meta := func(o client.Object) client.Object {
		o.SetNamespace(ns)
		o.SetName(DispatcherName)
		return o
	}
	var errs []error
	for _, o := range []client.Object{meta(&appsv1.Deployment{}), meta(&rbacv1.RoleBinding{}), meta(&rbacv1.Role{}), meta(&corev1.ServiceAccount{})} {
		err := r.Delete(ctx, o, client.PropagationPolicy("Background"))
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting dispatcher %T in %s: %w", o, ns, err))
		}
	}
	errs = append(errs, r.deleteNATSCA(ctx, ns), r.deleteNetworkPolicy(ctx, ns),
		r.deleteIfManaged(ctx, &rbacv1.RoleBinding{}, ns, PoolName), r.deleteIfManaged(ctx, &rbacv1.Role{}, ns, PoolName))
	return errors.Join(errs...)
}

// object is one object a pass applies, with its kind for errors.
type object struct {
	kind string
	ac   runtime.ApplyConfiguration
}

// applyAll applies objs in order, as Herald's field owner.
func (r *DispatcherDeploymentReconciler) applyAll(ctx context.Context, ns string, objs []object) error {
	for _, o := range objs {
		if err := r.Apply(ctx, o.ac, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying dispatcher %s in %s: %w", o.kind, ns, err)
		}
	}
	return nil
}

// reconcileShared hands a namespace to the shared pool: it needs the
// namespace's Secrets and its dispatcher's tokens, and no pod of the
// namespace runs. The namespace's own pod and the pool must never pull its
// consumers at once (per-key order), so the Deployment goes first, in the
// foreground (it stays until its pods are gone), and only then may the
// pool mint the tokens it connects with.
func (r *DispatcherDeploymentReconciler) reconcileShared(ctx context.Context, ns string,
	owners []*metaac.OwnerReferenceApplyConfiguration, live []v1.WebhookEndpoint, objs []object) (ctrl.Result, error) {
	objs = append(objs, object{"Role", poolRole(ns, owners, secretNames(live))})
	var d appsv1.Deployment
	err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: DispatcherName}, &d)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("reading dispatcher Deployment in %s: %w", ns, err)
	}
	draining := err == nil
	if draining && d.DeletionTimestamp.IsZero() {
		if err := r.Delete(ctx, &d, client.PropagationPolicy(metav1.DeletePropagationForeground)); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, fmt.Errorf("deleting dispatcher Deployment in %s: %w", ns, err)
		}
	}
	if !draining {
		objs = append(objs, object{"RoleBinding", poolRoleBinding(ns, owners, r.Config.Pool)})
	}
	if err := r.applyAll(ctx, ns, objs); err != nil {
		return ctrl.Result{}, err
	}
	if err := errors.Join(r.deleteNetworkPolicy(ctx, ns), r.deleteNATSCA(ctx, ns)); err != nil {
		return ctrl.Result{}, err
	}
	if draining {
		// The Deployment's deletion wakes this namespace too; the requeue
		// is for a missed event.
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	return ctrl.Result{}, nil
}

// deleteIfManaged deletes the object of that kind and name in ns if the
// cache (which holds only Herald's objects) has it: a pass over a
// namespace in its settled state makes no delete calls.
func (r *DispatcherDeploymentReconciler) deleteIfManaged(ctx context.Context, o client.Object, ns, name string) error {
	err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, o)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		err = r.Delete(ctx, o, client.PropagationPolicy("Background"))
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting %T %s in %s: %w", o, name, ns, err)
	}
	return nil
}

// deleteNetworkPolicy removes the dispatchers' NetworkPolicy of a
// namespace, if Herald made one (the cache holds only Herald's).
func (r *DispatcherDeploymentReconciler) deleteNetworkPolicy(ctx context.Context, ns string) error {
	return r.deleteIfManaged(ctx, &networkingv1.NetworkPolicy{}, ns, DispatcherName)
}

// deleteNATSCA removes the namespace's NATS CA ConfigMap: with the last
// endpoint, or when the manager no longer has a CA. It asks the cache
// first, so a cluster without TLS costs no delete call per pass, and a
// ConfigMap of that name that Herald does not manage (the cache holds
// only Herald's) is left alone.
func (r *DispatcherDeploymentReconciler) deleteNATSCA(ctx context.Context, ns string) error {
	var cm corev1.ConfigMap
	err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: r.Config.natsCAConfigMap()}, &cm)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil && cm.Labels[managedByLabel] == managedByValue {
		err = r.Delete(ctx, &cm)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the NATS CA ConfigMap in %s: %w", ns, err)
	}
	return nil
}

// dispatcherNATSCA is the manager's NATS CA bundle, copied into the tenant
// namespace: a pod can mount only ConfigMaps of its own namespace.
func dispatcherNATSCA(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, cfg DispatcherConfig) *coreac.ConfigMapApplyConfiguration {
	return coreac.ConfigMap(cfg.natsCAConfigMap(), ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithData(map[string]string{natsCAKey: string(cfg.NATSCA)})
}

// ownerRefs makes every live endpoint an owner (not a controller), so the
// garbage collector removes the objects only with the last of them.
func ownerRefs(eps []v1.WebhookEndpoint) []*metaac.OwnerReferenceApplyConfiguration {
	out := make([]*metaac.OwnerReferenceApplyConfiguration, 0, len(eps))
	for i := range eps {
		out = append(out, metaac.OwnerReference().
			WithAPIVersion(v1.GroupVersion.String()).WithKind("WebhookEndpoint").
			WithName(eps[i].Name).WithUID(eps[i].UID))
	}
	return out
}

// secretNames are the Secrets the dispatcher may get: only those named by
// the namespace's endpoints (signing Secrets and headersFrom Secrets).
func secretNames(eps []v1.WebhookEndpoint) []string {
	var names []string
	for i := range eps {
		names = append(names, referencedSecrets(&eps[i])...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func dispatcherServiceAccount(ns string, owners []*metaac.OwnerReferenceApplyConfiguration) *coreac.ServiceAccountApplyConfiguration {
	return coreac.ServiceAccount(DispatcherName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...)
}

// dispatcherRole lets the dispatcher read this namespace's endpoints and
// policies, and get (not list or watch) the Secrets they name.
func dispatcherRole(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, secrets []string) *rbacac.RoleApplyConfiguration {
	return rbacac.Role(DispatcherName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithRules(
			rbacac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).
				WithResources("webhookendpoints", "retrypolicies").WithVerbs("get", "list", "watch"),
			rbacac.PolicyRule().WithAPIGroups("").WithResources("secrets").
				WithResourceNames(secrets...).WithVerbs("get"),
		)
}

func dispatcherRoleBinding(ns string, owners []*metaac.OwnerReferenceApplyConfiguration) *rbacac.RoleBindingApplyConfiguration {
	return rbacac.RoleBinding(DispatcherName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithRoleRef(rbacac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("Role").WithName(DispatcherName)).
		WithSubjects(rbacac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(DispatcherName).WithNamespace(ns))
}

// dispatcherArgs is the dispatcher container's command line.
func dispatcherArgs(ns string, cfg DispatcherConfig) []string {
	args := []string{"dispatcher",
		"--namespace=" + ns,
		"--nats-url=" + cfg.NATSURL}
	// Paths only: the token and the CA reach the pod as volumes, never as
	// arguments anyone who can read the Deployment sees.
	if cfg.NATSTokenAuth {
		args = append(args, "--nats-token-file="+natsTokenDir+"/"+natsTokenKey)
	}
	if len(cfg.NATSCA) > 0 {
		args = append(args, "--nats-ca-file="+natsCADir+"/"+natsCAKey)
	}
	if cfg.NATSServerName != "" {
		args = append(args, "--nats-server-name="+cfg.NATSServerName)
	}
	args = append(args,
		fmt.Sprintf("--metrics-bind-address=:%d", DispatcherMetricsPort),
		fmt.Sprintf("--health-probe-bind-address=:%d", DispatcherHealthPort))
	if len(cfg.EgressAllow) > 0 {
		args = append(args, "--egress-allow="+joinPrefixes(cfg.EgressAllow))
	}
	if len(cfg.EgressDeny) > 0 {
		args = append(args, "--egress-deny="+joinPrefixes(cfg.EgressDeny))
	}
	return args
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// natsVolumes are the NATS token and CA bundle of the pod, as configured,
// and where the container mounts them.
func natsVolumes(cfg DispatcherConfig) ([]*coreac.VolumeApplyConfiguration, []*coreac.VolumeMountApplyConfiguration) {
	var vols []*coreac.VolumeApplyConfiguration
	var mounts []*coreac.VolumeMountApplyConfiguration
	if cfg.NATSTokenAuth {
		// Not the pod's API token: one for NATS's audience only, so NATS
		// (or whoever sees it there) cannot replay it at the API server.
		vols = append(vols, coreac.Volume().WithName(natsTokenVolume).
			WithProjected(coreac.ProjectedVolumeSource().WithSources(
				coreac.VolumeProjection().WithServiceAccountToken(coreac.ServiceAccountTokenProjection().
					WithAudience(cfg.natsAudience()).WithExpirationSeconds(natsTokenExpirationSeconds).WithPath(natsTokenKey)))))
		mounts = append(mounts, coreac.VolumeMount().WithName(natsTokenVolume).WithMountPath(natsTokenDir).WithReadOnly(true))
	}
	if len(cfg.NATSCA) > 0 {
		// No subPath: the kubelet then updates the file when the bundle
		// changes, and nats.go reads it again at every connect.
		vols = append(vols, coreac.Volume().WithName(natsCAVolume).
			WithConfigMap(coreac.ConfigMapVolumeSource().WithName(cfg.natsCAConfigMap()).
				WithItems(coreac.KeyToPath().WithKey(natsCAKey).WithPath(natsCAKey))))
		mounts = append(mounts, coreac.VolumeMount().WithName(natsCAVolume).WithMountPath(natsCADir).WithReadOnly(true))
	}
	return vols, mounts
}

// dispatcherDeployment is one replica with the Recreate strategy: two
// dispatchers of one namespace would split a key's events across
// processes and break per-key order during a rollout.
func dispatcherDeployment(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, cfg DispatcherConfig) *appsac.DeploymentApplyConfiguration {
	res := DefaultDispatcherResources()
	if cfg.Resources != nil {
		res = *cfg.Resources
	}
	pull := cfg.ImagePullPolicy
	if pull == "" {
		pull = corev1.PullIfNotPresent
	}
	probe := func(path string) *coreac.ProbeApplyConfiguration {
		return coreac.Probe().WithHTTPGet(coreac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString("health"))).
			WithPeriodSeconds(10).WithTimeoutSeconds(2).WithFailureThreshold(3)
	}
	sel := map[string]string{nameLabel: DispatcherName, componentLabel: "dispatcher"}
	vols, mounts := natsVolumes(cfg)
	return appsac.Deployment(DispatcherName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithSpec(appsac.DeploymentSpec().
			WithReplicas(1).
			WithStrategy(appsac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType)).
			WithSelector(metaac.LabelSelector().WithMatchLabels(sel)).
			WithTemplate(coreac.PodTemplateSpec().
				WithLabels(dispatcherLabels()).
				WithAnnotations(map[string]string{"kubectl.kubernetes.io/default-container": "dispatcher"}).
				WithSpec(coreac.PodSpec().
					WithServiceAccountName(DispatcherName).
					// Longer than the dispatcher's 30s drain.
					WithTerminationGracePeriodSeconds(45).
					WithVolumes(vols...).
					WithSecurityContext(coreac.PodSecurityContext().
						WithRunAsNonRoot(true).WithRunAsUser(65532).WithRunAsGroup(65532).
						WithSeccompProfile(coreac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
					WithContainers(coreac.Container().
						WithName("dispatcher").
						WithImage(cfg.Image).
						WithImagePullPolicy(pull).
						WithArgs(dispatcherArgs(ns, cfg)...).
						WithVolumeMounts(mounts...).
						WithPorts(
							coreac.ContainerPort().WithName("metrics").WithContainerPort(DispatcherMetricsPort).WithProtocol(corev1.ProtocolTCP),
							coreac.ContainerPort().WithName("health").WithContainerPort(DispatcherHealthPort).WithProtocol(corev1.ProtocolTCP)).
						WithResources(coreac.ResourceRequirements().WithRequests(res.Requests).WithLimits(res.Limits)).
						WithLivenessProbe(probe("/healthz").WithInitialDelaySeconds(5)).
						WithReadinessProbe(probe("/readyz")).
						WithSecurityContext(coreac.SecurityContext().
							WithAllowPrivilegeEscalation(false).
							WithReadOnlyRootFilesystem(true).
							WithRunAsNonRoot(true).
							WithCapabilities(coreac.Capabilities().WithDrop("ALL")))))))
}

// dispatcherAvailable reads the Available condition of a dispatcher
// Deployment, which what names in messages.
func dispatcherAvailable(d *appsv1.Deployment, what string) (bool, string) {
	for _, c := range d.Status.Conditions {
		if c.Type != appsv1.DeploymentAvailable {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return true, what + " available"
		}
		return false, fmt.Sprintf("%s not available: %s", what, c.Message)
	}
	return false, fmt.Sprintf("waiting for %s to become available", what)
}
