package controller

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

var _ = Describe("Dispatch controller", func() {
	It("upserts resolved endpoints, follows rotations and removes deleted ones", func() {
		ns := newNamespace("dispatch")
		create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm"))
		Eventually(func(g Gomega) {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue())
			g.Expect(ep.URL).To(Equal("http://127.0.0.1:8090/crm"))
			g.Expect(ep.Keys).To(HaveLen(1))
		}, eventually, poll).Should(Succeed())

		By("adding a second key to the secret (rotation)")
		var sec corev1.Secret
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "crm-signing"}, &sec)).To(Succeed())
		sec.Data["v2"] = []byte(whsec())
		Expect(k8sClient.Update(ctx, &sec)).To(Succeed())
		Eventually(func(g Gomega) int {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue())
			return len(ep.Keys)
		}, eventually, poll).Should(Equal(2))

		By("stopping deliveries when its secret goes, and only sweeping for expired events")
		Expect(k8sClient.Delete(ctx, &sec)).To(Succeed())
		Eventually(func() bool { return fake.delivering(ns, "crm") }, eventually, poll).Should(BeFalse())
		Eventually(func(g Gomega) {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue(), "a stalled endpoint still dead-letters what expires")
			g.Expect(ep.Suspend).To(BeTrue())
			g.Expect(ep.Keys).To(BeEmpty())
		}, eventually, poll).Should(Succeed())

		By("removing the endpoint when it is deleted")
		create(newSecret(ns, "crm-signing"))
		Eventually(func() bool { return fake.delivering(ns, "crm") }, eventually, poll).Should(BeTrue())
		deleteAndWaitGone(getEndpoint(Default, ns, "crm"))
		Eventually(func() bool { _, ok := fake.get(ns, "crm"); return ok }, eventually, poll).Should(BeFalse())
	})
})
