package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

const (
	secretA = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	secretB = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
)

var (
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream
	pub     *events.Publisher
	nsSeq   atomic.Int64
)

func TestMain(m *testing.M) {
	// The kill -9 spec re-runs this binary as a dispatcher process.
	if os.Getenv(childEnv) != "" {
		runChild()
		return
	}
	// The isolation benchmark serves its faulty receivers from here.
	if os.Getenv(receiversEnv) != "" {
		runFaultyReceivers()
		return
	}
	os.Exit(m.Run())
}

func TestDispatcher(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(5 * time.Second)
	SetDefaultEventuallyPollingInterval(20 * time.Millisecond)
	RunSpecs(t, "Dispatcher suite")
}

var _ = BeforeSuite(func() {
	srv, err := testenv.NATS(GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(srv.Shutdown)
	natsURL = srv.ClientURL()
	nc, err = nats.Connect(natsURL)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
	pub, err = events.NewPublisher(js)
	Expect(err).NotTo(HaveOccurred())
})

// newNamespace gives every spec its own namespace, so specs share one NATS.
func newNamespace() string { return fmt.Sprintf("t%d", nsSeq.Add(1)) }

func keys(secrets ...string) []signing.Key {
	var out []signing.Key
	for _, s := range secrets {
		k, err := signing.ParseSecret(s)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, k)
	}
	return out
}

// fastPolicy is the default policy with delays short enough to test.
func fastPolicy(schedule ...time.Duration) dispatcher.Policy {
	p := dispatcher.DefaultPolicy()
	if len(schedule) == 0 {
		schedule = []time.Duration{200 * time.Millisecond}
	}
	p.Schedule = schedule
	p.Window = time.Minute
	return p
}

func endpoint(ns, name, url string, mutate ...func(*dispatcher.Endpoint)) dispatcher.Endpoint {
	ep := dispatcher.Endpoint{
		Namespace: ns, Name: name, URL: url, Keys: keys(secretA),
		Timeout: 2 * time.Second, PerKey: true, MaxInFlight: 16, Policy: fastPolicy(),
	}
	for _, m := range mutate {
		m(&ep)
	}
	return ep
}

// createConsumer does what the operator does for an endpoint of every
// event type.
func createConsumer(ns, name string) {
	GinkgoHelper()
	createConsumerOn(js, streams.DefaultLimits(), ns, name, nil)
}

// createConsumerOn does it on another server's JetStream: the namespace's
// streams with limits l, then the endpoint's consumer (mutate, when
// given, changes its config first).
func createConsumerOn(js jetstream.JetStream, l streams.Limits, ns, name string, mutate func(*jetstream.ConsumerConfig)) {
	GinkgoHelper()
	ctx := context.Background()
	Expect(streams.EnsureNamespace(ctx, js, l, ns)).To(Succeed())
	spec := endpointSpec()
	cfg, err := streams.ConsumerConfig(ns, name, &spec)
	Expect(err).NotTo(HaveOccurred())
	if mutate != nil {
		mutate(&cfg)
	}
	_, err = js.CreateOrUpdateConsumer(ctx, events.StreamName(ns), cfg)
	Expect(err).NotTo(HaveOccurred())
}

// allowLoopback opens 127.0.0.0/8 to the egress guard: every receiver of
// these tests listens there, which the default guard refuses.
var allowLoopback = dispatcher.WithEgressGuard(egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}))

// startDispatcher runs a dispatcher for the spec's duration.
func startDispatcher(eps ...dispatcher.Endpoint) *dispatcher.Dispatcher {
	return startDispatcherWith(nil, eps...)
}

// startDispatcherWith is startDispatcher with options that come after
// the suite's (a guard given here replaces allowLoopback).
func startDispatcherWith(opts []dispatcher.Option, eps ...dispatcher.Endpoint) *dispatcher.Dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	opts = append([]dispatcher.Option{dispatcher.WithLogger(testLogger()), dispatcher.WithHealthInterval(100 * time.Millisecond), dispatcher.WithDrainTimeout(5 * time.Second), allowLoopback}, opts...)
	d, err := dispatcher.New(ctx, js, opts...)
	Expect(err).NotTo(HaveOccurred())
	for _, ep := range eps {
		createConsumer(ep.Namespace, ep.Name)
		d.Upsert(ep)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	DeferCleanup(func() { cancel(); <-done })
	return d
}

func testLogger() logr.Logger {
	return zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true))
}

func publish(ns, typ, id, key string, version int64, data any) {
	GinkgoHelper()
	b, err := json.Marshal(data)
	Expect(err).NotTo(HaveOccurred())
	_, err = pub.Publish(context.Background(), events.Event{ID: id, Namespace: ns, Type: typ, Key: key, Version: version, Data: b})
	Expect(err).NotTo(HaveOccurred())
}

