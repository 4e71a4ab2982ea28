// Replays through the real dispatcher and the real replay controller:
// what each selection sends, what it refuses, and what a restart cannot
// make it send twice.
package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

// replayReceiver answers each endpoint (its URL path) with the status set
// for it and records every request it gets.
type replayReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	status map[string]int
	got    []arrival
}

type arrival struct {
	endpoint, id, key string
	version           int64
	at                time.Time
}

func newReplayReceiver() *replayReceiver {
	rr := &replayReceiver{status: map[string]int{}}
	rr.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var env events.Envelope
		_ = json.Unmarshal(body, &env)
		ep := strings.TrimPrefix(r.URL.Path, "/")
		rr.mu.Lock()
		rr.got = append(rr.got, arrival{endpoint: ep, id: r.Header.Get("webhook-id"), key: env.Key, version: env.Version, at: time.Now()})
		code := rr.status[ep]
		rr.mu.Unlock()
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
	}))
	return rr
}

func (rr *replayReceiver) answer(endpoint string, code int) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.status[endpoint] = code
}

// arrivals are the requests to endpoint, after index from of them.
func (rr *replayReceiver) arrivals(endpoint string) []arrival {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	var out []arrival
	for _, a := range rr.got {
		if a.endpoint == endpoint {
			out = append(out, a)
		}
	}
	return out
}

// counts is how many requests each event id got at endpoint.
func (rr *replayReceiver) counts(endpoint string) map[string]int {
	out := map[string]int{}
	for _, a := range rr.arrivals(endpoint) {
		out[a.id]++
	}
	return out
}

