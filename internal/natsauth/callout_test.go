package natsauth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	dv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/natsauth/natsauthtest"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

// receiver counts the webhooks it got, by event id, with their bodies.
type receiver struct {
	*httptest.Server
	status int
	mu     sync.Mutex
	got    map[string][]byte
}

func newReceiver(status int) *receiver {
	rc := &receiver{status: status, got: map[string][]byte{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			ID   string          `json:"id"`
			Data json.RawMessage `json:"data"`
		}
		_ = json.NewDecoder(r.Body).Decode(&env)
		rc.mu.Lock()
		rc.got[env.ID] = env.Data
		rc.mu.Unlock()
		w.WriteHeader(rc.status)
	}))
	DeferCleanup(rc.Close)
	return rc
}

func (rc *receiver) received() map[string]string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]string{}
	for id, b := range rc.got {
		out[id] = string(b)
	}
	return out
}

// runDispatcher runs a real dispatcher on c (a dispatcher token's
// connection) for one endpoint "crm" of the tenant, and its consumer.
func (t *tenant) runDispatcher(ctx context.Context, c *conn, url string, policy dispatcher.Policy) {
	GinkgoHelper()
	var spec v1.WebhookEndpointSpec
	spec.EventTypes = []string{">"}
	cfg, err := streams.ConsumerConfig(t.ns, "crm", &spec)
	Expect(err).NotTo(HaveOccurred())
	_, err = adminJS.CreateOrUpdateConsumer(ctx, events.StreamName(t.ns), cfg)
	Expect(err).NotTo(HaveOccurred())
	key, err := signing.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	Expect(err).NotTo(HaveOccurred())
	loopback := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	dctx, cancel := context.WithCancel(context.Background())
	d, err := dispatcher.New(dctx, c.js, dispatcher.WithLogger(discard()), dispatcher.WithEgressGuard(loopback),
		dispatcher.WithHealthInterval(100*time.Millisecond))
	Expect(err).NotTo(HaveOccurred())
	d.Upsert(dispatcher.Endpoint{Namespace: t.ns, Name: "crm", URL: url, Keys: []signing.Key{key},
		Timeout: 2 * time.Second, PerKey: true, MaxInFlight: 4, Policy: policy})
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(dctx) }()
	DeferCleanup(func() { cancel(); <-done })
}

func (c *conn) publish(ctx context.Context, ns, id string) error {
	pub, err := events.NewPublisher(c.js)
	if err != nil {
		return err
	}
	_, err = pub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "invoice.paid", Key: id, Data: []byte(fmt.Sprintf(`{"id":%q}`, id))})
	return err
}

// refused makes an attempt and waits for the server's permissions
// violation naming its subject: NATS refuses it, it does not just fail.
func (c *conn) refused(a natsauthtest.Attack) {
	GinkgoHelper()
	natsauthtest.Drain(c.errs)
	_ = a.Try(c.nc) // a refused request gets no reply: a timeout
	Eventually(c.errs).Should(Receive(WithTransform(func(e error) string { return e.Error() }, MatchRegexp(natsauthtest.Violation(a.Subject)))),
		"NATS must refuse %s %s", a.Kind, a.Subject)
}

