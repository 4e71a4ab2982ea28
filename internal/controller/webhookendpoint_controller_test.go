package controller

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

var readyAndDelivering = map[string]string{
	v1.ReadyCondition:       "True/Ready",
	v1.HealthyCondition:     "True/NoDeliveriesYet",
	v1.ReconcilingCondition: "absent",
	v1.StalledCondition:     "absent",
}

var _ = Describe("WebhookEndpoint controller", func() {
	Context("when an endpoint is applied with its secret", func() {
		It("creates, updates, repairs and finally deletes its consumer", func() {
			ns := newNamespace("consumer")
			create(newSecret(ns, "billing-signing"), newEndpoint(ns, "billing"))

			By("adding the finalizer and creating the consumer")
			expectConditions(ns, "billing", readyAndDelivering)
			ep := getEndpoint(Default, ns, "billing")
			Expect(ep.Finalizers).To(ContainElement(ConsumerFinalizer))
			Expect(ep.Status.Consumer).To(Equal(streams.ConsumerName(ns, "billing")))
			info, err := consumerInfo(ns, "billing")
			Expect(err).NotTo(HaveOccurred())
			Expect(info.Config.FilterSubjects).To(Equal([]string{"herald.events." + ns + ".>"}))
			Expect(info.Config.AckPolicy).To(Equal(jetstream.AckExplicitPolicy))

			By("updating the consumer when the spec changes")
			updateEndpoint(ns, "billing", func(ep *v1.WebhookEndpoint) {
				ep.Spec.EventTypes = []string{"invoice.paid", "subscription.*"}
				ep.Spec.MaxInFlight = 4
			})
			Eventually(func(g Gomega) {
				info, err := consumerInfo(ns, "billing")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.Config.FilterSubjects).To(ConsistOf("herald.events."+ns+".invoice.paid", "herald.events."+ns+".subscription.*"))
				g.Expect(info.Config.MaxAckPending).To(Equal(4 + 1000))
			}, eventually, poll).Should(Succeed())

			By("recreating the consumer when it is deleted behind the operator's back")
			Expect(js.DeleteConsumer(ctx, events.StreamName, streams.ConsumerName(ns, "billing"))).To(Succeed())
			Eventually(func(g Gomega) {
				info, err := consumerInfo(ns, "billing")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.Config.FilterSubjects).To(HaveLen(2))
			}, eventually, poll).Should(Succeed())
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "billing") }, eventually, poll).Should(ContainElement("ConsumerRecreated"))

			By("deleting the consumer through the finalizer")
			deleteAndWaitGone(ep)
			_, err = consumerInfo(ns, "billing")
			Expect(errors.Is(err, jetstream.ErrConsumerNotFound)).To(BeTrue(), "got %v", err)
		})
	})

	Context("when the signing secret is missing", func() {
		It("is Stalled with a message, and recovers when the secret appears", func() {
			ns := newNamespace("nosecret")
			create(newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:       "False/SecretMissing",
				v1.StalledCondition:     "True/SecretMissing",
				v1.ReconcilingCondition: "absent",
			})
			ep := getEndpoint(Default, ns, "crm")
			Expect(conditionMessage(ep, v1.StalledCondition)).To(ContainSubstring(`signing Secret "crm-signing" not found`))
			// Events keep queuing while a person fixes it.
			_, err := consumerInfo(ns, "crm")
			Expect(err).NotTo(HaveOccurred())
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm") }, eventually, poll).Should(ContainElement("SecretMissing"))
			_, running := fake.get(ns, "crm")
			Expect(running).To(BeFalse(), "a stalled endpoint must not be dispatched")

			create(newSecret(ns, "crm-signing"))
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func() bool { _, ok := fake.get(ns, "crm"); return ok }, eventually, poll).Should(BeTrue())
		})
	})

	Context("when the signing secret is malformed", func() {
		It("is Stalled SecretMalformed and never shows the value", func() {
			ns := newNamespace("badsecret")
			sec := newSecret(ns, "crm-signing")
			sec.Data = map[string][]byte{"v1": []byte("not-a-whsec-value-1234567890")}
			create(sec, newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:   "False/SecretMalformed",
				v1.StalledCondition: "True/SecretMalformed",
			})
			ep := getEndpoint(Default, ns, "crm")
			msg := conditionMessage(ep, v1.StalledCondition)
			Expect(msg).To(ContainSubstring(`"v1"`))
			Expect(msg).NotTo(ContainSubstring("not-a-whsec-value"))
		})
	})

	Context("when the retry policy is missing", func() {
		It("is Stalled RetryPolicyMissing, and recovers when the policy appears", func() {
			ns := newNamespace("nopolicy")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm", withPolicy("fast")))
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:   "False/RetryPolicyMissing",
				v1.StalledCondition: "True/RetryPolicyMissing",
			})
			Expect(conditionMessage(getEndpoint(Default, ns, "crm"), v1.StalledCondition)).To(ContainSubstring(`RetryPolicy "fast" not found`))

			create(newPolicy(ns, "fast"))
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func(g Gomega) {
				ep, ok := fake.get(ns, "crm")
				g.Expect(ok).To(BeTrue())
				g.Expect(ep.Policy.Schedule).To(Equal([]time.Duration{time.Second, 5 * time.Second}))
			}, eventually, poll).Should(Succeed())
		})
	})

	Context("when tenants write hostile eventTypes", func() {
		It("keeps every filter inside the endpoint's own namespace", func() {
			nsA, nsB := newNamespace("tenant-a"), newNamespace("tenant-b")
			create(newSecret(nsA, "spy-signing"),
				newEndpoint(nsA, "spy", withEventTypes(">", "*", nsB+".>", nsB+".invoice.paid", "*.*.>")))
			expectConditions(nsA, "spy", readyAndDelivering)
			info, err := consumerInfo(nsA, "spy")
			Expect(err).NotTo(HaveOccurred())
			for _, f := range info.Config.FilterSubjects {
				Expect(f).To(HavePrefix("herald.events."+nsA+"."), "filter %q", f)
			}

			By("publishing to the other tenant, which the consumer never sees")
			publish(nsB, "invoice.paid")
			publish(nsA, "invoice.paid")
			Eventually(func(g Gomega) {
				info, err := consumerInfo(nsA, "spy")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.NumPending).To(BeEquivalentTo(1))
			}, eventually, poll).Should(Succeed())
			Consistently(func(g Gomega) {
				info, err := consumerInfo(nsA, "spy")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.NumPending + uint64(info.NumAckPending)).To(BeEquivalentTo(1))
			}, time.Second, poll).Should(Succeed())

			By("refusing patterns with spaces or empty parts at the API")
			for _, bad := range []string{"invoice. paid", "invoice..paid", "a.>.b", " >"} {
				err := k8sClient.Create(ctx, newEndpoint(nsA, "bad", withEventTypes(bad)))
				Expect(err).To(HaveOccurred(), "eventType %q", bad)
			}
		})

		It("cannot use another namespace's secret or policy", func() {
			nsA, nsB := newNamespace("tenant-a"), newNamespace("tenant-b")
			// B owns a secret and a policy; A names them.
			create(newSecret(nsB, "shared"), newPolicy(nsB, "shared"))
			create(newEndpoint(nsA, "thief", withSecret("shared")))
			expectConditions(nsA, "thief", map[string]string{v1.StalledCondition: "True/SecretMissing"})
			create(newSecret(nsA, "own"), newEndpoint(nsA, "thief2", withSecret("own"), withPolicy("shared")))
			expectConditions(nsA, "thief2", map[string]string{v1.StalledCondition: "True/RetryPolicyMissing"})
			_, running := fake.get(nsA, "thief")
			Expect(running).To(BeFalse())
		})
	})

	Context("when an endpoint is suspended", func() {
		It("reports Suspended, stops the dispatcher and resumes", func() {
			ns := newNamespace("suspend")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm", withSuspend(true)))
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:   "True/Ready",
				v1.HealthyCondition: "False/Suspended",
			})
			Eventually(func(g Gomega) {
				ep, ok := fake.get(ns, "crm")
				g.Expect(ok).To(BeTrue())
				g.Expect(ep.Suspend).To(BeTrue())
			}, eventually, poll).Should(Succeed())

			By("queuing events while suspended")
			publish(ns, "invoice.paid")
			publish(ns, "invoice.paid")
			Eventually(func(g Gomega) int64 { return getEndpoint(g, ns, "crm").Status.Backlog }, eventually, poll).Should(BeEquivalentTo(2))

			By("resuming")
			updateEndpoint(ns, "crm", func(ep *v1.WebhookEndpoint) { ep.Spec.Suspend = false })
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func(g Gomega) {
				ep, ok := fake.get(ns, "crm")
				g.Expect(ok).To(BeTrue())
				g.Expect(ep.Suspend).To(BeFalse())
			}, eventually, poll).Should(Succeed())
		})
	})

	Context("when NATS cleanup fails during deletion", func() {
		It("does not block deletion forever", func() {
			ns := newNamespace("cleanup")
			ep := newEndpoint(ns, "gone")
			create(newSecret(ns, "gone-signing"), ep)
			expectConditions(ns, "gone", readyAndDelivering)
			// Delete the consumer first: the finalizer must treat "already
			// gone" as done.
			Expect(js.DeleteConsumer(ctx, events.StreamName, streams.ConsumerName(ns, "gone"))).To(Succeed())
			deleteAndWaitGone(ep)
		})
	})
})

