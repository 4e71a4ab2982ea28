package apiserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/delivery"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

// runDispatcher delivers to eps for the spec's duration, as the operator
// would set them up: the namespace's streams, a consumer per endpoint.
type routed struct {
	ep    dispatcher.Endpoint
	types []string
}

func runDispatcher(eps ...routed) {
	GinkgoHelper()
	ctx, cancel := context.WithCancel(context.Background())
	guard := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	d, err := dispatcher.New(ctx, js, dispatcher.WithLogger(GinkgoLogr), dispatcher.WithEgressGuard(guard), dispatcher.WithHealthInterval(100*time.Millisecond))
	Expect(err).NotTo(HaveOccurred())
	for _, r := range eps {
		ep := r.ep
		Expect(streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), ep.Namespace)).To(Succeed())
		cfg, err := streams.ConsumerConfig(ep.Namespace, ep.Name, &heraldv1.WebhookEndpointSpec{EventTypes: r.types})
		Expect(err).NotTo(HaveOccurred())
		_, err = js.CreateOrUpdateConsumer(ctx, events.StreamName(ep.Namespace), cfg)
		Expect(err).NotTo(HaveOccurred())
		d.Upsert(ep)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	DeferCleanup(func() { cancel(); <-done })
}

func endpointTo(ns, name, url string, retryEvery time.Duration) dispatcher.Endpoint {
	key, err := signing.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	Expect(err).NotTo(HaveOccurred())
	p := dispatcher.DefaultPolicy()
	p.Schedule, p.Window = []time.Duration{retryEvery}, time.Minute
	return dispatcher.Endpoint{Namespace: ns, Name: name, URL: url, Keys: []signing.Key{key},
		Timeout: 300 * time.Millisecond, PerKey: true, MaxInFlight: 4, Policy: p}
}

func phases(ds []v1.WebhookDelivery) map[string]v1.Phase {
	out := map[string]v1.Phase{}
	for _, d := range ds {
		out[d.Spec.Endpoint] = d.Status.Phase
	}
	return out
}

