package dispatcher_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

func always(status int) func(int, request) (int, http.Header, time.Duration) {
	return func(int, request) (int, http.Header, time.Duration) { return status, nil, 0 }
}

var _ = Describe("Dispatcher", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Context("when the receiver answers 200", func() {
		It("delivers a signed Standard Webhooks request that the reference library verifies", func() {
			rc := newReceiver(always(200))
			startDispatcher(endpoint(ns, "billing", rc.URL))
			publish(ns, "invoice.paid", "evt_1", "inv_1", 1, map[string]any{"amount": 42})

			Eventually(rc.count).Should(Equal(1))
			r := rc.requests()[0]
			Expect(r.Header.Get("Content-Type")).To(Equal("application/json"))
			Expect(r.Header.Get("User-Agent")).To(HavePrefix("Herald-Webhooks/"))
			Expect(r.Envelope.ID).To(Equal("evt_1"))
			Expect(r.Envelope.Type).To(Equal("invoice.paid"))
			Expect(r.Envelope.Key).To(Equal("inv_1"))
			Expect(r.Envelope.Version).To(BeEquivalentTo(1))
			Expect(string(r.Envelope.Data)).To(MatchJSON(`{"amount":42}`))
			wh, err := standardwebhooks.NewWebhook(secretA)
			Expect(err).NotTo(HaveOccurred())
			Expect(wh.Verify(r.Body, r.Header)).To(Succeed())

			Eventually(status(ns, "evt_1")).Should(ConsistOf(HaveField("State", dispatcher.StateSent)))
			Eventually(func(g Gomega) {
				h := healthOf(g, ns, "billing")
				g.Expect(h.Delivered).To(BeEquivalentTo(1))
				g.Expect(h.LastSuccess).NotTo(BeNil())
				g.Expect(h.ConsecutiveFailures).To(BeZero())
			}).Should(Succeed())
		})

		It("delivers an event published twice with one id once", func() {
			rc := newReceiver(always(200))
			startDispatcher(endpoint(ns, "billing", rc.URL))
			publish(ns, "invoice.paid", "evt_dup", "inv_1", 1, map[string]any{})
			publish(ns, "invoice.paid", "evt_dup", "inv_1", 1, map[string]any{})
			publish(ns, "invoice.paid", "evt_after", "inv_2", 1, map[string]any{})

			Eventually(rc.ids).Should(ConsistOf("evt_dup", "evt_after"))
			Consistently(rc.count, 500*time.Millisecond).Should(Equal(2))
		})

		It("signs with every secret while one rotates, and each signature verifies", func() {
			rc := newReceiver(always(200))
			ep := endpoint(ns, "crm", rc.URL)
			d := startDispatcher(ep)
			publish(ns, "a.b", "evt_before", "", 0, map[string]any{})
			Eventually(rc.count).Should(Equal(1))

			ep.Keys = keys(secretA, secretB)
			d.Upsert(ep)
			publish(ns, "a.b", "evt_overlap", "", 0, map[string]any{})
			Eventually(rc.count).Should(Equal(2))
			r := rc.requests()[1]
			Expect(strings.Fields(r.Header.Get("webhook-signature"))).To(HaveLen(2))
			for _, s := range []string{secretA, secretB} {
				_, err := signing.Verify(s, r.Header, r.Body, 0)
				Expect(err).NotTo(HaveOccurred())
				wh, err := standardwebhooks.NewWebhook(s)
				Expect(err).NotTo(HaveOccurred())
				Expect(wh.Verify(r.Body, r.Header)).To(Succeed())
			}

			ep.Keys = keys(secretB)
			d.Upsert(ep)
			publish(ns, "a.b", "evt_after", "", 0, map[string]any{})
			Eventually(rc.count).Should(Equal(3))
			r = rc.requests()[2]
			_, err := signing.Verify(secretA, r.Header, r.Body, 0)
			Expect(err).To(MatchError(signing.ErrNoMatchingSignature))
			_, err = signing.Verify(secretB, r.Header, r.Body, 0)
			Expect(err).NotTo(HaveOccurred())
		})
	})

	Context("when the receiver fails with 500, then times out, then answers too slowly", func() {
		It("retries on the schedule within the jitter, logs every attempt, and never shows the event as sent", func() {
			schedule := []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 900 * time.Millisecond}
			rc := newReceiver(func(n int, _ request) (int, http.Header, time.Duration) {
				switch n {
				case 1:
					return 500, nil, 0
				case 2:
					return 200, nil, time.Hour // never answers in time
				default:
					return 200, nil, 700 * time.Millisecond // answers after the timeout
				}
			})
			ep := endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Timeout = 400 * time.Millisecond
				e.Policy = fastPolicy(schedule...)
				e.Policy.MaxAttempts = 4
			})
			startDispatcher(ep)
			publish(ns, "subscription.updated", "evt_fail", "sub_1", 1, map[string]any{})

			Eventually(rc.count, 10*time.Second).Should(Equal(4))
			Eventually(func(g Gomega) { g.Expect(deadLetters(g, ns)).To(HaveLen(1)) }, 5*time.Second).Should(Succeed())

			hist := history(ns, "crm", "evt_fail")
			Expect(hist).To(HaveLen(4))
			Expect(hist[0]).To(And(HaveField("StatusCode", 500), HaveField("Outcome", dispatcher.OutcomeRetrying), HaveField("Reason", dispatcher.ReasonHTTPError)))
			Expect(hist[1]).To(And(HaveField("Reason", dispatcher.ReasonTimeout), HaveField("Outcome", dispatcher.OutcomeRetrying)))
			Expect(hist[2]).To(And(HaveField("Reason", dispatcher.ReasonTimeout), HaveField("Outcome", dispatcher.OutcomeRetrying)))
			Expect(hist[3]).To(And(HaveField("Outcome", dispatcher.OutcomeDead), HaveField("Why", "max attempts reached")))
			for i, a := range hist {
				Expect(a.Attempt).To(Equal(i + 1))
			}

			// Each retry starts at least the delay less the jitter after the
			// previous attempt ended; the receiver saw when each started.
			got := rc.requests()
			for i := 1; i < len(got); i++ {
				delay := schedule[min(i-1, len(schedule)-1)]
				ended := hist[i-1].Time
				Expect(got[i].At.Sub(ended)).To(BeNumerically(">=", time.Duration(float64(delay)*0.8)-20*time.Millisecond),
					"retry %d came too early", i)
				Expect(got[i].At.Sub(ended)).To(BeNumerically("<=", time.Duration(float64(delay)*1.2)+2*time.Second),
					"retry %d came too late", i)
			}
			Expect(status(ns, "evt_fail")(Default)).To(ConsistOf(HaveField("State", dispatcher.StateDead)))
		})

		It("shows retrying with the next attempt time while it fails", func() {
			rc := newReceiver(always(500))
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Policy = fastPolicy(time.Hour)
				e.Policy.Window = 2 * time.Hour
			}))
			publish(ns, "a.b", "evt_r", "k", 1, map[string]any{})
			Eventually(status(ns, "evt_r")).Should(ConsistOf(And(
				HaveField("State", dispatcher.StateRetrying),
				HaveField("Last.NextAttempt", Not(BeNil())),
			)))
			Eventually(func(g Gomega) {
				h := healthOf(g, ns, "crm")
				g.Expect(h.ConsecutiveFailures).To(BeEquivalentTo(1))
				g.Expect(h.LastFailure).NotTo(BeNil())
				g.Expect(h.LastFailure.StatusCode).To(Equal(500))
				g.Expect(h.NextRetry).NotTo(BeNil())
			}).Should(Succeed())
		})
	})

	DescribeTable("a terminal answer is tried once and dead-lettered with the response",
		func(code int) {
			rc := newReceiver(always(code))
			startDispatcher(endpoint(ns, "crm", rc.URL))
			id := fmt.Sprintf("evt_%d", code)
			publish(ns, "a.b", id, "k", 1, map[string]any{})

			Eventually(func(g Gomega) {
				dls := deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(1))
				g.Expect(dls[0].EventID).To(Equal(id))
				g.Expect(dls[0].Why).To(Equal("terminal response"))
				g.Expect(dls[0].Attempts).To(HaveLen(1))
				g.Expect(dls[0].Attempts[0].StatusCode).To(Equal(code))
				g.Expect(dls[0].Attempts[0].Response).To(Equal(fmt.Sprintf("answer %d", code)))
				g.Expect(string(dls[0].Body)).To(ContainSubstring(`"id":"` + id + `"`))
			}).Should(Succeed())
			Consistently(rc.count, 500*time.Millisecond).Should(Equal(1))
			Expect(dispatcher.ResponsesCounted(ns, "crm", code)).To(Equal(1.0), "herald_responses_total by code")
		},
		Entry("400", 400), Entry("401", 401), Entry("403", 403),
		Entry("404", 404), Entry("410", 410), Entry("422", 422),
	)

	It("does not follow a 302 and counts it as a failure", func() {
		target := newReceiver(always(200))
		rc := newReceiver(func(int, request) (int, http.Header, time.Duration) {
			return http.StatusFound, http.Header{"Location": {target.URL}}, 0
		})
		startDispatcher(endpoint(ns, "crm", rc.URL))
		publish(ns, "a.b", "evt_302", "", 0, map[string]any{})
		Eventually(func(g Gomega) {
			dls := deadLetters(g, ns)
			g.Expect(dls).To(HaveLen(1))
			g.Expect(dls[0].Attempts[0].Reason).To(Equal(dispatcher.ReasonRedirect))
		}).Should(Succeed())
		Expect(target.count()).To(BeZero())
		Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "crm").FailedAttempts).To(BeEquivalentTo(1)) }).Should(Succeed())
	})

	Context("when the receiver answers 429 with Retry-After", func() {
		It("waits as asked, up to the policy's cap", func() {
			rc := newReceiver(func(n int, _ request) (int, http.Header, time.Duration) {
				switch n {
				case 1:
					return 429, http.Header{"Retry-After": {"1"}}, 0
				case 2:
					return 429, http.Header{"Retry-After": {"3600"}}, 0
				}
				return 200, nil, 0
			})
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Policy = fastPolicy(50 * time.Millisecond)
				e.Policy.RetryAfterMax = 1500 * time.Millisecond
			}))
			publish(ns, "a.b", "evt_429", "", 0, map[string]any{})
			Eventually(rc.count, 10*time.Second).Should(Equal(3))
			got := rc.requests()
			Expect(got[1].At.Sub(got[0].At)).To(BeNumerically(">=", 950*time.Millisecond))
			Expect(got[2].At.Sub(got[1].At)).To(BeNumerically(">=", 1450*time.Millisecond))
			Expect(got[2].At.Sub(got[1].At)).To(BeNumerically("<", 10*time.Second))
		})
	})

	Context("when the retry window runs out", func() {
		It("dead-letters the event with its whole history", func() {
			rc := newReceiver(always(503))
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Policy = fastPolicy(200 * time.Millisecond)
				e.Policy.Window = time.Second
				e.Policy.Jitter = 0
			}))
			publish(ns, "a.b", "evt_window", "k", 1, map[string]any{})
			Eventually(func(g Gomega) {
				dls := deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(1))
				g.Expect(dls[0].Why).To(Equal("retry window exhausted"))
				g.Expect(len(dls[0].Attempts)).To(BeNumerically(">=", 3))
				g.Expect(dls[0].Attempts).To(HaveLen(rc.count()))
				for _, a := range dls[0].Attempts {
					g.Expect(a.StatusCode).To(Equal(503))
				}
			}, 10*time.Second).Should(Succeed())
		})
	})

	Context("ordering and versions", func() {
		It("delivers the events of one key one at a time, in stream order", func() {
			var inFlight, maxInFlight atomic.Int32
			rc := newReceiver(func(int, request) (int, http.Header, time.Duration) {
				n := inFlight.Add(1)
				for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
				}
				time.Sleep(5 * time.Millisecond) // hold the request so an overlap would show
				inFlight.Add(-1)
				return 200, nil, 0
			})
			startDispatcher(endpoint(ns, "crm", rc.URL))
			for v := int64(1); v <= 20; v++ {
				publish(ns, "a.b", fmt.Sprintf("evt_o%d", v), "sub_1", v, map[string]any{})
			}
			Eventually(rc.count).Should(Equal(20))
			for i, r := range rc.requests() {
				Expect(r.Envelope.Version).To(BeEquivalentTo(i + 1))
			}
			Expect(maxInFlight.Load()).To(BeEquivalentTo(1))
		})

		It("ends on version 3 when version 3 is delivered before version 2, and records 2 as superseded", func() {
			rc := newReceiver(always(200))
			startDispatcher(endpoint(ns, "crm", rc.URL))
			publish(ns, "a.b", "evt_v3", "sub_1", 3, map[string]any{"v": 3})
			Eventually(rc.count).Should(Equal(1))
			publish(ns, "a.b", "evt_v2", "sub_1", 2, map[string]any{"v": 2})

			Eventually(status(ns, "evt_v2")).Should(ConsistOf(HaveField("State", dispatcher.StateSuperseded)))
			Expect(rc.ids()).To(Equal([]string{"evt_v3"}))
			Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "crm").Superseded).To(BeEquivalentTo(1)) }).Should(Succeed())
		})

		It("keeps every endpoint's version cache within one byte budget, and still supersedes an older version of a key it forgot", func() {
			const budget = 8 << 10 // about 80 keys, against 1,000 delivered
			rc := newReceiver(always(200))
			d := startDispatcherWith([]dispatcher.Option{dispatcher.WithVersionCacheBytes(budget)},
				endpoint(ns, "billing", rc.URL+"/billing"), endpoint(ns, "crm", rc.URL+"/crm"))
			for i := range 500 {
				publish(ns, "a.b", fmt.Sprintf("evt_new_%d", i), fmt.Sprintf("sub_%d", i), 2, map[string]any{"v": 2})
			}
			Eventually(rc.count, 30*time.Second).Should(Equal(1000))
			Eventually(d.VersionCacheBytes).Should(BeNumerically("<=", budget))
			Expect(d.VersionCacheBytes()).To(BeNumerically(">", 0))

			for i := range 20 {
				publish(ns, "a.b", fmt.Sprintf("evt_old_%d", i), fmt.Sprintf("sub_%d", i), 1, map[string]any{"v": 1})
			}
			for i := range 20 {
				Eventually(status(ns, fmt.Sprintf("evt_old_%d", i))).Should(HaveEach(HaveField("State", dispatcher.StateSuperseded)))
			}
			Expect(rc.count()).To(Equal(1000))
		})

		It("runs the MISSION example: billing gets both versions at once, CRM is not stuck and ends on the newest", func() {
			billing := newReceiver(always(200))
			var crmUp = make(chan struct{})
			crm := newReceiver(func(int, request) (int, http.Header, time.Duration) {
				select {
				case <-crmUp:
					return 200, nil, 0
				default:
					return 200, nil, time.Hour // times out
				}
			})
			startDispatcher(
				endpoint(ns, "billing", billing.URL),
				endpoint(ns, "crm", crm.URL, func(e *dispatcher.Endpoint) {
					e.Timeout = 300 * time.Millisecond
					e.Policy = fastPolicy(time.Second)
				}),
			)
			publish(ns, "subscription.updated", "evt_plan", "sub_123", 1, map[string]any{"plan": "pro"})
			Eventually(billing.ids).Should(Equal([]string{"evt_plan"}))
			Eventually(status(ns, "evt_plan")).Should(ContainElement(And(
				HaveField("Endpoint", "crm"), HaveField("State", dispatcher.StateRetrying),
				HaveField("Last.Reason", dispatcher.ReasonTimeout), HaveField("Last.Attempt", 1))))

			publish(ns, "subscription.updated", "evt_seats", "sub_123", 2, map[string]any{"seats": 5})
			Eventually(billing.ids).Should(Equal([]string{"evt_plan", "evt_seats"}))
			// CRM's later version is tried without waiting for the first to succeed.
			Eventually(crm.ids).Should(ContainElement("evt_seats"))

			close(crmUp)
			Eventually(status(ns, "evt_seats")).Should(ContainElement(And(HaveField("Endpoint", "crm"), HaveField("State", dispatcher.StateSent))))
			Eventually(status(ns, "evt_plan")).Should(ContainElement(And(HaveField("Endpoint", "crm"),
				HaveField("State", BeElementOf(dispatcher.StateSent, dispatcher.StateSuperseded)))))
			ids := crm.ids()
			lastSeats := -1
			for i, id := range ids {
				if id == "evt_seats" {
					lastSeats = i
				}
			}
			// Once the newer version could have landed, the older one never follows it.
			var deliveredAfter []string
			for _, r := range crm.requests()[lastSeats+1:] {
				deliveredAfter = append(deliveredAfter, r.Envelope.ID)
			}
			Consistently(func() []string { return crm.ids()[lastSeats+1:] }, time.Second).ShouldNot(ContainElement("evt_plan"))
			Expect(deliveredAfter).NotTo(ContainElement("evt_plan"))
			Expect(crm.requests()[lastSeats].Envelope.Version).To(BeEquivalentTo(2))
		})
	})

	Context("when one endpoint times out and another returns 500 for everything", func() {
		It("still delivers to a healthy endpoint of the same namespace", func() {
			healthy := newReceiver(always(200))
			failing := newReceiver(always(500))
			slow := newReceiver(func(int, request) (int, http.Header, time.Duration) { return 200, nil, time.Hour })
			startDispatcher(
				endpoint(ns, "healthy", healthy.URL),
				endpoint(ns, "failing", failing.URL),
				endpoint(ns, "slow", slow.URL, func(e *dispatcher.Endpoint) { e.Timeout = 500 * time.Millisecond }),
			)
			for i := range 100 {
				publish(ns, "a.b", fmt.Sprintf("evt_iso%d", i), fmt.Sprintf("k%d", i%10), 0, map[string]any{})
			}
			Eventually(healthy.count, 10*time.Second).Should(Equal(100))
			Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "failing").Probing).To(BeTrue()) }).Should(Succeed())
		})
	})

	Context("when the endpoint keeps failing", func() {
		It("stops taking new events and probes with scheduled retries until it recovers", func() {
			up := make(chan struct{})
			rc := newReceiver(func(int, request) (int, http.Header, time.Duration) {
				select {
				case <-up:
					return 200, nil, 0
				default:
					return 503, nil, 0
				}
			})
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Policy = fastPolicy(500 * time.Millisecond)
				e.Policy.Jitter = 0
			}))
			for i := range 50 {
				publish(ns, "a.b", fmt.Sprintf("evt_p%d", i), fmt.Sprintf("k%d", i), 0, map[string]any{})
			}
			Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "crm").Probing).To(BeTrue()) }).Should(Succeed())
			// Probing: at most one request per retry interval, not one per
			// event. Allowed: the 16 already in flight, and a probe every
			// 500 ms for the 2 s (and the last poll's slack on a loaded
			// machine); not probing, the 50 events would retry 200 times.
			n := rc.count()
			Consistently(rc.count, 2*time.Second).Should(BeNumerically("<=", n+16+8))
			close(up)
			Eventually(func() map[string]bool {
				seen := map[string]bool{}
				for _, r := range rc.requests() {
					seen[r.Envelope.ID] = true
				}
				return seen
			}, 20*time.Second).Should(HaveLen(50))
			Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "crm").Probing).To(BeFalse()) }).Should(Succeed())
		})
	})

	Context("when an endpoint starts timing out with events queued for its request slots", func() {
		It("sends it no more than the rounds that were already under way when it started probing", func() {
			slow := newReceiver(func(int, request) (int, http.Header, time.Duration) { return 200, nil, time.Hour })
			startDispatcher(endpoint(ns, "slow", slow.URL, func(e *dispatcher.Endpoint) {
				e.Timeout = 300 * time.Millisecond
				e.MaxInFlight = 4
				e.Policy = fastPolicy(10 * time.Second)
				e.Policy.Jitter = 0
			}))
			for i := range 40 {
				publish(ns, "a.b", fmt.Sprintf("evt_q%d", i), fmt.Sprintf("k%d", i), 0, map[string]any{})
			}
			Eventually(func(g Gomega) { g.Expect(healthOf(g, ns, "slow").Probing).To(BeTrue()) }).Should(Succeed())
			// Two rounds of four reach the five failures that start probing;
			// the events held in memory for the other slots wait for a probe
			// turn instead of timing out one round after another. No retry is
			// due for ten seconds, so nothing else may arrive meanwhile.
			Consistently(slow.count, 2*time.Second).Should(BeNumerically("<=", 8))
		})
	})

	Context("when the dispatcher process is killed with SIGKILL mid-stream", func() {
		It("loses nothing: after a restart every event is delivered, and a redelivery keeps its webhook-id", func() {
			const total = 300
			rc := newReceiver(func(n int, _ request) (int, http.Header, time.Duration) {
				return 200, nil, 2 * time.Millisecond
			})
			createConsumer(ns, "crm")
			child := startChild(ns, "crm", rc.URL)
			DeferCleanup(func() { _ = child.Process.Signal(syscall.SIGKILL) })
			for i := range total {
				publish(ns, "a.b", fmt.Sprintf("evt_k%d", i), fmt.Sprintf("k%d", i%7), int64(i+1), map[string]any{})
			}
			Eventually(rc.count, 10*time.Second).Should(BeNumerically(">=", total/4))
			Expect(child.Process.Signal(syscall.SIGKILL)).To(Succeed())
			_ = child.Wait()

			child = startChild(ns, "crm", rc.URL)
			DeferCleanup(func() { _ = child.Process.Signal(syscall.SIGKILL); _ = child.Wait() })
			// Newer versions win, so an older event of a key that comes back
			// after a newer one went out is superseded instead of sent.
			Eventually(func(g Gomega) {
				outcomes := lastOutcomes(g, ns, "crm")
				g.Expect(outcomes).To(HaveLen(total))
				received := map[string]bool{}
				for _, id := range rc.ids() {
					received[id] = true
				}
				for id, outcome := range outcomes {
					g.Expect(outcome).To(BeElementOf(dispatcher.OutcomeDelivered, dispatcher.OutcomeSuperseded), id)
					if outcome == dispatcher.OutcomeDelivered {
						g.Expect(received).To(HaveKey(id))
					}
				}
			}, 30*time.Second).Should(Succeed())
			seen := map[string]int{}
			for _, id := range rc.ids() {
				seen[id]++
			}
			dups := 0
			for _, n := range seen {
				dups += n - 1
			}
			fmt.Fprintf(GinkgoWriter, "SIGKILL: %d of %d events delivered twice\n", dups, total)
			// Only events in flight at the kill may repeat: at most maxInFlight.
			Expect(dups).To(BeNumerically("<=", 16))
			// Every copy of an event carried the same webhook-id as its body's id.
			for _, r := range rc.requests() {
				Expect(r.Header.Get("webhook-id")).To(Equal(r.Envelope.ID))
			}
		})
	})

	Context("when NATS restarts", func() {
		It("reconnects and keeps delivering from the stored stream", func() {
			ctx, cancel := context.WithCancel(context.Background())
			DeferCleanup(cancel)
			dir := GinkgoT().TempDir()
			srv, err := testenv.NATS(dir)
			Expect(err).NotTo(HaveOccurred())
			port := srv.Addr().(*net.TCPAddr).Port
			DeferCleanup(func() { srv.Shutdown() })
			conn, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(conn.Close)
			own, err := jetstream.New(conn)
			Expect(err).NotTo(HaveOccurred())
			createConsumerOn(own, streams.DefaultLimits(), ns, "crm", nil)
			rc := newReceiver(always(200))
			d, err := dispatcher.New(ctx, own, dispatcher.WithLogger(testLogger()), allowLoopback)
			Expect(err).NotTo(HaveOccurred())
			d.Upsert(endpoint(ns, "crm", rc.URL))
			done := make(chan struct{})
			go func() { defer close(done); _ = d.Run(ctx) }()
			DeferCleanup(func() { cancel(); <-done })
			ownPub, err := events.NewPublisher(own)
			Expect(err).NotTo(HaveOccurred())
			send := func(id string) func() error {
				return func() error {
					_, err := ownPub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "a.b", Key: "k", Data: []byte(`{}`)})
					return err
				}
			}

			Eventually(send("evt_before_restart")).Should(Succeed())
			Eventually(rc.ids).Should(ContainElement("evt_before_restart"))
			srv.Shutdown()
			srv.WaitForShutdown()
			// Queued while NATS is down: published once it is back.
			srv, err = testenv.NATSOn(dir, port)
			Expect(err).NotTo(HaveOccurred())
			Eventually(conn.IsConnected, 10*time.Second).Should(BeTrue())
			Eventually(send("evt_after_restart"), 10*time.Second).Should(Succeed())
			Eventually(rc.ids, 15*time.Second).Should(ContainElement("evt_after_restart"))
		})
	})
})