var _ = Describe("RetryPolicy controller", func() {
	It("counts the endpoints that reference it", func() {
		ns := newNamespace("policy")
		create(newPolicy(ns, "standard"), newSecret(ns, "a-signing"), newSecret(ns, "b-signing"))
		count := func(g Gomega) int32 {
			p := &v1.RetryPolicy{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "standard"}, p)).To(Succeed())
			g.Expect(p.Status.ObservedGeneration).To(Equal(p.Generation))
			g.Expect(p.Status.Conditions).To(ContainElement(HaveField("Type", v1.ReadyCondition)))
			return p.Status.Endpoints
		}
		Eventually(count, eventually, poll).Should(BeEquivalentTo(0))
		create(newEndpoint(ns, "a", withPolicy("standard")), newEndpoint(ns, "b", withPolicy("standard")))
		Eventually(count, eventually, poll).Should(BeEquivalentTo(2))

		By("dropping an endpoint that switches to the default policy")
		updateEndpoint(ns, "b", func(ep *v1.WebhookEndpoint) { ep.Spec.RetryPolicyRef = nil })
		Eventually(count, eventually, poll).Should(BeEquivalentTo(1))
		deleteAndWaitGone(getEndpoint(Default, ns, "a"))
		Eventually(count, eventually, poll).Should(BeEquivalentTo(0))
	})
})
