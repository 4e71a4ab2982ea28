package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

// isolated is a NATS server of one spec's own, for specs that break NATS
// on purpose (a bucket that refuses writes, a small max payload, short
// retention) without touching the suite's shared server.
type isolated struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	limits streams.Limits
}

func newIsolated(limits streams.Limits, mutate func(*natsserver.Options)) *isolated {
	GinkgoHelper()
	if mutate == nil {
		mutate = func(*natsserver.Options) {}
	}
	srv, err := testenv.NATSWith(GinkgoT().TempDir(), mutate)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err := jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
	return &isolated{nc: nc, js: js, limits: limits}
}

// start runs a dispatcher on this server for the spec's duration; stop
// ends it early and waits for it.
func (s *isolated) start(opts []dispatcher.Option, eps ...dispatcher.Endpoint) (stop func()) {
	GinkgoHelper()
	ctx, cancel := context.WithCancel(context.Background())
	opts = append([]dispatcher.Option{dispatcher.WithLogger(testLogger()), dispatcher.WithHealthInterval(100 * time.Millisecond), dispatcher.WithDrainTimeout(5 * time.Second), allowLoopback}, opts...)
	d, err := dispatcher.New(ctx, s.js, opts...)
	Expect(err).NotTo(HaveOccurred())
	for _, ep := range eps {
		createConsumerOn(s.js, s.limits, ep.Namespace, ep.Name, nil)
		d.Upsert(ep)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	stop = func() { cancel(); <-done }
	DeferCleanup(stop)
	return stop
}

func (s *isolated) publish(ns, typ, id, key string, version int64) {
	GinkgoHelper()
	p, err := events.NewPublisher(s.js)
	Expect(err).NotTo(HaveOccurred())
	_, err = p.Publish(context.Background(), events.Event{ID: id, Namespace: ns, Type: typ, Key: key, Version: version, Data: []byte(`{}`)})
	Expect(err).NotTo(HaveOccurred())
}

// deadLetters reads the dead letters of the spec's endpoint "crm".
func (s *isolated) deadLetters(g Gomega, ns string) []dispatcher.DeadLetter {
	const ep = "crm"
	var out []dispatcher.DeadLetter
	for _, m := range readAllOn(g, s.js, streams.DeadLetterStream(ns), streams.DeadLetterSubject(ns, ep, "*"), false) {
		var dl dispatcher.DeadLetter
		g.Expect(json.Unmarshal(m.Data(), &dl)).To(Succeed())
		out = append(out, dl)
	}
	return out
}

// health reads the health record of the spec's endpoint "crm".
func (s *isolated) health(g Gomega, ns string) *dispatcher.Health {
	const ep = "crm"
	kv, err := s.js.KeyValue(context.Background(), streams.HealthBucket(ns))
	g.Expect(err).NotTo(HaveOccurred())
	h, err := dispatcher.ReadHealth(context.Background(), kv, ns, ep)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h).NotTo(BeNil())
	return h
}

// setStream changes one of Herald's streams (or a bucket's) in place.
func (s *isolated) setStream(name string, mutate func(*jetstream.StreamConfig)) {
	GinkgoHelper()
	st, err := s.js.Stream(context.Background(), name)
	Expect(err).NotTo(HaveOccurred())
	cfg := st.CachedInfo().Config
	mutate(&cfg)
	_, err = s.js.UpdateStream(context.Background(), cfg)
	Expect(err).NotTo(HaveOccurred())
}

// loggedDelivered counts the events of the spec's endpoint "crm" whose
// newest delivery-log entry says delivered.
func (s *isolated) loggedDelivered(g Gomega, ns string) int {
	out := map[string]string{}
	for _, m := range readAllOn(g, s.js, streams.AttemptsStream(ns), streams.AttemptSubject(ns, "crm", "*"), false) {
		var a dispatcher.Attempt
		g.Expect(json.Unmarshal(m.Data(), &a)).To(Succeed())
		out[a.EventID] = a.Outcome
	}
	delivered := 0
	for _, o := range out {
		if o == dispatcher.OutcomeDelivered {
			delivered++
		}
	}
	return delivered
}

