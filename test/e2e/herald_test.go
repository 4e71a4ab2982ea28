//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// dispatcherPods selects a namespace's dispatcher pods.
var dispatcherPods = client.MatchingLabels{"app.kubernetes.io/component": "dispatcher"}

// One cluster, one install: the specs run in order and each uses its own
// event types, so endpoints of one spec never see another's events.
var _ = Describe("Herald in a cluster", Ordered, ContinueOnFailure, func() {
	a, b := tenantA, tenantB

	It("delivers, and `kubectl get webhookendpoints` shows the endpoint Ready, Delivering, backlog 0, last success seconds ago", Label("smoke"), func() {
		a.create(endpoint{name: "happy", path: "/happy", types: []string{"happy.>"}})
		ids := publishMany(a.ns, "happy.created", "happy", 20, 5)
		Eventually(allArrived(a, "/happy", ids)).Should(Succeed())

		Eventually(func(g Gomega) {
			out, err := tryKubectl("get", "webhookendpoints", "-A", "--no-headers")
			g.Expect(err).NotTo(HaveOccurred())
			row := rowOf(out, a.ns, "happy")
			g.Expect(row).To(HaveLen(8), "NAMESPACE NAME URL READY HEALTH BACKLOG LAST-SUCCESS AGE: %q", out)
			g.Expect(row[3]).To(Equal("True"))
			g.Expect(row[4]).To(Equal(v1.ReasonDelivering))
			g.Expect(row[5]).To(Equal("0"))
			g.Expect(row[6]).To(MatchRegexp(`^[0-9]+s$`), "last success seconds ago")
		}).Should(Succeed())
	})

	It("retries 500s on the policy's schedule, shows the failure in status, and dead-letters after the window", func() {
		a.behave("/failing", 500, 0)
		a.create(endpoint{name: "failing", path: "/failing", types: []string{"failing.>"}})
		id := "failing-" + runID
		publish(a.ns, "failing.created", id, "", 0)

		By("status shows the failure while it retries")
		Eventually(func(g Gomega) {
			ep := a.get("failing")
			h := apimeta.FindStatusCondition(ep.Status.Conditions, v1.HealthyCondition)
			g.Expect(h).NotTo(BeNil())
			g.Expect(h.Reason).To(Equal(v1.ReasonFailing))
			g.Expect(ep.Status.LastFailure).NotTo(BeNil())
			g.Expect(ep.Status.LastFailure.StatusCode).To(BeEquivalentTo(500))
			g.Expect(ep.Status.LastFailure.EventID).To(Equal(id))
		}).Should(Succeed())

		By("the event ends dead, never sent, after one attempt per scheduled delay")
		Eventually(func() (string, error) { return eventState(a.ns, "failing", id) }).Should(Equal(dispatcher.StateDead))
		got, err := a.arrivals("/failing")
		Expect(err).NotTo(HaveOccurred())
		Expect(got).To(HaveLen(len(fastSchedule) + 1))
		for i, d := range fastSchedule {
			gap := got[i+1].Time.Sub(got[i].Time)
			lo := time.Duration(float64(d) * (1 - fastJitter))
			// The upper bound allows for JetStream's redelivery and the pull.
			Expect(gap).To(BeNumerically(">=", lo), "gap before attempt %d", i+2)
			Expect(gap).To(BeNumerically("<", lo+d/5+2*time.Second), "gap before attempt %d", i+2)
		}

		By("the dead letter keeps the event with its history")
		dlq, err := js.Stream(context.Background(), streams.DeadLetterStream(a.ns))
		Expect(err).NotTo(HaveOccurred())
		msg, err := dlq.GetLastMsgForSubject(context.Background(), streams.DeadLetterSubject(a.ns, "failing", "*"))
		Expect(err).NotTo(HaveOccurred())
		var dl dispatcher.DeadLetter
		Expect(json.Unmarshal(msg.Data, &dl)).To(Succeed())
		Expect(dl.EventID).To(Equal(id))
		Expect(dl.Attempts).To(HaveLen(len(fastSchedule) + 1))
		Expect(dl.Attempts[len(dl.Attempts)-1].StatusCode).To(Equal(500))
		Eventually(func() int64 { return a.get("failing").Status.Totals.DeadLettered }).Should(BeEquivalentTo(1))
	})

	It("delivers an event published twice with one id once", func() {
		a.create(endpoint{name: "dedupe", path: "/dedupe", types: []string{"dedupe.>"}})
		id := "dedupe-" + runID
		publish(a.ns, "dedupe.created", id, "", 0)
		ack, err := pub.Publish(context.Background(), events.Event{ID: id, Namespace: a.ns, Type: "dedupe.created", Data: []byte(`{}`)})
		Expect(err).NotTo(HaveOccurred())
		Expect(ack.Duplicate).To(BeTrue())
		Eventually(countOf(a, "/dedupe", id)).Should(Equal(1))
		Consistently(countOf(a, "/dedupe", id)).Should(Equal(1))
	})

	It("ends on version 3 when version 3 is published before version 2", func() {
		a.create(endpoint{name: "versions", path: "/versions", types: []string{"versions.>"}})
		key := "sub_" + runID
		v3, v2 := "versions-3-"+runID, "versions-2-"+runID
		publish(a.ns, "versions.updated", v3, key, 3)
		Eventually(countOf(a, "/versions", v3)).Should(Equal(1))
		publish(a.ns, "versions.updated", v2, key, 2)
		Eventually(func() (string, error) { return eventState(a.ns, "versions", v2) }).Should(Equal(dispatcher.StateSuperseded))
		Consistently(countOf(a, "/versions", v2)).Should(BeZero())
	})

	It("runs the mission's example: billing gets both versions at once, CRM times out, recovers on the newest and never goes back", func() {
		a.behave("/crm", 200, time.Hour) // CRM never answers in time
		a.create(endpoint{name: "billing", path: "/billing", types: []string{"subscription.*"}})
		a.create(endpoint{name: "crm", path: "/crm", types: []string{"subscription.*"}, timeout: "1s", maxInFlight: 4})
		key := "sub_123_" + runID
		first, second := "plan-pro-"+runID, "seats-"+runID

		publish(a.ns, "subscription.updated", first, key, 1)
		Eventually(countOf(a, "/billing", first)).Should(Equal(1))
		By("CRM is marked failed on attempt 1 with a retry scheduled")
		Eventually(func(g Gomega) {
			ep := a.get("crm")
			g.Expect(ep.Status.LastFailure).NotTo(BeNil())
			g.Expect(ep.Status.LastFailure.Reason).To(Equal(dispatcher.ReasonTimeout))
			g.Expect(ep.Status.NextRetryTime).NotTo(BeNil())
		}).Should(Succeed())
		Expect(eventState(a.ns, "crm", first)).To(Equal(dispatcher.StateRetrying))

		By("billing gets the second version at once; CRM's is not stuck behind the first")
		publish(a.ns, "subscription.updated", second, key, 2)
		Eventually(countOf(a, "/billing", second)).Should(Equal(1))
		Eventually(countOf(a, "/crm", second)).Should(BeNumerically(">=", 1))

		By("CRM recovers, ends on the newest version, and never goes back")
		healed := time.Now()
		a.behave("/crm", 200, 0)
		Eventually(func() (string, error) { return eventState(a.ns, "crm", second) }).Should(Equal(dispatcher.StateSent))
		// The first version may still have gone first (its retry came due
		// before the second's); it must never go after the second.
		Eventually(func() (string, error) { return eventState(a.ns, "crm", first) }).
			Should(BeElementOf(dispatcher.StateSent, dispatcher.StateSuperseded))
		Consistently(func(g Gomega) {
			got, err := a.arrivals("/crm")
			g.Expect(err).NotTo(HaveOccurred())
			sawNewest := false
			for _, x := range got {
				if x.Time.Before(healed) {
					continue // answered after an hour, long after the dispatcher gave up
				}
				sawNewest = sawNewest || x.ID == second
				g.Expect(sawNewest && x.ID == first).To(BeFalse(), "version 1 arrived after version 2: %+v", got)
			}
			g.Expect(sawNewest).To(BeTrue())
		}).Should(Succeed())
	})

	It("loses nothing when the dispatcher pod is deleted in the middle of 5,000 events", Label("smoke"), func() {
		a.create(endpoint{name: "stream", path: "/stream", types: []string{"stream.>"}, maxInFlight: 32, defaultPolicy: true})
		before := podUIDs(a.ns, dispatcherPods)
		ids := publishWhile(a, "/stream", "stream.updated", 5000, 1500, func() {
			kubectl("-n", a.ns, "delete", "pod", "-l", "app.kubernetes.io/component=dispatcher", "--wait=false")
		})
		expectEveryOneDelivered(a, "stream", "/stream", ids)
		Expect(podUIDs(a.ns, dispatcherPods)).NotTo(ContainElements(before))
	})

	It("loses nothing when the NATS pod restarts in the middle of 5,000 events", func() {
		a.create(endpoint{name: "natsrestart", path: "/natsrestart", types: []string{"natsrestart.>"}, maxInFlight: 32, defaultPolicy: true})
		before := podUIDs("nats", client.MatchingLabels{"app": "nats"})
		ids := publishWhile(a, "/natsrestart", "natsrestart.updated", 5000, 1500, func() {
			kubectl("-n", "nats", "delete", "pod", "-l", "app=nats", "--wait=false")
		})
		expectEveryOneDelivered(a, "natsrestart", "/natsrestart", ids)
		Expect(podUIDs("nats", client.MatchingLabels{"app": "nats"})).NotTo(ContainElements(before))
	})

	It("keeps delivering while the manager restarts, and status catches up", func() {
		a.create(endpoint{name: "managed", path: "/managed", types: []string{"managed.>"}})
		kubectl("-n", "herald-system", "rollout", "restart", "deployment/herald-controller-manager")
		restarted := time.Now()
		ids := publishMany(a.ns, "managed.updated", "managed", 200, 20)
		Eventually(allArrived(a, "/managed", ids)).Should(Succeed())
		kubectl("-n", "herald-system", "rollout", "status", "deployment/herald-controller-manager", "--timeout=3m")
		Eventually(func(g Gomega) {
			ep := a.get("managed")
			g.Expect(ep.Status.Totals.Delivered).To(BeNumerically(">=", len(ids)))
			g.Expect(ep.Status.Backlog).To(BeZero())
			g.Expect(ep.Status.LastSuccessTime).NotTo(BeNil())
			g.Expect(ep.Status.LastSuccessTime.Time).To(BeTemporally(">", restarted.Add(-time.Second)))
		}).Should(Succeed())
	})

	Describe("tenancy", func() {
		It("never sends tenant A's events to tenant B", func() {
			a.create(endpoint{name: "tenancy", path: "/tenancy", types: []string{"tenancy.>"}})
			b.create(endpoint{name: "tenancy", path: "/tenancy", types: []string{"tenancy.>"}})
			ids := publishMany(a.ns, "tenancy.created", "tenancy", 20, 5)
			Eventually(allArrived(a, "/tenancy", ids)).Should(Succeed())
			Consistently(func() ([]arrival, error) { return b.arrivals("/tenancy") }).Should(BeEmpty())
		})

		It("does not let tenant B use tenant A's secret", func() {
			apply(fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: only-a, namespace: %s}\nstringData: {v1: whsec_c2VjcmV0LW9mLXRlbmFudC1h}\n", a.ns))
			b.apply(endpoint{name: "borrower", path: "/borrower", types: []string{"borrower.>"}, secret: "only-a"})
			Eventually(func(g Gomega) {
				c := apimeta.FindStatusCondition(b.get("borrower").Status.Conditions, v1.ReadyCondition)
				g.Expect(c).NotTo(BeNil())
				g.Expect(c.Status).To(BeEquivalentTo("False"))
				g.Expect(c.Reason).To(Equal(v1.ReasonSecretMissing))
			}).Should(Succeed())
			b.delete("borrower")
		})

		It("gives each namespace's dispatcher only the secrets its endpoints name", func() {
			as := func(ns string) string { return "--as=system:serviceaccount:" + ns + ":" + controller.DispatcherName }
			canI := func(args ...string) string {
				out, _ := tryKubectl(append([]string{"auth", "can-i"}, args...)...)
				return strings.TrimSpace(out)
			}
			// Exactly the secrets its endpoints name, by name: no list, no others.
			Expect(canI("get", "secret/signing", "-n", a.ns, as(a.ns))).To(Equal("yes"))
			Expect(canI("get", "secret/only-a", "-n", a.ns, as(a.ns))).To(Equal("no"))
			Expect(canI("list", "secrets", "-n", a.ns, as(a.ns))).To(Equal("no"))
			Expect(canI("get", "secret/signing", "-n", b.ns, as(a.ns))).To(Equal("no"))
			Expect(canI("list", "secrets", "-n", b.ns, as(a.ns))).To(Equal("no"))
			Expect(canI("get", "secret/signing", "-n", a.ns, as(b.ns))).To(Equal("no"))
		})
	})

	Describe("garbage collection", func() {
		It("removes an endpoint's consumer with the endpoint", func() {
			name := streams.ConsumerName(a.ns, "happy")
			_, err := js.Consumer(context.Background(), events.StreamName(a.ns), name)
			Expect(err).NotTo(HaveOccurred())
			a.delete("happy")
			Eventually(func() error {
				_, err := js.Consumer(context.Background(), events.StreamName(a.ns), name)
				return err
			}).Should(MatchError(jetstream.ErrConsumerNotFound))
		})

		It("removes a namespace's dispatcher and its RBAC with the last endpoint", func() {
			key := types.NamespacedName{Namespace: b.ns, Name: controller.DispatcherName}
			Expect(k8s.Get(context.Background(), key, &appsv1.Deployment{})).To(Succeed())
			kubectl("-n", b.ns, "delete", "webhookendpoints", "--all", "--wait=true", "--timeout=2m")
			for _, obj := range []client.Object{&appsv1.Deployment{}, &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}} {
				Eventually(func() bool {
					return apierrors.IsNotFound(k8s.Get(context.Background(), key, obj))
				}).Should(BeTrue(), "%T %s removed", obj, key)
			}
		})
	})
})