// request is one webhook a receiver got.
type request struct {
	At       time.Time
	Header   http.Header
	Body     []byte
	Envelope events.Envelope
}

// receiver is a real HTTP server on 127.0.0.1 whose answer a spec scripts.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []request
	answer func(n int, r request) (status int, header http.Header, delay time.Duration)
}

func newReceiver(answer func(n int, r request) (int, http.Header, time.Duration)) *receiver {
	rc := &receiver{answer: answer}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req := request{At: time.Now(), Header: r.Header.Clone(), Body: body}
		_ = json.Unmarshal(body, &req.Envelope)
		rc.mu.Lock()
		rc.got = append(rc.got, req)
		n := len(rc.got)
		rc.mu.Unlock()
		status, hdr, delay := http.StatusOK, http.Header(nil), time.Duration(0)
		if rc.answer != nil {
			status, hdr, delay = rc.answer(n, req)
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		for k, v := range hdr {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte("answer " + strconv.Itoa(status)))
	}))
	DeferCleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.got...)
}

func (rc *receiver) count() int { return len(rc.requests()) }

// ids lists the webhook-id of every request, in arrival order.
func (rc *receiver) ids() []string {
	var out []string
	for _, r := range rc.requests() {
		out = append(out, r.Header.Get("webhook-id"))
	}
	return out
}

func status(ns, id string) func(Gomega) []dispatcher.EventState {
	return func(g Gomega) []dispatcher.EventState {
		st, err := dispatcher.EventStatus(context.Background(), js, id, ns, "")
		g.Expect(err).NotTo(HaveOccurred())
		return st
	}
}

func history(ns, ep, id string) []dispatcher.Attempt {
	GinkgoHelper()
	h, err := dispatcher.History(context.Background(), js, ns, ep, id)
	Expect(err).NotTo(HaveOccurred())
	return h
}

// readAll reads a stream's messages on filter (last per subject when
// lastPerSubject) through a consumer it deletes afterwards, so polling
// leaves nothing behind.
func readAll(g Gomega, stream, filter string, lastPerSubject bool) []jetstream.Msg {
	return readAllOn(g, js, stream, filter, lastPerSubject)
}

// readAllOn is readAll on another server's JetStream.
func readAllOn(g Gomega, js jetstream.JetStream, stream, filter string, lastPerSubject bool) []jetstream.Msg {
	ctx := context.Background()
	cfg := jetstream.ConsumerConfig{FilterSubject: filter, AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second}
	if lastPerSubject {
		cfg.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	}
	c, err := js.CreateConsumer(ctx, stream, cfg)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = js.DeleteConsumer(ctx, stream, c.CachedInfo().Name) }()
	var out []jetstream.Msg
	for pending := int(c.CachedInfo().NumPending); pending > 0; {
		batch, err := c.FetchNoWait(pending)
		g.Expect(err).NotTo(HaveOccurred())
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			break
		}
		pending -= n
	}
	return out
}

// deadLetters reads the dead-letter subject of the spec's endpoint "crm".
func deadLetters(g Gomega, ns string) []dispatcher.DeadLetter {
	const ep = "crm"
	var out []dispatcher.DeadLetter
	for _, m := range readAll(g, streams.DeadLetterStream(ns), streams.DeadLetterSubject(ns, ep, "*"), false) {
		var dl dispatcher.DeadLetter
		g.Expect(json.Unmarshal(m.Data(), &dl)).To(Succeed())
		out = append(out, dl)
	}
	return out
}

func healthOf(g Gomega, ns, ep string) *dispatcher.Health {
	kv, err := js.KeyValue(context.Background(), streams.HealthBucket(ns))
	g.Expect(err).NotTo(HaveOccurred())
	h, err := dispatcher.ReadHealth(context.Background(), kv, ns, ep)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h).NotTo(BeNil())
	return h
}

func signingKeys(secrets ...string) ([]signing.Key, error) {
	var out []signing.Key
	for _, s := range secrets {
		k, err := signing.ParseSecret(s)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// lastOutcomes reads the newest delivery-log outcome of every event of one
// endpoint.
func lastOutcomes(g Gomega, ns, ep string) map[string]string {
	out := map[string]string{}
	for _, m := range readAll(g, streams.AttemptsStream(ns), streams.AttemptSubject(ns, ep, "*"), true) {
		var a dispatcher.Attempt
		g.Expect(json.Unmarshal(m.Data(), &a)).To(Succeed())
		out[a.EventID] = a.Outcome
	}
	return out
}
