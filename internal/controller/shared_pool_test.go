package controller

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

var _ = Describe("Shared dispatcher pool", func() {
	labelNamespace := func(ns, value string) {
		GinkgoHelper()
		var n corev1.Namespace
		Expect(k8sClient.Get(ctx, types.NamespacedName{Name: ns}, &n)).To(Succeed())
		patch := client.MergeFrom(n.DeepCopy())
		if value == "" {
			delete(n.Labels, v1.DispatcherLabel)
		} else {
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[v1.DispatcherLabel] = value
		}
		Expect(k8sClient.Patch(ctx, &n, patch)).To(Succeed())
	}
	gone := func(o client.Object, ns, name string) func() bool {
		return func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, o))
		}
	}

	It("takes a namespace over only once its own dispatcher's pods are gone, and gives it back", func() {
		ns := newNamespace("shared")
		create(newSecret(ns, "billing-signing"), newEndpoint(ns, "billing"))
		key := types.NamespacedName{Namespace: ns, Name: DispatcherName}
		Eventually(func() error { return k8sClient.Get(ctx, key, &appsv1.Deployment{}) }, eventually, poll).Should(Succeed())

		By("labelling the namespace shared: its Deployment is deleted in the foreground, and the pool may not act yet")
		labelNamespace(ns, v1.DispatcherShared)
		var d appsv1.Deployment
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, &d)).To(Succeed())
			g.Expect(d.DeletionTimestamp).NotTo(BeNil())
			g.Expect(d.Finalizers).To(ContainElement(metav1.FinalizerDeleteDependents))
		}, eventually, poll).Should(Succeed())
		Eventually(func() error {
			return k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: PoolName}, &rbacv1.Role{})
		}, eventually, poll).Should(Succeed())
		Consistently(gone(&rbacv1.RoleBinding{}, ns, PoolName), "2s", poll).Should(BeTrue(),
			"no token for the pool while the namespace's own pods may still pull")

		By("the garbage collector removing the pods (envtest runs none; the test does its part)")
		d.Finalizers = nil
		Expect(k8sClient.Update(ctx, &d)).To(Succeed())

		By("binding the pool: Secrets its endpoints name and its dispatcher's tokens, nothing else")
		var rb rbacv1.RoleBinding
		Eventually(func() error {
			return k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: PoolName}, &rb)
		}, eventually, poll).Should(Succeed())
		Expect(rb.Subjects).To(ConsistOf(rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: PoolName, Namespace: DefaultPool().Namespace}))
		Expect(rb.RoleRef.Name).To(Equal(PoolName))
		var role rbacv1.Role
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: PoolName}, &role)).To(Succeed())
		Expect(role.Rules).To(ConsistOf(
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"billing-signing"}, Verbs: []string{"get"}},
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, ResourceNames: []string{DispatcherName}, Verbs: []string{"create"}},
		))
		Expect(k8sClient.Get(ctx, key, &corev1.ServiceAccount{})).To(Succeed(), "the namespace's NATS identity stays")
		Eventually(gone(&networkingv1.NetworkPolicy{}, ns, DispatcherName), eventually, poll).Should(BeTrue())
		Eventually(gone(&corev1.ConfigMap{}, ns, DefaultNATSCAConfigMap), eventually, poll).Should(BeTrue())
		Consistently(gone(&appsv1.Deployment{}, ns, DispatcherName), "1s", poll).Should(BeTrue())

		By("reporting Ready from the pool's Deployment")
		r := &WebhookEndpointReconciler{Client: k8sClient, Mode: DispatchDeployment, Pool: DefaultPool()}
		ep := getEndpoint(Default, ns, "billing")
		obs := &observation{}
		Expect(r.reconcileDispatcher(ctx, ep, obs, nil)).To(Succeed())
		Expect(obs.DispatcherReady).To(BeFalse())
		Expect(obs.DispatcherMessage).To(Equal("waiting for the shared dispatcher pool herald-system/herald-dispatcher-pool"))
		if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultPool().Namespace}}); err != nil {
			Expect(apierrors.IsAlreadyExists(err)).To(BeTrue())
		}
		pool := poolDeployment()
		create(pool)
		DeferCleanup(func() { _ = k8sClient.Delete(ctx, pool) })
		pool.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}
		Expect(k8sClient.Status().Update(ctx, pool)).To(Succeed())
		obs = &observation{}
		Expect(r.reconcileDispatcher(ctx, ep, obs, nil)).To(Succeed())
		Expect(obs.DispatcherReady).To(BeTrue())
		Expect(obs.DispatcherMessage).To(Equal("the shared dispatcher pool herald-system/herald-dispatcher-pool available"))

		By("removing the label: the namespace's own Deployment comes back and the pool's rights go")
		labelNamespace(ns, "")
		Eventually(func() error { return k8sClient.Get(ctx, key, &appsv1.Deployment{}) }, eventually, poll).Should(Succeed())
		Eventually(gone(&rbacv1.RoleBinding{}, ns, PoolName), eventually, poll).Should(BeTrue())
		Eventually(gone(&rbacv1.Role{}, ns, PoolName), eventually, poll).Should(BeTrue())
	})
})

// poolDeployment is the pool's Deployment as config/pool installs it,
// reduced to what the operator reads.
func poolDeployment() *appsv1.Deployment {
	labels := map[string]string{"app.kubernetes.io/component": "dispatcher-pool"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: PoolName, Namespace: DefaultPool().Namespace,
			Labels: map[string]string{managedByLabel: managedByValue}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "dispatcher-pool", Image: "herald:test"}}},
			},
		},
	}
}