// publishMany publishes n events over keys keys (versions rising per key).
func publishMany(ns, typ, prefix string, n, keys int) []string {
	GinkgoHelper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%s-%d", prefix, runID, i)
		publish(ns, typ, ids[i], fmt.Sprintf("%s-key-%d", prefix, i%keys), int64(i/keys+1))
	}
	return ids
}

// publishKeys is how many keys publishWhile spreads its events over.
const publishKeys = 500

// publishWhile publishes n keyed events from a few goroutines and calls
// breakIt once `after` of them have arrived at path.
func publishWhile(t *tenant, path, typ string, n, after int, breakIt func()) []string {
	GinkgoHelper()
	prefix := strings.Split(typ, ".")[0]
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%s-%d", prefix, runID, i)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	const publishers = 4
	for range publishers {
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				// Keys without versions: the stream's order is the key's order.
				publish(t.ns, typ, ids[i], fmt.Sprintf("%s-key-%d", prefix, i%publishKeys), 0)
			}
		}()
	}
	var arrived int
	Eventually(func() (int, error) {
		got, err := t.counts(path)
		arrived = len(got)
		return arrived, err
	}).Should(BeNumerically(">=", after))
	breakIt()
	AddReportEntry(prefix+" broken", fmt.Sprintf("broken after %d of %d events had arrived (%d published)", arrived, n, min(int(next.Load()), n)))
	wg.Wait()
	return ids
}

