package kubectlherald_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/events"
)

// receiver answers each path with its code after its delay, and counts
// what arrived by webhook-id.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	codes   map[string]int // by path, or by "path id" for one event
	delays  map[string]time.Duration
	arrived map[string]int
	closed  chan struct{}
}

// Close lets every held answer go first: httptest waits for them.
func (r *receiver) Close() {
	close(r.closed)
	r.Server.Close()
}

func newReceiver() *receiver {
	r := &receiver{codes: map[string]int{}, delays: map[string]time.Duration{}, arrived: map[string]int{}, closed: make(chan struct{})}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		code, delay := r.codes[req.URL.Path], r.delays[req.URL.Path]
		one := req.URL.Path + " " + req.Header.Get("webhook-id")
		if c, ok := r.codes[one]; ok {
			code, delay = c, 0
		}
		r.arrived[one]++
		r.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
			return
		case <-r.closed:
			return
		}
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
		// A hostile receiver's answer tries to clear the support person's
		// terminal.
		_, _ = fmt.Fprintf(w, `{"answer":%d}`+"\x1b[2J", code)
	}))
	return r
}

func (r *receiver) behave(path string, code int, delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.codes[path], r.delays[path] = code, delay
}

// refuse answers code at once to one event at path, whatever the path does.
func (r *receiver) refuse(path, id string, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.codes[path+" "+id] = code
}

// fix makes path answer 200 at once, to every event.
func (r *receiver) fix(path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.codes {
		if strings.HasPrefix(k, path+" ") {
			delete(r.codes, k)
		}
	}
	r.codes[path], r.delays[path] = http.StatusOK, 0
}

func (r *receiver) count(path, id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.arrived[path+" "+id]
}

// createEndpoint makes an endpoint with its own signing secret, and waits
// until it is Ready.
func createEndpoint(ctx context.Context, ns, name, url, policy string, types ...string) {
	GinkgoHelper()
	Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-signing"},
		StringData: map[string]string{"v1": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}})).To(Succeed())
	Expect(k8s.Create(ctx, &v1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.WebhookEndpointSpec{
		URL: url, EventTypes: types, SigningSecretRef: v1.LocalObjectReference{Name: name + "-signing"},
		RetryPolicyRef: &v1.LocalObjectReference{Name: policy}, Timeout: &metav1.Duration{Duration: 300 * time.Millisecond},
	}})).To(Succeed())
	Eventually(func(g Gomega) {
		ep := &v1.WebhookEndpoint{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ep)).To(Succeed())
		g.Expect(apimeta.IsStatusConditionTrue(ep.Status.Conditions, v1.ReadyCondition)).To(BeTrue())
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

// createPolicy makes a retry policy: every apart, for window.
func createPolicy(ctx context.Context, ns, name string, every, window time.Duration) {
	GinkgoHelper()
	Expect(k8s.Create(ctx, &v1.RetryPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.RetryPolicySpec{
		Schedule: []metav1.Duration{{Duration: every}}, Window: &metav1.Duration{Duration: window},
	}})).To(Succeed())
}