var _ = Describe("Replays", Ordered, func() {
	var ns string
	var rr *replayReceiver
	var stopManager context.CancelFunc

	// startManager runs, for this namespace only, what a manager in
	// in-process mode runs for replays: the dispatcher, the dispatch
	// reconciler and the replay controller.
	startManager := func() {
		mctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		stopManager = func() { stop(); <-done }
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
			Scheme:                 testenv.Scheme(),
			Metrics:                metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress: "0",
			Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		})
		Expect(err).NotTo(HaveOccurred())
		Expect(SetupIndexes(mctx, mgr)).To(Succeed())
		d, err := dispatcher.New(mctx, js, dispatcher.WithLogger(GinkgoLogr), dispatcher.WithHealthInterval(200*time.Millisecond),
			dispatcher.WithDrainTimeout(5*time.Second), dispatcher.WithEgressGuard(loopbackEgress))
		Expect(err).NotTo(HaveOccurred())
		Expect(mgr.Add(managerRunnable(d.Run))).To(Succeed())
		Expect((&DispatchReconciler{Client: mgr.GetClient(), Dispatcher: d, WatchSecrets: true, Egress: loopbackEgress}).SetupWithManager(mgr)).To(Succeed())
		Expect((&WebhookReplayReconciler{Client: mgr.GetClient(), JS: js, Recorder: mgr.GetEventRecorder("herald-replay"), Poll: 250 * time.Millisecond}).SetupWithManager(mgr)).To(Succeed())
		go func() {
			defer GinkgoRecover()
			defer close(done)
			Expect(mgr.Start(mctx)).To(Succeed())
		}()
	}

	BeforeAll(func() {
		ns = newNamespace("replay")
		rr = newReplayReceiver()
		DeferCleanup(rr.Close)
		// 500s retried for two seconds, then a dead letter.
		p := newPolicy(ns, "brief")
		p.Spec.Schedule = []metav1.Duration{{Duration: 200 * time.Millisecond}}
		p.Spec.Window = &metav1.Duration{Duration: 2 * time.Second}
		create(p)
		startManager()
		DeferCleanup(func() { stopManager() })
	})

	endpointAt := func(name string, opts ...endpointOpt) {
		GinkgoHelper()
		ep := newEndpoint(ns, name, append([]endpointOpt{withPolicy("brief")}, opts...)...)
		ep.Spec.URL = rr.URL + "/" + name
		create(newSecret(ns, name+"-signing"), ep)
		expectConditions(ns, name, readyAndDelivering)
	}
	send := func(id, key string, version int64) {
		GinkgoHelper()
		p, err := events.NewPublisher(js)
		Expect(err).NotTo(HaveOccurred())
		_, err = p.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "subscription.updated", Key: key, Version: version,
			Data: json.RawMessage(`{"plan":"pro"}`)})
		Expect(err).NotTo(HaveOccurred())
	}
	getReplay := func(g Gomega, name string) *v1.WebhookReplay {
		rp := &v1.WebhookReplay{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, rp)).To(Succeed())
		return rp
	}
	finished := func(name string, phase v1.ReplayPhase) *v1.WebhookReplay {
		GinkgoHelper()
		var rp *v1.WebhookReplay
		Eventually(func(g Gomega) {
			rp = getReplay(g, name)
			g.Expect(rp.Status.Phase).To(Equal(phase), "status: %+v", rp.Status)
			g.Expect(rp.Status.CompletionTime).NotTo(BeNil())
		}, 2*eventually, poll).Should(Succeed())
		return rp
	}
	newReplay := func(name, endpoint string, mutate func(*v1.WebhookReplaySpec)) {
		GinkgoHelper()
		rp := &v1.WebhookReplay{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.WebhookReplaySpec{Endpoint: endpoint}}
		mutate(&rp.Spec)
		create(rp)
	}
	deadLetter := func(endpoint, id string) {
		GinkgoHelper()
		r := &deliverylog.Reader{JS: js}
		Eventually(func(g Gomega) {
			dl, err := r.DeadLetter(ctx, ns, id, endpoint)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(dl).NotTo(BeNil())
		}, eventually, poll).Should(Succeed())
	}

	It("delivers a dead-lettered event once the receiver is fixed: once, with the same webhook-id, and the log keeps every attempt", func() {
		endpointAt("crm")
		rr.answer("crm", http.StatusInternalServerError)
		send("evt_crm_1", "sub_1", 1)
		deadLetter("crm", "evt_crm_1")
		failed := rr.counts("crm")["evt_crm_1"]
		Expect(failed).To(BeNumerically(">=", 2), "retried until the window ended")

		By("the customer fixing the endpoint, then support replaying the event")
		rr.answer("crm", http.StatusOK)
		newReplay("crm-fixed", "crm", func(s *v1.WebhookReplaySpec) { s.EventIDs = []string{"evt_crm_1"} })
		rp := finished("crm-fixed", v1.ReplaySucceeded)
		Expect(rp.Status.Matched).To(BeEquivalentTo(1))
		Expect(rp.Status.Delivered).To(BeEquivalentTo(1))
		Expect(rp.Status.Sent).To(BeEquivalentTo(1))
		Expect(rp.Status.Events).To(ConsistOf(v1.ReplayedEvent{ID: "evt_crm_1", Sequence: rp.Status.Events[0].Sequence, Outcome: v1.ReplayOutcomeDelivered, Code: 200}))
		Expect(replayCondition(rp, v1.ReadyCondition)).To(Equal("True/Succeeded"))
		Expect(replayCondition(rp, v1.ReconcilingCondition)).To(Equal("absent"))
		Consistently(func() int { return rr.counts("crm")["evt_crm_1"] }, time.Second, poll).Should(Equal(failed+1), "the replay sent it exactly once")

		By("the delivery log keeping the failed attempts and adding the replayed one")
		hist, err := dispatcher.History(ctx, js, ns, "crm", "evt_crm_1")
		Expect(err).NotTo(HaveOccurred())
		var outcomes []string
		for _, a := range hist {
			outcomes = append(outcomes, a.Outcome+"/"+a.Replay)
		}
		Expect(outcomes).To(ContainElement("retrying/"))
		Expect(outcomes).To(ContainElement("dead/"))
		Expect(outcomes[len(outcomes)-1]).To(Equal("delivered/crm-fixed"))
		Expect(hist[len(hist)-1].StatusCode).To(Equal(200))

		By("the dead letter saying which replay delivered it")
		Eventually(func(g Gomega) {
			dl, err := (&deliverylog.Reader{JS: js}).DeadLetter(ctx, ns, "evt_crm_1", "crm")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(dl.Status.DeliveredByReplay).To(Equal("crm-fixed"))
		}, eventually, poll).Should(Succeed())
		Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm-fixed") }, eventually, poll).
			Should(ContainElements("ReplayStarted", "ReplaySucceeded"))

		By("a later replay of the dead letters leaving it out: it is not dead any more")
		newReplay("crm-again", "crm", func(s *v1.WebhookReplaySpec) { s.DeadLetters = &v1.ReplayDeadLetters{} })
		rp = finished("crm-again", v1.ReplaySucceeded)
		Expect(rp.Status.Matched).To(BeZero())
	})

	It("never moves a key backwards: a replayed version older than the delivered one is superseded, never sent; the newest one is sent again", func() {
		endpointAt("billing")
		send("evt_bill_v1", "sub_9", 1)
		send("evt_bill_v2", "sub_9", 2)
		Eventually(func() map[string]int { return rr.counts("billing") }, eventually, poll).
			Should(Equal(map[string]int{"evt_bill_v1": 1, "evt_bill_v2": 1}))

		newReplay("billing-old", "billing", func(s *v1.WebhookReplaySpec) { s.EventIDs = []string{"evt_bill_v1"} })
		rp := finished("billing-old", v1.ReplaySucceeded)
		Expect(rp.Status.Superseded).To(BeEquivalentTo(1))
		Expect(rp.Status.Sent).To(BeZero())
		Expect(rp.Status.Events[0].Outcome).To(Equal(v1.ReplayOutcomeSuperseded))

		newReplay("billing-newest", "billing", func(s *v1.WebhookReplaySpec) { s.EventIDs = []string{"evt_bill_v2"} })
		rp = finished("billing-newest", v1.ReplaySucceeded)
		Expect(rp.Status.Delivered).To(BeEquivalentTo(1))
		Consistently(func() map[string]int { return rr.counts("billing") }, time.Second, poll).
			Should(Equal(map[string]int{"evt_bill_v1": 1, "evt_bill_v2": 2}))
	})

	It("leaves an event whose live delivery is still retrying to it, and says so", func() {
		p := newPolicy(ns, "patient")
		p.Spec.Schedule = []metav1.Duration{{Duration: time.Minute}}
		create(p)
		ep := newEndpoint(ns, "ledger", withPolicy("patient"))
		ep.Spec.URL = rr.URL + "/ledger"
		create(newSecret(ns, "ledger-signing"), ep)
		expectConditions(ns, "ledger", readyAndDelivering)
		rr.answer("ledger", http.StatusServiceUnavailable)
		send("evt_ledger_1", "acct_1", 1)
		Eventually(func() int { return rr.counts("ledger")["evt_ledger_1"] }, eventually, poll).Should(Equal(1))

		newReplay("ledger-now", "ledger", func(s *v1.WebhookReplaySpec) { s.EventIDs = []string{"evt_ledger_1", "evt_never_published"} })
		rp := finished("ledger-now", v1.ReplaySucceeded)
		Expect(rp.Status.Skipped).To(BeEquivalentTo(2))
		Expect(rp.Status.Events).To(ContainElements(
			HaveField("Reason", v1.ReasonLiveDeliveryPending),
			HaveField("Reason", v1.ReasonEventNotFound)))
		Consistently(func() int { return rr.counts("ledger")["evt_ledger_1"] }, time.Second, poll).Should(Equal(1), "the replay sent nothing; the live retry is due in a minute")
	})

	Context("a time range of 2,000 dead events", Ordered, func() {
		var from, to metav1.Time
		BeforeAll(func() {
			// A type of its own: the range is in whole seconds, and must
			// not take in the earlier specs' events.
			endpointAt("bulk", withEventTypes("bulk.created"))
			rr.answer("bulk", http.StatusGone) // terminal: every event dead at once, no version recorded
			from = metav1.NewTime(time.Now().Add(-time.Second))
			p, err := events.NewPublisher(js)
			Expect(err).NotTo(HaveOccurred())
			for i := range 2000 {
				_, err := p.Publish(ctx, events.Event{ID: fmt.Sprintf("evt_bulk_%d", i), Namespace: ns, Type: "bulk.created",
					Key: fmt.Sprintf("sub_%d", i%20), Version: int64(i/20 + 1), Data: json.RawMessage(`{}`)})
				Expect(err).NotTo(HaveOccurred())
			}
			to = metav1.NewTime(time.Now().Add(time.Second))
			Eventually(func() int { return len(rr.counts("bulk")) }, 2*eventually, poll).Should(Equal(2000))
			deadLetter("bulk", "evt_bulk_1999")
			rr.answer("bulk", http.StatusOK)
		})

		It("refuses a selection over the limit with the count, and sends nothing", func() {
			before := len(rr.arrivals("bulk"))
			newReplay("bulk-capped", "bulk", func(s *v1.WebhookReplaySpec) {
				s.TimeRange = &v1.ReplayTimeRange{From: from, To: to}
				s.Limit = 1000
			})
			rp := finished("bulk-capped", v1.ReplayFailed)
			Expect(replayCondition(rp, v1.StalledCondition)).To(Equal("True/LimitExceeded"))
			Expect(apimeta.FindStatusCondition(rp.Status.Conditions, v1.StalledCondition).Message).To(ContainSubstring("matches 2000 events, more than spec.limit 1000"))
			Expect(rp.Status.Matched).To(BeEquivalentTo(2000))
			Consistently(func() int { return len(rr.arrivals("bulk")) }, time.Second, poll).Should(Equal(before))
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "bulk-capped") }, eventually, poll).Should(ContainElement("LimitExceeded"))
		})

		It("counts a dry run and sends nothing", func() {
			before := len(rr.arrivals("bulk"))
			newReplay("bulk-dry", "bulk", func(s *v1.WebhookReplaySpec) {
				s.TimeRange = &v1.ReplayTimeRange{From: from, To: to}
				s.Limit, s.DryRun = 2000, true
			})
			rp := finished("bulk-dry", v1.ReplaySucceeded)
			Expect(rp.Status.Matched).To(BeEquivalentTo(2000))
			Expect(replayCondition(rp, v1.ReadyCondition)).To(Equal("True/DryRun"))
			Expect(apimeta.FindStatusCondition(rp.Status.Conditions, v1.ReadyCondition).Message).To(ContainSubstring("2000 events would be sent"))
			Consistently(func() int { return len(rr.arrivals("bulk")) }, time.Second, poll).Should(Equal(before))
		})

		It("sends all of them at the replay's rate, each key in order", func() {
			before := len(rr.arrivals("bulk"))
			newReplay("bulk-all", "bulk", func(s *v1.WebhookReplaySpec) {
				s.TimeRange = &v1.ReplayTimeRange{From: from, To: to}
				s.Limit, s.Rate = 2000, 200
			})
			rp := finished("bulk-all", v1.ReplaySucceeded)
			Expect(rp.Status.Delivered).To(BeEquivalentTo(2000))
			Expect(rp.Status.Events).To(BeEmpty(), "over 100 events: counts only")
			got := rr.arrivals("bulk")[before:]
			Expect(got).To(HaveLen(2000))
			// The rate: 2,000 at 200/s take at least 10s less one token;
			// the upper bound is loose, for a noisy machine.
			took := got[len(got)-1].at.Sub(got[0].at)
			GinkgoWriter.Printf("2,000 replayed events at rate 200 took %s\n", took)
			Expect(took).To(BeNumerically(">=", 9*time.Second))
			Expect(took).To(BeNumerically("<", 30*time.Second))
			last := map[string]int64{}
			for _, a := range got {
				Expect(a.version).To(BeNumerically(">", last[a.key]), "key %s went backwards", a.key)
				last[a.key] = a.version
			}
		})
	})

	It("sends each event once whatever restarts: the manager and its dispatcher stopped mid-replay", func() {
		endpointAt("restart")
		rr.answer("restart", http.StatusGone)
		p, err := events.NewPublisher(js)
		Expect(err).NotTo(HaveOccurred())
		for i := range 300 {
			_, err := p.Publish(ctx, events.Event{ID: fmt.Sprintf("evt_rs_%d", i), Namespace: ns, Type: "subscription.updated",
				Key: fmt.Sprintf("sub_%d", i%10), Version: int64(i/10 + 1), Data: json.RawMessage(`{}`)})
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func() int { return len(rr.counts("restart")) }, 2*eventually, poll).Should(Equal(300))
		deadLetter("restart", "evt_rs_299")
		rr.answer("restart", http.StatusOK)
		before := len(rr.arrivals("restart"))

		newReplay("restart-all", "restart", func(s *v1.WebhookReplaySpec) {
			s.DeadLetters = &v1.ReplayDeadLetters{}
			s.Limit, s.Rate = 1000, 60
		})
		Eventually(func() int { return len(rr.arrivals("restart")) - before }, eventually, poll).Should(BeNumerically(">=", 100))
		By("stopping the manager mid-replay and starting another")
		stopManager()
		sentBefore := len(rr.arrivals("restart")) - before
		Expect(sentBefore).To(BeNumerically("<", 300), "the replay was still running")
		startManager()

		// Events the stop handed back may come back after a newer version
		// of their key was delivered: those are superseded, never sent
		// behind it.
		rp := finished("restart-all", v1.ReplaySucceeded)
		Expect(rp.Status.Delivered + rp.Status.Superseded).To(BeEquivalentTo(300))
		Expect(rp.Status.Failed).To(BeZero())
		replayed, last := map[string]int{}, map[string]int64{}
		for _, a := range rr.arrivals("restart")[before:] {
			replayed[a.id]++
			Expect(a.version).To(BeNumerically(">", last[a.key]), "key %s went backwards", a.key)
			last[a.key] = a.version
		}
		Expect(replayed).To(HaveLen(int(rp.Status.Delivered)))
		for id, n := range replayed {
			Expect(n).To(Equal(1), "event %s was sent %d times by one replay", id, n)
		}
		GinkgoWriter.Printf("after the restart: %d delivered, %d superseded\n", rp.Status.Delivered, rp.Status.Superseded)
	})

	It("waits for a missing endpoint, Stalled, and starts when it exists", func() {
		newReplay("later", "not-yet", func(s *v1.WebhookReplaySpec) { s.EventIDs = []string{"evt_x"} })
		Eventually(func(g Gomega) {
			rp := getReplay(g, "later")
			g.Expect(rp.Status.Phase).To(Equal(v1.ReplayPending))
			g.Expect(replayCondition(rp, v1.StalledCondition)).To(Equal("True/EndpointMissing"))
		}, eventually, poll).Should(Succeed())
		endpointAt("not-yet")
		rp := finished("later", v1.ReplaySucceeded)
		Expect(replayCondition(rp, v1.StalledCondition)).To(Equal("absent"))
		Expect(rp.Status.Events).To(ConsistOf(HaveField("Reason", v1.ReasonEventNotFound)))
	})

	It("deletes a finished replay after its TTL", func() {
		newReplay("short-lived", "crm", func(s *v1.WebhookReplaySpec) {
			s.EventIDs, s.DryRun, s.TTLSecondsAfterFinished = []string{"evt_crm_1"}, true, ptr.To[int32](1)
		})
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "short-lived"}, &v1.WebhookReplay{}))
		}, eventually, poll).Should(BeTrue())
	})
})

// replayCondition is condition for a replay: "Status/Reason" or "absent".
func replayCondition(rp *v1.WebhookReplay, typ string) string {
	c := apimeta.FindStatusCondition(rp.Status.Conditions, typ)
	if c == nil {
		return "absent"
	}
	return string(c.Status) + "/" + c.Reason
}
