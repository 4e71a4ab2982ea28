package dispatcher_test

import (
	"context"
	"net/netip"
	"net/url"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
)

var _ = Describe("Dispatcher egress guard", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	// refusedOnce checks that evt was attempted once, refused with no
	// response, and dead-lettered, naming addr and the flag to open it.
	refusedOnce := func(evt, addr string) {
		GinkgoHelper()
		var dls []dispatcher.DeadLetter
		Eventually(func(g Gomega) {
			dls = deadLetters(g, ns)
			g.Expect(dls).To(HaveLen(1))
		}).Should(Succeed())
		dl := dls[0]
		Expect(dl.EventID).To(Equal(evt))
		Expect(dl.Reason).To(Equal(dispatcher.DeadTerminal))
		Expect(dl.Why).To(ContainSubstring("egress refused"))
		Expect(dl.AttemptCount).To(Equal(1))
		Expect(dl.Attempts).To(HaveLen(1))

		h := history(ns, "crm", evt)
		Expect(h).To(HaveLen(1))
		a := h[0]
		Expect(a.Outcome).To(Equal(dispatcher.OutcomeDead))
		Expect(a.Reason).To(Equal(dispatcher.ReasonEgressRefused))
		Expect(a.StatusCode).To(BeZero())
		Expect(a.Response).To(BeEmpty())
		Expect(a.NextAttempt).To(BeNil())
		Expect(a.Error).To(ContainSubstring("egress to " + addr + " refused"))
		Expect(a.Error).To(ContainSubstring("--egress-allow=" + addr + "/"))
	}

	Context("when the endpoint is on loopback and loopback is not allowed", func() {
		It("refuses the attempt, sends nothing and dead-letters the event", func() {
			rc := newReceiver(always(200))
			startDispatcherWith([]dispatcher.Option{dispatcher.WithEgressGuard(egress.New(egress.Config{}))},
				endpoint(ns, "crm", rc.URL))
			publish(ns, "invoice.paid", "evt_refused", "inv_1", 1, map[string]any{})

			refusedOnce("evt_refused", "127.0.0.1")
			Expect(rc.count()).To(BeZero())
			Eventually(status(ns, "evt_refused")).Should(ConsistOf(HaveField("State", dispatcher.StateDead)))
		})

		It("refuses a hostname that resolves to loopback", func() {
			rc := newReceiver(always(200))
			u, err := url.Parse(rc.URL)
			Expect(err).NotTo(HaveOccurred())
			host := "http://localhost:" + u.Port() + "/"
			startDispatcherWith([]dispatcher.Option{dispatcher.WithEgressGuard(egress.New(egress.Config{}))},
				endpoint(ns, "crm", host))
			publish(ns, "invoice.paid", "evt_localhost", "inv_1", 1, map[string]any{})

			// localhost may resolve to ::1 first; either is loopback.
			var dls []dispatcher.DeadLetter
			Eventually(func(g Gomega) {
				dls = deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(1))
			}).Should(Succeed())
			a := history(ns, "crm", "evt_localhost")
			Expect(a).To(HaveLen(1))
			Expect(a[0].Reason).To(Equal(dispatcher.ReasonEgressRefused))
			Expect(a[0].Error).To(Or(ContainSubstring("egress to 127.0.0.1 refused"), ContainSubstring("egress to ::1 refused")))
			Expect(rc.count()).To(BeZero())
		})
	})

	Context("when loopback is allowed", func() {
		It("delivers", func() {
			rc := newReceiver(always(200))
			g := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
			startDispatcherWith([]dispatcher.Option{dispatcher.WithEgressGuard(g)}, endpoint(ns, "crm", rc.URL))
			publish(ns, "invoice.paid", "evt_allowed", "inv_1", 1, map[string]any{})

			Eventually(rc.ids).Should(ConsistOf("evt_allowed"))
			Eventually(status(ns, "evt_allowed")).Should(ConsistOf(HaveField("State", dispatcher.StateSent)))
		})
	})

	It("refuses a nil guard", func() {
		_, err := dispatcher.New(context.Background(), js, dispatcher.WithEgressGuard(nil))
		Expect(err).To(MatchError(dispatcher.ErrInvalidOption))
		Expect(err.Error()).To(ContainSubstring("egress"))
	})
})