var _ = Describe("kubectl herald on the brief's example: billing delivered, CRM timing out, the ERP refusing", Ordered, func() {
	const ns = "shop"
	var rr *receiver
	ev := "sub_123"

	endpoint := func(ctx context.Context, name, policy string) {
		GinkgoHelper()
		createEndpoint(ctx, ns, name, rr.URL+"/"+name, policy, "subscription.*")
	}
	policy := func(ctx context.Context, name string, every, window time.Duration) {
		GinkgoHelper()
		createPolicy(ctx, ns, name, every, window)
	}
	run := func(ctx context.Context, args ...string) string {
		GinkgoHelper()
		out, err := herald(ctx, adminKC, args...)
		Expect(err).NotTo(HaveOccurred(), out)
		return out
	}

	BeforeAll(func(ctx SpecContext) {
		ensureNamespace(ctx, ns)
		ensureNamespace(ctx, "elsewhere")
		rr = newReceiver()
		DeferCleanup(rr.Close)
		rr.behave("/crm", 200, time.Hour) // never in time
		rr.behave("/erp", 503, 0)
		// CRM gives up after two seconds; the ERP is retried for an hour.
		policy(ctx, "brief", 200*time.Millisecond, 2*time.Second)
		policy(ctx, "patient", 30*time.Second, time.Hour)
		endpoint(ctx, "billing", "brief")
		endpoint(ctx, "crm", "brief")
		endpoint(ctx, "erp", "patient")
		_, err := pub.Publish(ctx, events.Event{ID: ev, Namespace: ns, Type: "subscription.updated", Key: "sub_123", Version: 1, Data: json.RawMessage(`{"plan":"pro"}`)})
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() int { return rr.count("/billing", ev) }).WithTimeout(30 * time.Second).Should(Equal(1))
		By("waiting for CRM's dead letter")
		Eventually(func(g Gomega) {
			out, err := herald(ctx, adminKC, "deadletters", "-n", ns)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(out).To(ContainSubstring(ev))
		}).WithTimeout(30 * time.Second).Should(Succeed())
	}, NodeTimeout(2*time.Minute))

	It("failures: the failing endpoints worst first, with their codes, the oldest pending and the last error", func(ctx SpecContext) {
		out := run(ctx, "failures", "-n", ns)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		Expect(lines).To(HaveLen(3), out)
		Expect(strings.Fields(lines[0])).To(Equal([]string{"ENDPOINT", "RETRYING", "FAILED", "CODES", "OLDEST", "PENDING", "LAST", "ERROR"}))
		// One each: the tie goes to the one pending longest, the ERP; CRM's
		// dead letter has nothing pending.
		Expect(lines[1]).To(MatchRegexp(`^erp\s+1\s+0\s+503×1\s+\d+s\s+\S`))
		Expect(lines[2]).To(MatchRegexp(`^crm\s+0\s+1\s+none×1\s+-\s+\S`))
		Expect(out).NotTo(ContainSubstring("billing"))
		Expect(out).NotTo(ContainSubstring("\x1b["), "no colour off a terminal")

		By("-A: every namespace the user may read, with the namespace first")
		all := run(ctx, "failures", "-A")
		Expect(all).To(MatchRegexp(`(?m)^NAMESPACE\s+ENDPOINT`))
		Expect(all).To(MatchRegexp(`(?m)^shop\s+erp\s`))

		By("a namespace with nothing failing says so")
		Expect(run(ctx, "failures", "-n", "elsewhere")).To(Equal("Nothing is failing in namespace elsewhere.\n"))
	})

	It("failures -o json and -o yaml: the delivery API's objects, kind and all, for scripts", func(ctx SpecContext) {
		var list deliveryv1.DeliverySummaryList
		Expect(json.Unmarshal([]byte(run(ctx, "failures", "-n", ns, "-o", "json")), &list)).To(Succeed())
		Expect(list.Kind).To(Equal("DeliverySummaryList"))
		Expect(list.Items).To(HaveLen(1))
		Expect(list.Items[0].Status.Retrying).To(BeEquivalentTo(1))
		Expect(list.Items[0].Status.Failed).To(BeEquivalentTo(1))
		Expect(run(ctx, "failures", "-n", ns, "-o", "yaml")).To(ContainSubstring("kind: DeliverySummaryList"))
		_, err := herald(ctx, adminKC, "failures", "-n", ns, "-o", "wide")
		Expect(err).To(MatchError(ContainSubstring(`unknown output format "wide"`)))
	})

	It("event: the event at every endpoint, then each attempt with its code, latency and answer", func(ctx SpecContext) {
		out := run(ctx, "event", ev, "-n", ns)
		Expect(out).To(HavePrefix("Event sub_123 in namespace shop\n"))
		Expect(out).To(MatchRegexp(`(?m)^billing\s+Sent\s+1\s+200\s`))
		Expect(strings.Index(out, "billing")).To(BeNumerically("<", strings.Index(out, "crm")), "endpoints in name order")
		Expect(out).To(MatchRegexp(`(?m)^crm\s+Failed\s+\d+\s+none\s+Timeout\s`))
		// "ERP refused: 503, retry in 29s".
		Expect(out).To(MatchRegexp(`(?m)^erp\s+Retrying\s+1\s+503\s+HTTPError\s+in \d+s\s`))
		Expect(out).To(ContainSubstring("erp: attempts"))
		Expect(out).NotTo(ContainSubstring("\x1b"), "a receiver's answer cannot steer the terminal")
		Expect(out).To(ContainSubstring(`{"answer":503}^[[2J`))
		Expect(out).To(MatchRegexp(`(?m)^1\s+\S+Z\s+retrying\s+503\s+\S+s\s.*\{"answer":503\}`))

		var list deliveryv1.WebhookDeliveryList
		Expect(json.Unmarshal([]byte(run(ctx, "event", ev, "-n", ns, "-o", "json")), &list)).To(Succeed())
		Expect(list.Items).To(HaveLen(3))

		_, err := herald(ctx, adminKC, "event", "no-such-event", "-n", ns)
		Expect(err).To(MatchError(ContainSubstring(`no endpoint in namespace shop has event "no-such-event"`)))
	})

	It("deadletters: the support row of each, filtered by endpoint and reason", func(ctx SpecContext) {
		out := run(ctx, "deadletters", "-n", ns, "--endpoint", "crm")
		Expect(out).To(MatchRegexp(`(?m)^EVENT\s+ENDPOINT\s+REASON`))
		Expect(out).To(MatchRegexp(`(?m)^sub_123\s+crm\s+WindowExhausted\s`))
		Expect(run(ctx, "deadletters", "-n", ns, "--endpoint", "billing")).To(Equal("No dead letters.\n"))
		Expect(run(ctx, "deadletters", "-n", ns, "--reason", "Expired")).To(Equal("No dead letters.\n"))
		Expect(run(ctx, "deadletters", "-A")).To(MatchRegexp(`(?m)^NAMESPACE\s+EVENT`))
	})

	It("replay: refuses to act unconfirmed off a terminal, names a missing endpoint, dry-runs, then replays CRM's dead letter to Succeeded", func(ctx SpecContext) {
		_, err := herald(ctx, adminKC, "replay", "-n", ns, "--endpoint", "crm")
		Expect(err).To(MatchError(ContainSubstring("choose what to replay")))

		out, err := herald(ctx, adminKC, "replay", "-n", ns, "--endpoint", "crm", "--dead-letters")
		Expect(err).To(MatchError(ContainSubstring("add --yes")))
		Expect(out).To(ContainSubstring("Dry run: 1 of 1 matched events would be sent to crm, 0 skipped."))

		_, err = herald(ctx, adminKC, "replay", "-n", ns, "--endpoint", "cmr", "--dead-letters", "--yes")
		Expect(err).To(MatchError(ContainSubstring("EndpointMissing")))

		out = run(ctx, "replay", "-n", ns, "--endpoint", "crm", "--dead-letters", "--dry-run")
		Expect(out).To(ContainSubstring("Dry run: 1 of 1 matched events would be sent to crm, 0 skipped."))
		Expect(out).To(MatchRegexp(`(?m)^sub_123\s+WouldSend\s`))
		Expect(rr.count("/crm", ev)).To(BeNumerically(">=", 1))
		before := rr.count("/crm", ev)

		By("CRM fixed, the replay sends the event once more and reports it")
		rr.behave("/crm", 200, 0)
		out = run(ctx, "replay", "-n", ns, "--endpoint", "crm", "--dead-letters", "--yes", "--rate", "100")
		Expect(out).To(MatchRegexp(`webhookreplay/crm-\S+ created`))
		Expect(out).To(MatchRegexp(`(?m)^1/1\s+delivered 1`))
		Expect(out).To(MatchRegexp(`(?m)^Succeeded\s+1 delivered, 0 superseded, 0 failed, 0 skipped of 1$`))
		Expect(rr.count("/crm", ev)).To(Equal(before + 1))

		By("the dry runs are gone; the replay stays, for the endpoint's history")
		Eventually(func(g Gomega) {
			var rps v1.WebhookReplayList
			g.Expect(k8s.List(ctx, &rps, client.InNamespace(ns))).To(Succeed())
			g.Expect(rps.Items).To(HaveLen(1))
			g.Expect(rps.Items[0].Spec.DryRun).To(BeFalse())
			g.Expect(rps.Items[0].DeletionTimestamp).To(BeNil())
		}).Should(Succeed())
		Expect(run(ctx, "deadletters", "-n", ns, "--endpoint", "crm")).To(MatchRegexp(`(?m)^sub_123\s+crm\s+WindowExhausted\s.*crm-\S+`))
	})

	It("shows a user what RBAC lets them see, and nothing more", func(ctx SpecContext) {
		kc := viewer(ctx, "support-viewer", ns)
		out, err := herald(ctx, kc, "failures", "-n", ns)
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("erp"))
		_, err = herald(ctx, kc, "failures", "-n", "elsewhere")
		Expect(err).To(MatchError(ContainSubstring("forbidden")))
		_, err = herald(ctx, kc, "deadletters", "-A")
		Expect(err).To(MatchError(ContainSubstring("forbidden")))
		_, err = herald(ctx, kc, "replay", "-n", ns, "--endpoint", "crm", "--dead-letters", "--yes")
		Expect(err).To(MatchError(ContainSubstring("forbidden")), "view may not create replays")
	})
})
