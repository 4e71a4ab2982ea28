package controller

import (
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
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
			Expect(js.DeleteConsumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, "billing"))).To(Succeed())
			Eventually(func(g Gomega) {
				info, err := consumerInfo(ns, "billing")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.Config.FilterSubjects).To(HaveLen(2))
			}, eventually, poll).Should(Succeed())
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "billing") }, eventually, poll).Should(ContainElement("ConsumerRecreated"))

			By("deleting the consumer and the version records through the finalizer")
			writeVersion(ns, "billing", "sub_1", 9, 42)
			writeVersion(ns, "billing", "inv_7", 2, 43)
			deleteAndWaitGone(ep)
			_, err = consumerInfo(ns, "billing")
			Expect(errors.Is(err, jetstream.ErrConsumerNotFound)).To(BeTrue(), "got %v", err)
			for _, key := range []string{"sub_1", "inv_7"} {
				_, err = versionsKV(ns).Get(ctx, versionKey(ns, "billing", key))
				Expect(errors.Is(err, jetstream.ErrKeyNotFound)).To(BeTrue(), "version record of %s: got %v", key, err)
			}
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
			Consistently(func() bool { return fake.delivering(ns, "crm") }, time.Second, poll).Should(BeFalse(), "a stalled endpoint must not deliver")

			create(newSecret(ns, "crm-signing"))
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func() bool { return fake.delivering(ns, "crm") }, eventually, poll).Should(BeTrue())
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
			Expect(streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), nsB)).To(Succeed())
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
			Consistently(func() bool { return fake.delivering(nsA, "thief") }, time.Second, poll).Should(BeFalse())
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
			Expect(js.DeleteConsumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, "gone"))).To(Succeed())
			deleteAndWaitGone(ep)
		})
	})

	Context("when an endpoint is deleted without its cleanup and recreated with the same name", func() {
		It("gives the new endpoint a fresh consumer and no version records", func() {
			ns := newNamespace("reuse")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", readyAndDelivering)
			old := getEndpoint(Default, ns, "crm")
			writeVersion(ns, "crm", "sub_1", 9, 42)
			writeHealth(ns, "crm", dispatcher.Health{Delivered: 5})
			publish(ns, "invoice.paid")
			Eventually(func(g Gomega) {
				info, err := consumerInfo(ns, "crm")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(info.NumPending).To(BeEquivalentTo(1))
			}, eventually, poll).Should(Succeed())
			oldInfo, err := consumerInfo(ns, "crm")
			Expect(err).NotTo(HaveOccurred())

			By("deleting it with the finalizer removed by hand, so no cleanup runs")
			Eventually(func(g Gomega) {
				ep := getEndpoint(g, ns, "crm")
				ep.Finalizers = nil
				g.Expect(k8sClient.Update(ctx, ep)).To(Succeed())
				// Only if the controller has not put the finalizer back.
				rv := ep.ResourceVersion
				g.Expect(k8sClient.Delete(ctx, ep, client.Preconditions{ResourceVersion: &rv})).To(Succeed())
			}, eventually, poll).Should(Succeed())
			Eventually(func() bool {
				return apierrors.IsNotFound(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "crm"}, &v1.WebhookEndpoint{}))
			}, eventually, poll).Should(BeTrue())
			_, err = consumerInfo(ns, "crm")
			Expect(err).NotTo(HaveOccurred(), "the consumer is left behind")
			_, err = versionsKV(ns).Get(ctx, versionKey(ns, "crm", "sub_1"))
			Expect(err).NotTo(HaveOccurred(), "the version record is left behind")

			By("recreating an endpoint of the same name")
			create(newEndpoint(ns, "crm", withEventTypes("invoice.*")))
			expectConditions(ns, "crm", map[string]string{v1.ReadyCondition: "True/Ready"})
			fresh := getEndpoint(Default, ns, "crm")
			Expect(fresh.UID).NotTo(Equal(old.UID))
			info, err := consumerInfo(ns, "crm")
			Expect(err).NotTo(HaveOccurred())
			GinkgoWriter.Printf("old consumer created %s (pending %d), new one %s (pending %d, ack pending %d), metadata %v\n",
				oldInfo.Created, oldInfo.NumPending, info.Created, info.NumPending, info.NumAckPending, info.Config.Metadata)
			Expect(info.Created).To(BeTemporally(">", oldInfo.Created), "a fresh consumer, not the old one")
			Expect(info.NumPending+uint64(info.NumAckPending)).To(BeZero(), "the old endpoint's events must not go to the new URL")
			Expect(info.Config.Metadata).To(HaveKeyWithValue("herald.dev/endpoint-uid", string(fresh.UID)))
			_, err = versionsKV(ns).Get(ctx, versionKey(ns, "crm", "sub_1"))
			Expect(errors.Is(err, jetstream.ErrKeyNotFound)).To(BeTrue(), "version record: got %v", err)
			expectConditions(ns, "crm", readyAndDelivering)
			Expect(getEndpoint(Default, ns, "crm").Status.Totals.Delivered).To(BeZero(), "the old endpoint's totals must not be inherited")
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm") }, eventually, poll).Should(ContainElement("ConsumerReplaced"))
		})
	})

	Context("when reading a reference fails transiently", func() {
		It("neither reports Ready=True nor advances observedGeneration", func() {
			ns := newNamespace("transient")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", readyAndDelivering)

			// A reader the API server refuses (a user without any role):
			// a real, non-NotFound error from a real API server.
			user, err := testEnv.AddUser(envtest.User{Name: "herald-test-nobody"}, nil)
			Expect(err).NotTo(HaveOccurred())
			nobody, err := client.New(user.Config(), client.Options{Scheme: testenv.Scheme()})
			Expect(err).NotTo(HaveOccurred())
			r := &WebhookEndpointReconciler{Client: mgrClient, APIReader: nobody, JS: js, Mode: DispatchInProcess,
				EventsRetention: streams.DefaultLimits().EventsMaxAge, Egress: loopbackEgress, secrets: newSecretReader(nobody, nil)}

			// A pass over a spec change the controller has not seen yet;
			// the pass runs against the real API server and NATS, and is
			// summarised without writing (the suite's controller owns the
			// object's status).
			ep := getEndpoint(Default, ns, "crm")
			seen := ep.Status.ObservedGeneration
			ep.Generation = seen + 1
			obs := r.newObservation()
			err = r.runSteps(ctx, ep, obs)
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsForbidden(errors.Unwrap(err)) || strings.Contains(err.Error(), "forbidden")).To(BeTrue(), "got %v", err)
			summarise(ep, obs)
			GinkgoWriter.Printf("after a forbidden Secret read: Ready=%s (%s), Reconciling=%s, observedGeneration=%d of %d\n",
				condition(ep, v1.ReadyCondition), conditionMessage(ep, v1.ReadyCondition), condition(ep, v1.ReconcilingCondition), ep.Status.ObservedGeneration, ep.Generation)
			Expect(condition(ep, v1.ReadyCondition)).To(Equal("Unknown/APIUnavailable"))
			Expect(condition(ep, v1.ReconcilingCondition)).To(Equal("True/APIUnavailable"))
			Expect(condition(ep, v1.StalledCondition)).To(Equal("absent"))
			Expect(ep.Status.ObservedGeneration).To(Equal(seen))
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

	Context("when the manager keeps events shorter than a policy's window", func() {
		It("marks the policy Stalled with both durations", func() {
			ns := newNamespace("retention")
			p := newPolicy(ns, "slow")
			p.Spec.Window = &metav1.Duration{Duration: 2 * time.Hour}
			create(p)
			key := types.NamespacedName{Namespace: ns, Name: "slow"}
			// The suite's controller (7d retention) has its say first; it
			// then has no reason to run again for this policy.
			Eventually(func(g Gomega) {
				g.Expect(k8sClient.Get(ctx, key, p)).To(Succeed())
				g.Expect(p.Status.ObservedGeneration).To(Equal(p.Generation))
			}, eventually, poll).Should(Succeed())
			Expect(apimeta.FindStatusCondition(p.Status.Conditions, v1.StalledCondition)).To(BeNil())

			// As manager.go wires it with --events-max-age=1h. The suite's
			// controller may yet run again (a conflict's requeue) and write
			// its own view back, so each try reconciles first.
			r := &RetryPolicyReconciler{Client: mgrClient, EventsRetention: time.Hour}
			Eventually(func(g Gomega) {
				_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key})
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(k8sClient.Get(ctx, key, p)).To(Succeed())
				stalled := apimeta.FindStatusCondition(p.Status.Conditions, v1.StalledCondition)
				g.Expect(stalled).NotTo(BeNil(), "conditions: %+v", p.Status.Conditions)
				g.Expect(stalled.Reason).To(Equal(v1.ReasonWindowExceedsRetention))
				g.Expect(stalled.Message).To(And(ContainSubstring("2h"), ContainSubstring("1h")))
				GinkgoWriter.Printf("Stalled: %s\n", stalled.Message)
				ready := apimeta.FindStatusCondition(p.Status.Conditions, v1.ReadyCondition)
				g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			}, eventually, poll).Should(Succeed())
		})
	})
})