var _ = Describe("the brief's example: billing answers, the CRM times out", Ordered, func() {
	const ns = "shop"
	var (
		crmDown atomic.Bool
		kc      string
		c       *delivery.Client
		pub     *events.Publisher
	)
	BeforeAll(func(ctx SpecContext) {
		crmDown.Store(true)
		billing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
		DeferCleanup(billing.Close)
		crm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if crmDown.Load() {
				select { // the dispatcher's timeout ends it first
				case <-r.Context().Done():
				case <-time.After(2 * time.Second):
				}
			}
		}))
		DeferCleanup(crm.Close)
		gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no such hook"}`))
		}))
		DeferCleanup(gone.Close)
		runDispatcher(
			routed{ep: endpointTo(ns, "billing", billing.URL, time.Second)},
			routed{ep: endpointTo(ns, "crm", crm.URL, 3*time.Second)},
			routed{ep: endpointTo(ns, "legacy", gone.URL, time.Second), types: []string{"plan.cancelled"}},
		)
		var cfg = mustConfig("support")
		_, kc = viewer(ctx, "support", ns)
		var err error
		c, err = delivery.NewForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		pub, err = events.NewPublisher(js)
		Expect(err).NotTo(HaveOccurred())
	})

	publish := func(ctx context.Context, id, typ string, version int64) {
		GinkgoHelper()
		_, err := pub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: typ, Key: "sub_1", Version: version, Data: json.RawMessage(`{"plan":"pro"}`)})
		Expect(err).NotTo(HaveOccurred())
	}

	It("shows billing Sent and the CRM Retrying with its next attempt, the newer version waiting behind it", func(ctx SpecContext) {
		publish(ctx, "evt_1", "plan.changed", 1)
		publish(ctx, "evt_2", "plan.changed", 2)
		Eventually(func(g Gomega) {
			out, err := kubectl(ctx, kc, "get", "whd", "-n", ns, "--field-selector", "eventID=evt_1", "--no-headers")
			g.Expect(err).NotTo(HaveOccurred(), out)
			g.Expect(out).To(MatchRegexp(`(?m)^evt_1\s+billing\s+Sent\s+1\s+200\s`))
			g.Expect(out).To(MatchRegexp(`(?m)^evt_1\s+crm\s+Retrying\s+[1-9]\d*\s+\S.*\s+in \ds\s`))
		}).WithTimeout(20 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

		ds, err := c.EventStatus(ctx, ns, "evt_2")
		Expect(err).NotTo(HaveOccurred())
		Expect(phases(ds)).To(HaveKeyWithValue("billing", v1.PhaseSent))
		// The dispatcher does not hold a key's newer version behind a
		// retrying one: it may already be trying it too.
		Expect(phases(ds)["crm"]).To(BeElementOf(v1.PhaseQueued, v1.PhaseSending, v1.PhaseRetrying), "accepted but not sent is visible")

		d, err := c.Delivery(ctx, ns, "evt_1", "crm")
		Expect(err).NotTo(HaveOccurred())
		Expect(d.Status.History).NotTo(BeEmpty())
		Expect(d.Status.History[0].Error).NotTo(BeEmpty())
		Expect(d.Status.FirstAttemptTime).NotTo(BeNil())

		s, err := c.Summary(ctx, ns)
		Expect(err).NotTo(HaveOccurred())
		Expect(s.Status.Retrying).To(BeNumerically(">=", 1))
		Expect(s.Status.Endpoints).NotTo(BeEmpty())
		Expect(s.Status.Endpoints[0].Endpoint).To(Equal("crm"))
	})

	It("shows the newest version Sent everywhere after the CRM recovers, the older one Superseded where it came second", func(ctx SpecContext) {
		crmDown.Store(false)
		Eventually(func(g Gomega) {
			ds, err := c.EventStatus(ctx, ns, "evt_2")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(phases(ds)).To(Equal(map[string]v1.Phase{"billing": v1.PhaseSent, "crm": v1.PhaseSent}))
			ds, err = c.EventStatus(ctx, ns, "evt_1")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(phases(ds)).To(HaveKeyWithValue("billing", v1.PhaseSent))
			// Whichever retry came first: never back to version 1.
			g.Expect(phases(ds)["crm"]).To(BeElementOf(v1.PhaseSent, v1.PhaseSuperseded))
		}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

		publish(ctx, "evt_0", "plan.changed", 1)
		Eventually(func(g Gomega) {
			ds, err := c.EventStatus(ctx, ns, "evt_0")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(phases(ds)).To(Equal(map[string]v1.Phase{"billing": v1.PhaseSuperseded, "crm": v1.PhaseSuperseded}))
		}).WithTimeout(20 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	})

	It("lists a dead letter after a 404 with the code, and gets it with the response body and the payload", func(ctx SpecContext) {
		publish(ctx, "evt_9", "plan.cancelled", 3)
		Eventually(func(g Gomega) {
			out, err := kubectl(ctx, kc, "get", "deadletters", "-n", ns, "--no-headers")
			g.Expect(err).NotTo(HaveOccurred(), out)
			g.Expect(out).To(MatchRegexp(`(?m)^evt_9\s+legacy\s+TerminalResponse\s+1\s+404\s`))
		}).WithTimeout(20 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

		dl, err := c.DeadLetter(ctx, ns, "evt_9", "legacy")
		Expect(err).NotTo(HaveOccurred())
		Expect(dl.Status.LastResponse).To(ContainSubstring("no such hook"))
		Expect(dl.Status.Payload).NotTo(BeNil())
		Expect(string(dl.Status.Payload.Raw)).To(ContainSubstring(`"plan":"pro"`))
		Expect(dl.Status.History).NotTo(BeEmpty())

		l, err := c.DeadLetters(ctx, ns, metav1.ListOptions{FieldSelector: "reason=TerminalResponse,endpoint=legacy"})
		Expect(err).NotTo(HaveOccurred())
		Expect(l.Items).To(HaveLen(1))
		Expect(l.Items[0].Status.Payload).To(BeNil(), "a list leaves the payload to get")

		ds, err := c.EventStatus(ctx, ns, "evt_9")
		Expect(err).NotTo(HaveOccurred())
		Expect(phases(ds)).To(HaveKeyWithValue("legacy", v1.PhaseFailed))

		s, err := c.Summary(ctx, ns)
		Expect(err).NotTo(HaveOccurred())
		Expect(s.Status.Failed).To(Equal(int32(1)))
		Expect(s.Status.Codes).To(ContainElement(v1.CodeCount{Code: 404, Failed: 1}))
		out, err := kubectl(ctx, kc, "get", "deliverysummaries", "-n", ns)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`(?m)^0\s+1\s+404x1\s+legacy\(1\)`))
	})
})
