package apiserver_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/delivery"
	"github.com/herald-dev/herald/pkg/events"
)

// logAttempts writes delivery-log entries as the dispatcher does, to
// test reading them apart from delivering.
func logAttempts(ctx context.Context, as ...dispatcher.Attempt) {
	GinkgoHelper()
	for _, a := range as {
		Expect(streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), a.Namespace)).To(Succeed())
		b, err := json.Marshal(a)
		Expect(err).NotTo(HaveOccurred())
		_, err = js.Publish(ctx, streams.AttemptSubject(a.Namespace, a.Endpoint, a.EventID), b)
		Expect(err).NotTo(HaveOccurred())
	}
}

// retrying is a log entry of a retrying delivery to crm.
func retrying(ns, id string, attempt int, at time.Time) dispatcher.Attempt {
	next := at.Add(time.Hour)
	return dispatcher.Attempt{
		EventID: id, Namespace: ns, Endpoint: "crm", Type: "plan.changed", Sequence: 1, Attempt: attempt, Time: at,
		Outcome: dispatcher.OutcomeRetrying, StatusCode: 401, Reason: "HTTP401", Error: "HTTP 401", NextAttempt: &next,
	}
}

func kubectl(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

var _ = Describe("the delivery API behind kube-apiserver", func() {
	It("shows a tenant with view in A its deliveries and refuses it B's", func(ctx SpecContext) {
		now := time.Now()
		logAttempts(ctx, retrying("rbac-a", "evt_a1", 1, now), retrying("rbac-b", "evt_b1", 1, now))
		aliceCfg, _ := viewer(ctx, "alice", "rbac-a")
		ensureNamespace(ctx, "rbac-b")
		alice, err := delivery.NewForConfig(aliceCfg)
		Expect(err).NotTo(HaveOccurred())

		l, err := alice.Deliveries(ctx, "rbac-a", metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(l.Items).To(HaveLen(1))
		Expect(l.Items[0].Name).To(Equal("evt_a1.crm"))
		Expect(l.Items[0].Status.Phase).To(Equal(v1.PhaseRetrying))

		_, err = alice.Deliveries(ctx, "rbac-b", metav1.ListOptions{})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		_, err = alice.Delivery(ctx, "rbac-b", "evt_b1", "crm")
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		_, err = alice.Deliveries(ctx, "", metav1.ListOptions{})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "a list across namespaces: %v", err)
	})

	It("checks authorization itself, not only behind kube-apiserver", func(ctx SpecContext) {
		logAttempts(ctx, retrying("direct-b", "evt_d1", 1, time.Now()))
		viewer(ctx, "mallory", "direct-a")
		// The front proxy's own certificate, with a user kube-apiserver
		// never vouched for in B: only herald's SubjectAccessReview stops it.
		cert, err := tls.LoadX509KeyPair(frontProxy.CertFile, frontProxy.KeyFile)
		Expect(err).NotTo(HaveOccurred())
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
		get := func(ns string) int {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://%s/apis/delivery.herald.dev/v1alpha1/namespaces/%s/webhookdeliveries", heraldAddr, ns), nil)
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("X-Remote-User", "mallory")
			resp, err := hc.Do(req)
			Expect(err).NotTo(HaveOccurred())
			_ = resp.Body.Close()
			return resp.StatusCode
		}
		Expect(get("direct-a")).To(Equal(http.StatusOK))
		Expect(get("direct-b")).To(Equal(http.StatusForbidden))
	})

	It("shows an event the consumer has not handed out as Queued, and one handed out but not tried as Sending", func(ctx SpecContext) {
		const ns = "pending"
		Expect(streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), ns)).To(Succeed())
		ccfg, err := streams.ConsumerConfig(ns, "later", &heraldv1.WebhookEndpointSpec{})
		Expect(err).NotTo(HaveOccurred())
		cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamName(ns), ccfg)
		Expect(err).NotTo(HaveOccurred())
		pub, err := events.NewPublisher(js)
		Expect(err).NotTo(HaveOccurred())
		for _, id := range []string{"evt_p1", "evt_p2"} {
			_, err := pub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "plan.changed", Key: "sub_9", Version: 1, Data: json.RawMessage(`{}`)})
			Expect(err).NotTo(HaveOccurred())
		}
		// A dispatcher that took the first and has not tried it yet.
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		Expect(err).NotTo(HaveOccurred())
		for range batch.Messages() {
		}
		cfg, _ := viewer(ctx, "dave", ns)
		c, err := delivery.NewForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func(g Gomega) {
			l, err := c.Deliveries(ctx, ns, metav1.ListOptions{FieldSelector: "endpoint=later"})
			g.Expect(err).NotTo(HaveOccurred())
			got := map[string]v1.Phase{}
			for _, d := range l.Items {
				got[d.Spec.EventID] = d.Status.Phase
			}
			g.Expect(got).To(Equal(map[string]v1.Phase{"evt_p1": v1.PhaseSending, "evt_p2": v1.PhaseQueued}))
		}).Should(Succeed())
		d, err := c.Delivery(ctx, ns, "evt_p2", "later")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.Status.Phase).To(Equal(v1.PhaseQueued))
		Expect(d.Spec.Key).To(Equal("sub_9"))
		l, err := c.Deliveries(ctx, ns, metav1.ListOptions{FieldSelector: "phase=Queued"})
		Expect(err).NotTo(HaveOccurred())
		Expect(l.Items).To(HaveLen(1))
	})

	It("prints the support row in kubectl, with field selectors and pages", func(ctx SpecContext) {
		now := time.Now()
		for i := range 25 {
			logAttempts(ctx, retrying("table", fmt.Sprintf("evt_%02d", i), 2, now.Add(time.Duration(i-30)*time.Second)))
		}
		logAttempts(ctx, dispatcher.Attempt{EventID: "evt_ok", Namespace: "table", Endpoint: "billing", Type: "plan.changed", Attempt: 1,
			Time: now, Outcome: dispatcher.OutcomeDelivered, StatusCode: 200})
		_, kc := viewer(ctx, "carol", "table")

		out, err := kubectl(ctx, kc, "get", "whd", "-n", "table", "--field-selector", "phase=Retrying")
		Expect(err).NotTo(HaveOccurred(), out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		Expect(strings.Fields(lines[0])).To(Equal([]string{"EVENT", "ENDPOINT", "PHASE", "ATTEMPTS", "CODE", "LAST", "ERROR", "NEXT", "RETRY", "AGE"}))
		Expect(lines).To(HaveLen(26))
		// Newest first; next retry an hour after the last attempt.
		Expect(lines[1]).To(MatchRegexp(`^evt_24\s+crm\s+Retrying\s+2\s+401\s+HTTP 401\s+in 5[89]m`))
		Expect(out).NotTo(ContainSubstring("evt_ok"))

		out, err = kubectl(ctx, kc, "get", "whd", "-n", "table", "--field-selector", "eventID=evt_ok", "--no-headers")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`^evt_ok\s+billing\s+Sent\s+1\s+200\s+`))

		out, err = kubectl(ctx, kc, "get", "whd", "-n", "table", "--field-selector", "colour=red")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("field label not supported: colour"))

		out, err = kubectl(ctx, kc, "get", "whd", "-n", "table", "--field-selector", "eventID=a>b")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("eventID"))

		By("paging through the retrying ones, 10 at a time")
		c, err := delivery.NewForConfig(mustConfig("carol"))
		Expect(err).NotTo(HaveOccurred())
		var seen []string
		opts := metav1.ListOptions{FieldSelector: "phase=Retrying", Limit: 10}
		for pages := 0; ; pages++ {
			Expect(pages).To(BeNumerically("<", 3))
			l, err := c.Deliveries(ctx, "table", opts)
			Expect(err).NotTo(HaveOccurred())
			for _, d := range l.Items {
				seen = append(seen, d.Spec.EventID)
			}
			if opts.Continue = l.Continue; opts.Continue == "" {
				break
			}
		}
		want := []string{}
		for i := 24; i >= 0; i-- {
			want = append(want, fmt.Sprintf("evt_%02d", i))
		}
		Expect(seen).To(Equal(want))
		_, err = c.Deliveries(ctx, "table", metav1.ListOptions{FieldSelector: "phase=Sent", Continue: opts.Continue + "x"})
		Expect(apierrors.IsBadRequest(err)).To(BeTrue(), "%v", err)
	})
})

// mustConfig is the rest config of a user viewer already made.
func mustConfig(name string) *rest.Config {
	GinkgoHelper()
	u, err := env.AddUser(envtest.User{Name: name}, cfg)
	Expect(err).NotTo(HaveOccurred())
	return u.Config()
}
