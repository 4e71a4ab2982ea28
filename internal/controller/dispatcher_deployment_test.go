package controller

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// testNATSCA is the suite's NATS CA bundle (see suite_test.go). The
// operator copies it, never parses it, so it need not be a real one.
const testNATSCA = "-----BEGIN CERTIFICATE-----\nMIIBtestCA\n-----END CERTIFICATE-----\n"

var _ = Describe("Dispatcher Deployment controller", func() {
	It("runs a restricted dispatcher per namespace and removes it with the last endpoint", func() {
		ns := newNamespace("dispatcher")
		key := types.NamespacedName{Namespace: ns, Name: DispatcherName}
		create(newSecret(ns, "billing-signing"), newEndpoint(ns, "billing"))

		By("creating the ServiceAccount, Role, RoleBinding and Deployment")
		var d appsv1.Deployment
		Eventually(func() error { return k8sClient.Get(ctx, key, &d) }, eventually, poll).Should(Succeed())
		Expect(d.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "herald"))
		Expect(d.OwnerReferences).To(ConsistOf(HaveField("Name", "billing")))
		Expect(d.OwnerReferences[0].Controller).To(BeNil(), "owners, not a controller: any endpoint keeps it alive")
		Expect(d.Spec.Replicas).To(Equal(ptr.To[int32](1)))
		Expect(d.Spec.Strategy.Type).To(Equal(appsv1.RecreateDeploymentStrategyType))

		pod := d.Spec.Template.Spec
		Expect(pod.ServiceAccountName).To(Equal(DispatcherName))
		Expect(pod.SecurityContext.RunAsNonRoot).To(Equal(ptr.To(true)))
		Expect(pod.SecurityContext.SeccompProfile).NotTo(BeNil())
		Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
		Expect(pod.Containers).To(HaveLen(1))
		c := pod.Containers[0]
		Expect(c.Image).To(Equal("herald:test"))
		Expect(c.Args).To(Equal([]string{"dispatcher", "--namespace=" + ns, "--nats-url=nats://nats.herald-system:4222",
			"--nats-token-file=/var/run/secrets/herald.dev/nats/token", "--nats-ca-file=/etc/herald/nats-ca/ca.crt",
			"--nats-server-name=nats.herald-system.svc",
			"--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"}))
		for _, a := range c.Args {
			Expect(a).NotTo(ContainSubstring("BEGIN"), "the CA travels as a volume, not an argument")
		}
		Expect(c.Env).To(BeEmpty())

		By("mounting a NATS token for NATS's audience only, and the CA")
		Expect(pod.Volumes).To(ConsistOf(
			corev1.Volume{Name: "nats-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
					Audience: "nats.herald.dev", ExpirationSeconds: ptr.To[int64](3600), Path: "token"}}},
				DefaultMode: ptr.To[int32](0o644)}}},
			corev1.Volume{Name: "nats-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "herald-nats-ca"},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
				DefaultMode:          ptr.To[int32](0o644)}}},
		))
		Expect(c.VolumeMounts).To(ConsistOf(
			corev1.VolumeMount{Name: "nats-token", MountPath: "/var/run/secrets/herald.dev/nats", ReadOnly: true},
			corev1.VolumeMount{Name: "nats-ca", MountPath: "/etc/herald/nats-ca", ReadOnly: true},
		))
		caKey := types.NamespacedName{Namespace: ns, Name: "herald-nats-ca"}
		var ca corev1.ConfigMap
		Expect(k8sClient.Get(ctx, caKey, &ca)).To(Succeed())
		Expect(ca.Data).To(Equal(map[string]string{"ca.crt": testNATSCA}))
		Expect(ca.Labels).To(Equal(d.Labels))
		Expect(ca.OwnerReferences).To(ConsistOf(HaveField("Name", "billing")))
		var np networkingv1.NetworkPolicy
		Expect(k8sClient.Get(ctx, key, &np)).To(Succeed(), "the dispatchers' NetworkPolicy")
		Expect(np.Spec.PodSelector.MatchLabels).To(Equal(d.Spec.Selector.MatchLabels))
		Expect(np.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}))
		Expect(np.OwnerReferences).To(ConsistOf(HaveField("Name", "billing")))
		Expect(c.SecurityContext.AllowPrivilegeEscalation).To(Equal(ptr.To(false)))
		Expect(c.SecurityContext.ReadOnlyRootFilesystem).To(Equal(ptr.To(true)))
		Expect(c.SecurityContext.RunAsNonRoot).To(Equal(ptr.To(true)))
		Expect(c.SecurityContext.Capabilities.Drop).To(Equal([]corev1.Capability{"ALL"}))
		Expect(c.SecurityContext.Capabilities.Add).To(BeEmpty())
		Expect(c.Resources.Requests.Cpu().Equal(resource.MustParse("50m"))).To(BeTrue())
		Expect(c.Resources.Requests.Memory().IsZero()).To(BeFalse())
		Expect(c.Resources.Limits.Cpu().IsZero()).To(BeFalse())
		Expect(c.Resources.Limits.Memory().IsZero()).To(BeFalse())
		Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
		Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
		Expect(c.Ports).To(ContainElement(And(HaveField("Name", "metrics"), HaveField("ContainerPort", int32(DispatcherMetricsPort)))))

		var sa corev1.ServiceAccount
		Expect(k8sClient.Get(ctx, key, &sa)).To(Succeed())

		var role rbacv1.Role
		Expect(k8sClient.Get(ctx, key, &role)).To(Succeed())
		Expect(role.Rules).To(Equal([]rbacv1.PolicyRule{
			{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"webhookendpoints", "retrypolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"billing-signing"}, Verbs: []string{"get"}},
		}))

		var rb rbacv1.RoleBinding
		Expect(k8sClient.Get(ctx, key, &rb)).To(Succeed())
		Expect(rb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: DispatcherName}))
		Expect(rb.Subjects).To(Equal([]rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: DispatcherName, Namespace: ns}}))

		By("allowing the second endpoint's secrets, signing and headersFrom, and nothing else")
		create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm",
			withHeaderFrom("Authorization", "crm-auth", "token"), withHeaderFrom("X-Api-Key", "crm-signing", "api-key")))
		Eventually(func(g Gomega) []string {
			g.Expect(k8sClient.Get(ctx, key, &role)).To(Succeed())
			return role.Rules[1].ResourceNames
		}, eventually, poll).Should(Equal([]string{"billing-signing", "crm-auth", "crm-signing"}))

		By("following a headersFrom change")
		updateEndpoint(ns, "crm", func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom[0].SecretKeyRef.Name = "crm-auth-v2" })
		Eventually(func(g Gomega) []string {
			g.Expect(k8sClient.Get(ctx, key, &role)).To(Succeed())
			return role.Rules[1].ResourceNames
		}, eventually, poll).Should(Equal([]string{"billing-signing", "crm-auth-v2", "crm-signing"}))

		By("repairing a deleted Role and CA ConfigMap")
		Expect(k8sClient.Delete(ctx, &role)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, key, &rbacv1.Role{}) }, eventually, poll).Should(Succeed())
		Expect(k8sClient.Delete(ctx, &ca)).To(Succeed())
		Eventually(func(g Gomega) map[string]string {
			g.Expect(k8sClient.Get(ctx, caKey, &ca)).To(Succeed())
			return ca.Data
		}, eventually, poll).Should(Equal(map[string]string{"ca.crt": testNATSCA}))

		By("keeping everything while one endpoint remains")
		deleteAndWaitGone(getEndpoint(Default, ns, "billing"))
		Eventually(func(g Gomega) []string {
			g.Expect(k8sClient.Get(ctx, key, &d)).To(Succeed())
			var names []string
			for _, o := range d.OwnerReferences {
				names = append(names, o.Name)
			}
			return names
		}, eventually, poll).Should(Equal([]string{"crm"}))

		By("removing everything with the last endpoint")
		deleteAndWaitGone(getEndpoint(Default, ns, "crm"))
		for _, o := range []client.Object{&appsv1.Deployment{}, &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}, &networkingv1.NetworkPolicy{}} {
			Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, key, o)) }, eventually, poll).
				Should(BeTrue(), "%T should be gone", o)
		}
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, caKey, &corev1.ConfigMap{})) }, eventually, poll).
			Should(BeTrue(), "the CA ConfigMap should be gone")
	})
})