// holdLog stands between the dispatcher and a namespace's delivery log, as
// a NATS server too busy to confirm would: entries published to the log
// get no answer until release, which stores every one held (answering its
// publisher as the stream would) and gives the log back.
func (s *isolated) holdLog(ns string) (release func()) {
	GinkgoHelper()
	subjects := []string{streams.AttemptsPrefix + "." + ns + ".>"}
	s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = []string{"herald.held.>"} })
	var mu sync.Mutex
	var held []*nats.Msg
	sub, err := s.nc.Subscribe(subjects[0], func(m *nats.Msg) { mu.Lock(); held = append(held, m); mu.Unlock() })
	Expect(err).NotTo(HaveOccurred())
	Expect(s.nc.Flush()).To(Succeed())
	return func() {
		GinkgoHelper()
		Expect(sub.Unsubscribe()).To(Succeed())
		s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = subjects })
		mu.Lock()
		defer mu.Unlock()
		for _, m := range held {
			Expect(s.nc.PublishMsg(&nats.Msg{Subject: m.Subject, Reply: m.Reply, Data: m.Data})).To(Succeed())
		}
		Expect(s.nc.Flush()).To(Succeed())
	}
}

// versionsOf lists the versions a receiver got, in arrival order.
func versionsOf(rc *receiver) []int64 {
	var out []int64
	for _, r := range rc.requests() {
		out = append(out, r.Envelope.Version)
	}
	return out
}