// expectEveryOneDelivered checks that each event reached the receiver or,
// once a later event of its key was delivered ahead of it, was superseded
// with its log entry saying so; and reports duplicates. The last event of
// each key (publishWhile's last `keys`) has nothing to be superseded by, so
// it must arrive.
func expectEveryOneDelivered(t *tenant, endpointName, path string, ids []string) {
	GinkgoHelper()
	Eventually(allArrived(t, path, ids[len(ids)-publishKeys:])).WithTimeout(5 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	var counts map[string]int
	var superseded int
	Eventually(func(g Gomega) {
		var err error
		counts, err = t.counts(path)
		g.Expect(err).NotTo(HaveOccurred())
		byState := map[string][]string{}
		superseded = 0
		for _, id := range ids {
			if counts[id] > 0 {
				continue
			}
			state, err := eventState(t.ns, endpointName, id)
			g.Expect(err).NotTo(HaveOccurred())
			if state == dispatcher.StateSuperseded {
				superseded++
				continue
			}
			byState[state] = append(byState[state], id)
		}
		g.Expect(byState).To(BeEmpty(), "events neither delivered nor superseded, by state")
	}).WithTimeout(2 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	dups := 0
	for _, id := range ids {
		dups += max(counts[id]-1, 0)
	}
	AddReportEntry(endpointName+" outcomes", fmt.Sprintf("%d events: %d superseded, %d duplicate deliveries", len(ids), superseded, dups))
	fmt.Fprintf(GinkgoWriter, "%s: %d events, %d superseded, %d duplicate deliveries\n", endpointName, len(ids), superseded, dups)
}

func allArrived(t *tenant, path string, ids []string) func(Gomega) {
	return func(g Gomega) {
		counts, err := t.counts(path)
		g.Expect(err).NotTo(HaveOccurred())
		for _, id := range ids {
			g.Expect(counts).To(HaveKey(id))
		}
	}
}

func countOf(t *tenant, path, id string) func() (int, error) {
	return func() (int, error) {
		counts, err := t.counts(path)
		return counts[id], err
	}
}

// rowOf finds the row of namespace/name in `kubectl get -A --no-headers`.
func rowOf(out, ns, name string) []string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == ns && f[1] == name {
			return f
		}
	}
	return nil
}

// podUIDs are the pods' UIDs, not names: a StatefulSet's replacement pod
// has the old one's name.
func podUIDs(ns string, selector client.MatchingLabels) []types.UID {
	GinkgoHelper()
	var pods corev1.PodList
	Expect(k8s.List(context.Background(), &pods, client.InNamespace(ns), selector)).To(Succeed())
	var uids []types.UID
	for _, p := range pods.Items {
		uids = append(uids, p.UID)
	}
	return uids
}