var _ = Describe("NATS identity per namespace", Ordered, func() {
	var a, b *tenant
	BeforeAll(func(ctx SpecContext) {
		a = newTenant(ctx, "tenant-a")
		b = newTenant(ctx, "tenant-b")
	})

	It("lets a namespace's dispatcher do its whole job with its own token: deliver, log, dead-letter, versions, health", func(ctx SpecContext) {
		ok := newReceiver(http.StatusOK)
		a.runDispatcher(ctx, a.connect(ctx, natsauth.DispatcherServiceAccount), ok.URL, dispatcher.DefaultPolicy())
		producer := a.connect(ctx, "billing")
		for i := range 5 {
			Expect(producer.publish(ctx, a.ns, fmt.Sprintf("evt_a%d", i))).To(Succeed())
		}
		Eventually(ok.received).Should(HaveLen(5))
		// Its delivery log, read back with a reader's rights (the
		// dispatcher has them too).
		reader := a.connect(ctx, natsauth.DispatcherServiceAccount)
		Eventually(func(g Gomega) {
			hist, err := dispatcher.History(ctx, reader.js, a.ns, "crm", "evt_a4")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(hist).NotTo(BeEmpty())
			g.Expect(hist[len(hist)-1].Outcome).To(Equal(dispatcher.OutcomeDelivered))
		}).Should(Succeed())
	})

	It("lets the dispatcher dead-letter with its own token", func(ctx SpecContext) {
		c := newTenant(ctx, "tenant-c")
		failing := newReceiver(http.StatusBadRequest) // terminal: dead at once
		c.runDispatcher(ctx, c.connect(ctx, natsauth.DispatcherServiceAccount), failing.URL, dispatcher.DefaultPolicy())
		Expect(c.connect(ctx, "billing").publish(ctx, c.ns, "evt_dead")).To(Succeed())
		Eventually(func(g Gomega) {
			s, err := adminJS.Stream(ctx, streams.DeadLetterStream(c.ns))
			g.Expect(err).NotTo(HaveOccurred())
			info, err := s.Info(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.State.Msgs).To(BeNumerically("==", 1))
		}).Should(Succeed())
	})

	It("refuses every credential of namespace A everything of namespace B, and B's deliveries stay complete and unaltered", func(ctx SpecContext) {
		rcB := newReceiver(http.StatusOK)
		b.runDispatcher(ctx, b.connect(ctx, natsauth.DispatcherServiceAccount), rcB.URL, dispatcher.DefaultPolicy())
		producerB := b.connect(ctx, "billing")
		want := map[string]string{}
		publishB := func(id string) {
			GinkgoHelper()
			Expect(producerB.publish(ctx, b.ns, id)).To(Succeed())
			want[id] = fmt.Sprintf(`{"id":%q}`, id)
		}
		publishB("evt_b_before")

		for _, sa := range []string{natsauth.DispatcherServiceAccount, "billing"} {
			By("as " + a.ns + "/" + sa)
			c := a.connect(ctx, sa)
			for _, attack := range natsauthtest.Against(b.ns, "crm") {
				c.refused(attack)
			}
			publishB("evt_b_during_" + sa)
		}

		By("publishing A's events with B's message ids")
		producerA := a.connect(ctx, "billing")
		forged := &nats.Msg{Subject: events.Subject(a.ns, "invoice.paid"), Data: []byte(`{"forged":true}`),
			Header: nats.Header{events.HeaderID: []string{events.MsgID(b.ns, "evt_b_after")}}}
		_, err := producerA.js.PublishMsg(ctx, forged)
		Expect(err).NotTo(HaveOccurred(), "A may publish its own events, whatever id it picks")
		publishB("evt_b_after")

		Eventually(rcB.received).Should(Equal(want))
		Consistently(rcB.received, 2*time.Second).Should(Equal(want))

		By("rolling up A's own bucket, which must not reach B's")
		kv, err := adminJS.KeyValue(ctx, streams.HealthBucket(b.ns))
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { _, err := kv.Get(ctx, streams.EndpointKey(b.ns, "crm")); return err }).Should(Succeed())
		dispatcherA := a.connect(ctx, natsauth.DispatcherServiceAccount)
		rollup := &nats.Msg{Subject: streams.KVSubject(streams.HealthBucket(a.ns), streams.EndpointKey(a.ns, "crm")), Data: []byte(`{}`),
			Header: nats.Header{"Nats-Rollup": []string{"all"}}}
		_, err = dispatcherA.js.PublishMsg(ctx, rollup)
		Expect(err).To(HaveOccurred(), "the buckets refuse rollups")
		_, err = kv.Get(ctx, streams.EndpointKey(b.ns, "crm"))
		Expect(err).NotTo(HaveOccurred(), "B's health record survives")
	})

	// NATS checks a publish's subject against the user's permissions,
	// never its reply subject, and JetStream answers (API responses,
	// publish acks, pulled messages) to the reply subject. Each namespace
	// is an account of its own, so the answer lands in A's account,
	// where B's subjects lead nowhere.
	It("keeps JetStream's answers to A inside A, whatever reply subject A names", func(ctx SpecContext) {
		msgsOf := func(stream string) func(Gomega) uint64 {
			return func(g Gomega) uint64 {
				s, err := adminJS.Stream(ctx, stream)
				g.Expect(err).NotTo(HaveOccurred())
				return s.CachedInfo().State.Msgs
			}
		}
		health, err := adminJS.KeyValue(ctx, streams.HealthBucket(b.ns))
		Expect(err).NotTo(HaveOccurred())
		healthKey := streams.EndpointKey(b.ns, "crm")
		revision := func() uint64 {
			e, err := health.Get(ctx, healthKey)
			if err != nil {
				return 0
			}
			return e.Revision()
		}
		eventsB, before := msgsOf(events.StreamName(b.ns)), revision()
		n := eventsB(Default)

		By("a publish ack addressed to B's events")
		producerA := a.connect(ctx, "billing")
		msg := &nats.Msg{Subject: events.Subject(a.ns, "invoice.paid"), Reply: events.Subject(b.ns, "invoice.paid"), Data: []byte(`{}`),
			Header: nats.Header{events.HeaderID: []string{"reply-attack"}}}
		Expect(producerA.nc.PublishMsg(msg)).To(Succeed())
		By("a JetStream API answer addressed to B's health key")
		dispatcherA := a.connect(ctx, natsauth.DispatcherServiceAccount)
		Expect(dispatcherA.nc.PublishRequest("$JS.API.STREAM.INFO."+events.StreamName(a.ns), streams.KVSubject(streams.HealthBucket(b.ns), healthKey), nil)).To(Succeed())
		Expect(dispatcherA.nc.Flush()).To(Succeed())

		Consistently(eventsB, 2*time.Second).Should(Equal(n), "A's publish ack landed in B's events")
		Expect(revision()).To(Equal(before), "a JetStream answer to A overwrote B's health record")
	})

	It("keeps each ServiceAccount's replies its own: a producer cannot read what its namespace's dispatcher pulls", func(ctx SpecContext) {
		producer := a.connect(ctx, "billing")
		for _, s := range []string{
			natsauth.Inbox(a.ns, natsauth.DispatcherServiceAccount) + ".>", natsauth.Inbox(a.ns, "") + ".>",
			natsauth.Inbox(a.ns, "bill") + ".>", // a prefix of another name is another inbox
		} {
			producer.refused(natsauthtest.Attack{Kind: "subscribe", Subject: s})
		}
	})

	// A replayed copy is sent even when its version was delivered, so only
	// the operator may write one: a producer that could would bypass
	// newest-version-wins, and a dispatcher that could would resend at will.
	It("lets nobody of a namespace forge a replay in it", func(ctx SpecContext) {
		for _, sa := range []string{"billing", natsauth.DispatcherServiceAccount} {
			c := a.connect(ctx, sa)
			c.refused(natsauthtest.Attack{Kind: "publish", Subject: streams.ReplaySubject(a.ns, "crm", "uid", 1)})
		}
		producer := a.connect(ctx, "billing")
		producer.refused(natsauthtest.Attack{Kind: "publish", Subject: streams.ReplayOutcomeSubject(a.ns, "uid", 1)})
	})

	It("gives the delivery API's ServiceAccount every namespace's log to read, and nothing to write", func(ctx SpecContext) {
		r := newTenant(ctx, "herald-read")
		Expect(k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "apiserver", Namespace: r.ns}})).To(Succeed())
		ok := newReceiver(http.StatusOK)
		b.runDispatcher(ctx, b.connect(ctx, natsauth.DispatcherServiceAccount), ok.URL, dispatcher.DefaultPolicy())
		Expect(b.connect(ctx, "billing").publish(ctx, b.ns, "evt_read")).To(Succeed())
		Eventually(ok.received).Should(HaveKey("evt_read"))

		token := r.token(ctx, "apiserver", natsauth.DefaultAudience)
		inbox, _, err := natsauth.TokenReaderInbox(token)
		Expect(err).NotTo(HaveOccurred())
		c := &conn{errs: make(chan error, 100)}
		c.nc, err = nats.Connect(natsURL, nats.Token(token), nats.CustomInboxPrefix(inbox), nats.MaxReconnects(0),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				select {
				case c.errs <- err:
				default:
				}
			}))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(c.nc.Close)
		c.js, err = jetstream.New(c.nc, jetstream.WithDefaultTimeout(2*time.Second))
		Expect(err).NotTo(HaveOccurred())
		reader := &deliverylog.Reader{JS: c.js}
		Expect(reader.Namespaces(ctx)).To(ContainElements(a.ns, b.ns))
		Eventually(func(g Gomega) {
			var ds []dv1.WebhookDelivery
			g.Expect(reader.Deliveries(ctx, b.ns, deliverylog.Selector{EventID: "evt_read"}, func(d *dv1.WebhookDelivery) { ds = append(ds, *d) })).To(Succeed())
			g.Expect(ds).To(HaveLen(1))
			g.Expect(ds[0].Status.Phase).To(Equal(dv1.PhaseSent))
		}).Should(Succeed())
		for _, attack := range []natsauthtest.Attack{
			{Kind: "publish", Subject: events.Subject(b.ns, "plan.changed")},
			{Kind: "publish", Subject: streams.AttemptSubject(b.ns, "crm", "evt_read")},
			{Kind: "publish", Subject: streams.DeadLetterSubject(b.ns, "crm", "evt_read")},
			{Kind: "publish", Subject: "$JS.ACK." + events.StreamName(b.ns) + ".x.1.1.1.1.1"},
			{Kind: "subscribe", Subject: "_INBOX.>"},
		} {
			c.refused(attack)
		}
	})

	It("refuses a ServiceAccount without Herald rights, a token for another audience, and no token", func(ctx SpecContext) {
		_, err := a.dial(a.token(ctx, "nobody", natsauth.DefaultAudience))
		Expect(err).To(MatchError(ContainSubstring("Authorization Violation")))
		_, err = a.dial(a.token(ctx, "billing", "https://kubernetes.default.svc"))
		Expect(err).To(MatchError(ContainSubstring("Authorization Violation")))
		_, err = a.dial("")
		Expect(err).To(HaveOccurred())
	})

	It("issues a user that lives no longer than its token, with the namespace's permissions only", func(ctx SpecContext) {
		token := a.token(ctx, natsauth.DispatcherServiceAccount, natsauth.DefaultAudience)
		req := jwt.NewAuthorizationRequestClaims("server")
		req.UserNkey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
		req.ConnectOptions.Token = token
		signed, id, err := callout.Authorize(ctx, req)
		Expect(err).NotTo(HaveOccurred())
		Expect(id.Namespace).To(Equal(a.ns))
		uc, err := jwt.DecodeUserClaims(signed)
		Expect(err).NotTo(HaveOccurred())
		ns, err := keys.NamespaceKey(a.ns)
		Expect(err).NotTo(HaveOccurred())
		Expect(uc.Issuer).To(Equal(must(ns.PublicKey())), "a user of A's own account")
		Expect(time.Unix(uc.Expires, 0)).To(BeTemporally("<=", time.Now().Add(tokenTTL+time.Second)))
		Expect(time.Unix(uc.Expires, 0)).To(BeTemporally(">", time.Now()))
		Expect(uc.Permissions).To(Equal(natsauth.Permissions(a.ns, natsauth.DispatcherServiceAccount, natsauth.RoleDispatcher)))
	})
})

var _ jetstream.JetStream // the suite's admin handle

func must[T any](v T, err error) T {
	GinkgoHelper()
	Expect(err).NotTo(HaveOccurred())
	return v
}
