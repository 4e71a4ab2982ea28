//go:build e2e

package e2e

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/controller"
)

var _ = Describe("The shared dispatcher pool", func() {
	It("takes over a namespace labelled shared, delivers as that namespace with no pod of its own, and gives it back", func(ctx SpecContext) {
		a := tenantA
		// The built-in 24h window: the stopped pod's last pulls hold some
		// events until their ack wait, longer than the fast policy's 8s.
		a.create(endpoint{name: "pooled", path: "/pooled", types: []string{"pooled.>"}, defaultPolicy: true})
		dedicated := types.NamespacedName{Namespace: a.ns, Name: controller.DispatcherName}
		Eventually(func() error { return k8s.Get(ctx, dedicated, &appsv1.Deployment{}) }).Should(Succeed())

		By("labelling the namespace shared: its Deployment and pods go, the pool gets its Role")
		kubectl("label", "namespace", a.ns, v1.DispatcherLabel+"="+v1.DispatcherShared, "--overwrite")
		DeferCleanup(func(ctx SpecContext) {
			By("removing the label: the namespace's own dispatcher comes back, for the specs after this one")
			kubectl("label", "namespace", a.ns, v1.DispatcherLabel+"-")
			Eventually(func(g Gomega) {
				var d appsv1.Deployment
				g.Expect(k8s.Get(ctx, dedicated, &d)).To(Succeed())
				g.Expect(d.Status.AvailableReplicas).To(BeNumerically(">=", 1))
			}).Should(Succeed())
			Eventually(func() bool {
				return apierrors.IsNotFound(k8s.Get(ctx, types.NamespacedName{Namespace: a.ns, Name: controller.PoolName}, &rbacv1.RoleBinding{}))
			}).Should(BeTrue(), "the pool's rights go with the label")
		})
		Eventually(func() bool { return apierrors.IsNotFound(k8s.Get(ctx, dedicated, &appsv1.Deployment{})) }).Should(BeTrue())
		Eventually(func(g Gomega) {
			var pods corev1.PodList
			g.Expect(k8s.List(ctx, &pods, client.InNamespace(a.ns), dispatcherPods)).To(Succeed())
			g.Expect(pods.Items).To(BeEmpty())
		}).Should(Succeed())
		Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: a.ns, Name: controller.PoolName}, &rbacv1.RoleBinding{})
		}).Should(Succeed())

		By("reporting Ready with the pool, and delivering every event")
		Eventually(func(g Gomega) {
			c := apimeta.FindStatusCondition(a.get("pooled").Status.Conditions, v1.ReadyCondition)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Message).To(ContainSubstring("shared dispatcher pool herald-system/herald-dispatcher-pool"))
		}).Should(Succeed())
		ids := publishMany(a.ns, "pooled.created", "pooled", 20, 5)
		Eventually(allArrived(a, "/pooled", ids)).Should(Succeed())
	})
})