var _ = Describe("Dispatcher at the edges of the contract", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Context("when a producer skips pkg/events and publishes hostile events raw", func() {
		It("dead-letters each one as Malformed, keeps its connection, and other namespaces' deliveries continue", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			hostile := newReceiver(always(200))
			other := newReceiver(always(200))
			victim := newNamespace()
			s.start(nil, endpoint(ns, "crm", hostile.URL), endpoint(victim, "billing", other.URL))

			raw := func(subject, id string, hdr map[string]string, body string) bool {
				m := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{}}
				m.Header.Set(events.HeaderID, id)
				for k, v := range hdr {
					m.Header.Set(k, v)
				}
				_, err := s.js.PublishMsg(context.Background(), m)
				return err == nil
			}
			subj := events.Subject(ns, "a.b")
			variants := []func() bool{
				func() bool {
					return raw(subj, ns+":k4", map[string]string{events.HeaderKey: strings.Repeat("k", 4<<10)}, "{}")
				},
				func() bool {
					return raw(subj, ns+":v", map[string]string{events.HeaderVersion: strings.Repeat("9", 2<<10)}, "{}")
				},
				func() bool {
					return raw(subj, ns+":t", map[string]string{events.HeaderTime: strings.Repeat("2", 2<<10)}, "{}")
				},
				func() bool { return raw(events.Subject(ns, "caf\u00e9.b"), ns+":u", nil, "{}") },
				func() bool { return raw(events.Subject(ns, "a.*"), ns+":w", nil, "{}") },
				func() bool { return raw(subj, ns+":a*b", nil, "{}") },
				func() bool { return raw(subj, ">", nil, "{}") },
				func() bool { return raw(subj, ns+":a b", nil, "{}") },
				func() bool { return raw(subj, ns+":nojson", nil, "not json") },
				func() bool {
					return raw(subj, ns+":bighdr", map[string]string{"X-Junk": strings.Repeat("j", 60<<10)}, "{}")
				},
			}
			stored := 0
			for i, v := range variants {
				if v() {
					stored++
				}
				s.publish(victim, "a.b", fmt.Sprintf("evt_ok%d", i), fmt.Sprintf("k%d", i), 1)
			}
			By(fmt.Sprintf("%d of %d hostile variants stored by the stream", stored, len(variants)))
			Expect(stored).To(BeNumerically(">=", 9), "the stream refused more variants than expected")
			s.publish(ns, "a.b", "evt_after", "k", 1)

			Eventually(other.count, 10*time.Second).Should(Equal(len(variants)))
			Eventually(hostile.ids, 10*time.Second).Should(Equal([]string{"evt_after"}))
			Eventually(func(g Gomega) {
				dls := s.deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(stored))
				for _, dl := range dls {
					g.Expect(dl.Reason).To(Equal(dispatcher.DeadMalformed))
					g.Expect(dl.EventID).To(HavePrefix("seq-"))
					g.Expect(dl.Attempts).To(ConsistOf(HaveField("Error", ContainSubstring("malformed event"))))
				}
			}, 10*time.Second).Should(Succeed())
			Expect(s.nc.IsConnected()).To(BeTrue())
		})
	})

	Context("when one key has many events queued behind a slow request", func() {
		It("starts an event of another key within one request time, and keeps the busy key in order", func() {
			rc := newReceiver(func(_ int, r request) (int, http.Header, time.Duration) {
				if r.Envelope.Key == "K" {
					return 200, nil, 300 * time.Millisecond
				}
				return 200, nil, 0
			})
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) { e.MaxInFlight = 2 }))
			for v := range 30 {
				publish(ns, "a.b", fmt.Sprintf("evt_k%d", v+1), "K", int64(v+1), map[string]any{})
			}
			published := time.Now()
			publish(ns, "a.b", "evt_j", "J", 1, map[string]any{})

			Eventually(rc.ids).Should(ContainElement("evt_j"))
			for i, r := range rc.requests() {
				if r.Envelope.ID == "evt_j" {
					By(fmt.Sprintf("J arrived as request %d, %s after it was published", i+1, r.At.Sub(published).Round(time.Millisecond)))
				}
			}
			Eventually(rc.count).Should(BeNumerically(">=", 3))
			// J went at once, next to K's first request: not behind K's queue.
			Expect(rc.ids()[:3]).To(ContainElement("evt_j"))
			want := make([]int64, 30)
			for i := range want {
				want[i] = int64(i + 1)
			}
			kOnly := func() []int64 {
				var out []int64
				for _, r := range rc.requests() {
					if r.Envelope.Key == "K" {
						out = append(out, r.Envelope.Version)
					}
				}
				return out
			}
			Eventually(kOnly, 30*time.Second).Should(Equal(want))
			Consistently(kOnly, time.Second).Should(HaveLen(30))
		})
	})

	Context("when the versions bucket refuses writes", func() {
		It("never sends a delivered event again, never lets an older version through, and writes the record once it can", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			rc := newReceiver(always(200))
			s.start(nil, endpoint(ns, "crm", rc.URL))
			s.publish(ns, "a.b", "evt_v1", "sub", 1)
			Eventually(versionsOf).WithArguments(rc).Should(Equal([]int64{1}))

			// The bucket's stream stops listening: every write fails, reads
			// (direct gets by stream name) still work.
			bucket := streams.VersionsBucket(ns)
			kvSubjects := []string{streams.KVSubject(bucket, ">")}
			s.setStream(streams.KVStream(bucket), func(c *jetstream.StreamConfig) { c.Subjects = []string{"$KV.switched-off.>"} })
			s.publish(ns, "a.b", "evt_v9", "sub", 9)
			s.publish(ns, "a.b", "evt_v8", "sub", 8)
			Eventually(versionsOf).WithArguments(rc).Should(Equal([]int64{1, 9}))
			Eventually(func(g Gomega) { g.Expect(s.health(g, ns).PendingWrites).To(BeEquivalentTo(1)) }).Should(Succeed())
			Consistently(versionsOf, 3*time.Second).WithArguments(rc).Should(Equal([]int64{1, 9}))

			s.setStream(streams.KVStream(bucket), func(c *jetstream.StreamConfig) { c.Subjects = kvSubjects })
			Eventually(func(g Gomega) { g.Expect(s.health(g, ns).PendingWrites).To(BeZero()) }, 15*time.Second).Should(Succeed())
			kv, err := s.js.KeyValue(context.Background(), bucket)
			Expect(err).NotTo(HaveOccurred())
			keys, err := kv.Keys(context.Background())
			Expect(err).NotTo(HaveOccurred())
			Expect(keys).To(HaveLen(1))
			e, err := kv.Get(context.Background(), keys[0])
			Expect(err).NotTo(HaveOccurred())
			Expect(string(e.Value())).To(HavePrefix("9:"))
			Expect(versionsOf(rc)).To(Equal([]int64{1, 9}))
		})
	})

	Context("when an event retries until its dead letter would be larger than NATS's max payload", func() {
		It("stores a dead letter that fits, with the count of what it left out, and never sends the event again", func() {
			s := newIsolated(streams.DefaultLimits(), func(o *natsserver.Options) { o.MaxPayload = 128 << 10 })
			big := strings.Repeat("x", 4<<10)
			rc := newReceiver(always(500))
			rc.Config.Handler = wrapBody(rc.Config.Handler, big)
			s.start(nil, endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Policy = fastPolicy(20 * time.Millisecond)
				e.Policy.Jitter = 0
				e.Policy.Window = 4 * time.Second
			}))
			s.publish(ns, "a.b", "evt_big", "k", 1)
			var dl dispatcher.DeadLetter
			Eventually(func(g Gomega) {
				dls := s.deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(1))
				dl = dls[0]
			}, 15*time.Second).Should(Succeed())
			b, err := json.Marshal(dl)
			Expect(err).NotTo(HaveOccurred())
			By(fmt.Sprintf("the dead letter of %d attempts carries %d and takes %d bytes (max payload %d)", dl.AttemptCount, len(dl.Attempts), len(b), 128<<10))
			n := rc.count()
			Expect(n).To(BeNumerically(">", 50), "the spec needs more attempts than a dead letter carries")
			Expect(dl.Reason).To(Equal(dispatcher.DeadWindow))
			Expect(dl.AttemptCount).To(Equal(n))
			var tail []string
			for _, a := range dl.Attempts[len(dl.Attempts)-4:] {
				tail = append(tail, fmt.Sprintf("%d/%s/%s", a.Attempt, a.Outcome, a.Time.Format(time.StampMicro)))
			}
			// At least: a log publish retried after a lost ack may log twice.
			Expect(len(dl.Attempts)+dl.AttemptsOmitted).To(BeNumerically(">=", n), "tail %v", tail)
			Expect(len(dl.Attempts)).To(BeNumerically("<=", 50))
			// The last HTTP attempt keeps its response; a redelivery that came
			// after the window ended logs the end without one.
			Expect(dl.Attempts).To(ContainElement(HaveField("Response", HavePrefix("xxxx"))))
			Consistently(rc.count, 2*time.Second).Should(Equal(n))
		})
	})

	Context("when a suspended endpoint's events outlive their window", func() {
		It("dead-letters them as Expired before the stream's retention removes them, even with a time far in the future", func() {
			limits := streams.DefaultLimits()
			limits.EventsMaxAge = 8 * time.Second
			limits.DuplicateWindow = time.Second
			s := newIsolated(limits, nil)
			rc := newReceiver(always(200))
			s.start([]dispatcher.Option{dispatcher.WithSweepInterval(200 * time.Millisecond)}, endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Suspend = true
				e.Policy.Window = 2 * time.Second
			}))
			s.publish(ns, "a.b", "evt_e1", "k1", 1)
			s.publish(ns, "a.b", "evt_e2", "", 0)
			m := &nats.Msg{Subject: events.Subject(ns, "a.b"), Data: []byte(`{}`), Header: nats.Header{}}
			m.Header.Set(events.HeaderID, ns+":evt_future")
			m.Header.Set(events.HeaderTime, time.Now().AddDate(1, 0, 0).Format(time.RFC3339Nano))
			_, err := s.js.PublishMsg(context.Background(), m)
			Expect(err).NotTo(HaveOccurred())

			Eventually(func(g Gomega) {
				dls := s.deadLetters(g, ns)
				g.Expect(dls).To(HaveLen(3))
				for _, dl := range dls {
					g.Expect(dl.Reason).To(Equal(dispatcher.DeadExpired))
					g.Expect(dl.AttemptCount).To(BeZero())
				}
			}, 6*time.Second).Should(Succeed())
			Expect(rc.count()).To(BeZero())
		})
	})

	Context("when ordering is None", func() {
		It("still never delivers an older version after a newer one", func() {
			rc := newReceiver(always(200))
			startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.PerKey = false
				e.MaxInFlight = 1
			}))
			publish(ns, "a.b", "evt_v9", "sub", 9, map[string]any{})
			publish(ns, "a.b", "evt_v8", "sub", 8, map[string]any{})
			Eventually(status(ns, "evt_v8")).Should(ConsistOf(HaveField("State", dispatcher.StateSuperseded)))
			Expect(versionsOf(rc)).To(Equal([]int64{9}))
		})
	})

	Context("when the streams reach their byte budgets", func() {
		It("refuses new events with a clear error, keeps and delivers the stored ones", func() {
			limits := streams.DefaultLimits()
			limits.MaxBodyBytes = 8 << 10
			limits.EventsMaxBytes = 256 << 10
			s := newIsolated(limits, nil)
			rc := newReceiver(always(200))
			s.start(nil, endpoint(ns, "crm", rc.URL))
			p, err := events.NewPublisher(s.js, events.WithMaxBodyBytes(8<<10))
			Expect(err).NotTo(HaveOccurred())
			data := []byte(`"` + strings.Repeat("d", 6<<10) + `"`)
			var full error
			published := 0
			for i := range 100 {
				_, full = p.Publish(context.Background(), events.Event{ID: fmt.Sprintf("evt_%d", i), Namespace: ns, Type: "a.b", Data: data})
				if full != nil {
					break
				}
				published++
			}
			Expect(full).To(MatchError(events.ErrStreamFull))
			Expect(published).To(BeNumerically(">", 10))
			st, err := s.js.Stream(context.Background(), events.StreamName(ns))
			Expect(err).NotTo(HaveOccurred())
			info, err := st.Info(context.Background())
			Expect(err).NotTo(HaveOccurred())
			Expect(info.State.FirstSeq).To(BeEquivalentTo(1), "a stored event was dropped to make room")
			Expect(info.State.Msgs).To(BeEquivalentTo(published))
			Eventually(rc.count, 10*time.Second).Should(Equal(published))
		})

		It("holds dead events, never resending them, while the dead letters are at their budget, and stores them once there is room", func() {
			limits := streams.DefaultLimits()
			limits.DeadLetterMaxBytes = 48 << 10
			s := newIsolated(limits, nil)
			rc := newReceiver(always(404))
			s.start(nil, endpoint(ns, "crm", rc.URL))
			p, err := events.NewPublisher(s.js)
			Expect(err).NotTo(HaveOccurred())
			data := []byte(`"` + strings.Repeat("d", 8<<10) + `"`)
			for i := range 8 {
				_, err := p.Publish(context.Background(), events.Event{ID: fmt.Sprintf("evt_dl%d", i), Namespace: ns, Type: "a.b", Data: data})
				Expect(err).NotTo(HaveOccurred())
			}
			Eventually(rc.count).Should(Equal(8))
			Eventually(func(g Gomega) { g.Expect(s.health(g, ns).PendingWrites).To(BeNumerically(">", 0)) }).Should(Succeed())
			stored := len(s.deadLetters(Default, ns))
			Expect(stored).To(BeNumerically("<", 8), "the budget should have refused some dead letters")
			Consistently(rc.count, 2*time.Second).Should(Equal(8), "a dead event was sent again")

			s.setStream(streams.DeadLetterStream(ns), func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 20 })
			Eventually(func(g Gomega) { g.Expect(s.deadLetters(g, ns)).To(HaveLen(8)) }, 15*time.Second).Should(Succeed())
			Eventually(func(g Gomega) { g.Expect(s.health(g, ns).PendingWrites).To(BeZero()) }).Should(Succeed())
			Expect(rc.count()).To(Equal(8))
		})

		It("keeps the delivery log within its budget by dropping its oldest entries, and keeps delivering", func() {
			limits := streams.DefaultLimits()
			limits.AttemptsMaxBytes = 64 << 10
			s := newIsolated(limits, nil)
			rc := newReceiver(always(200))
			s.start(nil, endpoint(ns, "crm", rc.URL))
			for i := range 400 {
				s.publish(ns, "c.d", fmt.Sprintf("evt_log%d", i), "", 0)
			}
			Eventually(rc.count, 20*time.Second).Should(Equal(400))
			Eventually(func(g Gomega) {
				log, err := s.js.Stream(context.Background(), streams.AttemptsStream(ns))
				g.Expect(err).NotTo(HaveOccurred())
				li, err := log.Info(context.Background())
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(li.State.FirstSeq).To(BeNumerically(">", 1))
				g.Expect(li.State.Bytes).To(BeNumerically("<=", 64<<10))
				g.Expect(li.State.LastSeq).To(BeNumerically(">=", 400))
			}).Should(Succeed())
		})
	})

	Context("when the dispatcher stops while a request is in flight", func() {
		It("lets the request finish and acks it, so the next dispatcher does not send it again", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			rc := newReceiver(func(int, request) (int, http.Header, time.Duration) { return 200, nil, 700 * time.Millisecond })
			ep := endpoint(ns, "crm", rc.URL)
			stop := s.start(nil, ep)
			s.publish(ns, "a.b", "evt_drain", "", 0)
			Eventually(rc.count).Should(Equal(1))
			stop()
			s.start(nil, ep)
			Consistently(rc.count, 3*time.Second).Should(Equal(1))
		})
	})

	Context("when events wait for a low rate limit longer than the ack wait", func() {
		It("counts only HTTP requests as attempts", func() {
			rc := newReceiver(always(500))
			ep := endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) {
				e.Timeout = 200 * time.Millisecond
				e.RateLimit, e.Burst = 10, 1
				e.Policy = fastPolicy(50 * time.Millisecond)
				e.Policy.Jitter = 0
				e.Policy.MaxAttempts = 3
			})
			d := startDispatcher()
			// A short ack wait: the later events wait for the rate limit
			// well past it, and JetStream redelivers them meanwhile.
			createConsumerOn(js, streams.DefaultLimits(), ns, "crm", func(c *jetstream.ConsumerConfig) { c.AckWait = time.Second })
			d.Upsert(ep)
			const n = 30 // the last waits 3 s for its first turn
			for i := range n {
				publish(ns, "a.b", fmt.Sprintf("evt_r%d", i), "", 0, map[string]any{})
			}
			Eventually(func(g Gomega) { g.Expect(deadLetters(g, ns)).To(HaveLen(n)) }, 30*time.Second).Should(Succeed())
			perID := map[string]int{}
			for _, id := range rc.ids() {
				perID[id]++
			}
			Expect(perID).To(HaveLen(n))
			for id, c := range perID {
				Expect(c).To(Equal(3), "event %s", id)
			}
		})
	})

	Context("when the delivery log refuses publishes for a moment", func() {
		It("retries the entries, counts the failures, and loses none", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			rc := newReceiver(always(200))
			s.start(nil, endpoint(ns, "crm", rc.URL))
			before := metricValue("herald_delivery_log_publish_failures_total", nil)
			logSubjects := []string{streams.AttemptsPrefix + "." + ns + ".>"}
			s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = []string{"herald.switched-off.>"} })
			for i := range 5 {
				s.publish(ns, "a.b", fmt.Sprintf("evt_l%d", i), "", 0)
			}
			Eventually(rc.count).Should(Equal(5))
			Eventually(func() float64 { return metricValue("herald_delivery_log_publish_failures_total", nil) }).Should(BeNumerically(">=", before+5))
			s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = logSubjects })
			Eventually(func(g Gomega) { g.Expect(s.loggedDelivered(g, ns)).To(Equal(5)) }, 10*time.Second).Should(Succeed())
		})
	})

	Context("when NATS confirms the delivery log's entries slower than they come", func() {
		// The entries are held unconfirmed, as by a NATS server that cannot
		// keep up: the dispatcher must slow to the log's pace, not drop
		// entries it could not queue.
		It("waits for the log, loses no entry, and delivers everything", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			rc := newReceiver(always(200))
			s.start([]dispatcher.Option{dispatcher.WithLogPublisher(2, time.Minute, 1)}, endpoint(ns, "crm", rc.URL))
			lost := metricValue("herald_delivery_log_lost_total", nil)
			waits := metricValue("herald_delivery_log_publish_waits_total", nil)
			release := s.holdLog(ns)
			const n = 10
			for i := range n {
				s.publish(ns, "a.b", fmt.Sprintf("evt_s%d", i), "", 0)
			}
			Eventually(func() bool {
				return metricValue("herald_delivery_log_publish_waits_total", nil) > waits ||
					metricValue("herald_delivery_log_lost_total", nil) > lost
			}, 10*time.Second).Should(BeTrue())
			release()
			Eventually(rc.count, 10*time.Second).Should(Equal(n))
			Eventually(func(g Gomega) { g.Expect(s.loggedDelivered(g, ns)).To(Equal(n)) }, 10*time.Second).Should(Succeed())
			Expect(metricValue("herald_delivery_log_lost_total", nil)).To(Equal(lost))
		})
	})

	Context("when the dispatcher stops while the delivery log refuses publishes", func() {
		It("keeps retrying the entries during the stop and writes them once the log takes them", func() {
			s := newIsolated(streams.DefaultLimits(), nil)
			rc := newReceiver(always(200))
			stop := s.start(nil, endpoint(ns, "crm", rc.URL))
			lost := metricValue("herald_delivery_log_lost_total", nil)
			logSubjects := []string{streams.AttemptsPrefix + "." + ns + ".>"}
			s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = []string{"herald.switched-off.>"} })
			const n = 3
			for i := range n {
				s.publish(ns, "a.b", fmt.Sprintf("evt_t%d", i), "", 0)
			}
			Eventually(rc.count).Should(Equal(n))
			failures := metricValue("herald_delivery_log_publish_failures_total", nil)
			stopped := make(chan struct{})
			go func() { defer close(stopped); stop() }()
			// Retries go on after the stop began, or (as before) the stop
			// counted the queued entries lost.
			Eventually(func() bool {
				return metricValue("herald_delivery_log_publish_failures_total", nil) > failures ||
					metricValue("herald_delivery_log_lost_total", nil) > lost
			}, 10*time.Second).Should(BeTrue())
			s.setStream(streams.AttemptsStream(ns), func(c *jetstream.StreamConfig) { c.Subjects = logSubjects })
			Eventually(stopped, 15*time.Second).Should(BeClosed())
			Expect(metricValue("herald_delivery_log_lost_total", nil)).To(Equal(lost))
			Eventually(func(g Gomega) { g.Expect(s.loggedDelivered(g, ns)).To(Equal(n)) }, 10*time.Second).Should(Succeed())
		})
	})

	It("counts deliveries that missed the endpoint's latency target", func() {
		rc := newReceiver(always(200))
		startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) { e.LatencyTarget = time.Nanosecond }))
		publish(ns, "a.b", "evt_late", "", 0, map[string]any{})
		Eventually(func() float64 {
			return metricValue("herald_deliveries_over_target_total", map[string]string{"namespace": ns, "endpoint": "crm"})
		}).Should(BeEquivalentTo(1))
	})

	It("looks an event up only by a valid id, and only in the namespace asked", func() {
		_, err := dispatcher.EventStatus(context.Background(), js, ">", "", "")
		Expect(err).To(MatchError(events.ErrInvalidID))
		other := newNamespace()
		rc := newReceiver(always(200))
		startDispatcher(endpoint(ns, "crm", rc.URL), endpoint(other, "crm", rc.URL))
		publish(ns, "a.b", "evt_same", "", 0, map[string]any{})
		publish(other, "a.b", "evt_same", "", 0, map[string]any{})
		Eventually(rc.count).Should(Equal(2))
		Eventually(func(g Gomega) []dispatcher.EventState {
			st, err := dispatcher.EventStatus(context.Background(), js, "evt_same", ns, "")
			g.Expect(err).NotTo(HaveOccurred())
			return st
		}).Should(ConsistOf(And(HaveField("Namespace", ns), HaveField("State", dispatcher.StateSent))))
	})

	Context("when an endpoint's worker is slow to stop", func() {
		It("does not hold up other endpoints' configuration", func() {
			release := make(chan struct{})
			slow := newReceiver(func(int, request) (int, http.Header, time.Duration) {
				<-release
				return 200, nil, 0
			})
			DeferCleanup(func() { close(release) })
			fast := newReceiver(always(200))
			ep := endpoint(ns, "slow", slow.URL, func(e *dispatcher.Endpoint) { e.Timeout = 20 * time.Second })
			d := startDispatcher(ep)
			publish(ns, "a.b", "evt_held", "", 0, map[string]any{})
			Eventually(slow.count).Should(Equal(1))

			ep.Timeout = 15 * time.Second // replaces the worker, which drains first
			upserted := make(chan struct{})
			go func() { d.Upsert(ep); close(upserted) }()
			Eventually(upserted).Should(BeClosed())
			createConsumer(ns, "fast")
			d.Upsert(endpoint(ns, "fast", fast.URL))
			publish(ns, "x.y", "evt_fast", "", 0, map[string]any{})
			Eventually(fast.ids).Should(ContainElement("evt_fast"))
		})
	})
})

// wrapBody makes a receiver's handler answer with body instead of its own.
func wrapBody(h http.Handler, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&bodyWriter{ResponseWriter: w, body: body}, r)
	})
}

type bodyWriter struct {
	http.ResponseWriter
	body string
}

func (b *bodyWriter) Write([]byte) (int, error) { return b.ResponseWriter.Write([]byte(b.body)) }

// metricValue sums the samples of one metric in the controller-runtime
// registry whose labels include want.
func metricValue(name string, want map[string]string) float64 {
	GinkgoHelper()
	families, err := crmetrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
