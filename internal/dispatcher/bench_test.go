package dispatcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

// The delivery benchmark: events published to a real NATS server, delivered
// by the dispatcher to a local receiver that answers 200 at once, compared
// in the same run with the ceiling, a plain keep-alive Go HTTP client
// driving the same receiver at the same concurrency. Run it with
// `make bench`; each benchmark runs once (-benchtime 1x) over a fixed
// number of deliveries and reports its figures as metrics.

const benchInFlight = 16

type benchEnv struct {
	js  jetstream.JetStream
	pub jetstream.JetStream
}

func newBenchEnv(b benchT) *benchEnv {
	srv, err := testenv.NATS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	conn := func() jetstream.JetStream {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
		if err != nil {
			b.Fatal(err)
		}
		return js
	}
	env := &benchEnv{js: conn(), pub: conn()}
	if err := streams.Ensure(context.Background(), env.js, streams.DefaultLimits()); err != nil {
		b.Fatal(err)
	}
	return env
}

// latencyReceiver answers 200 at once and records, per delivery, the time
// from the publish stamped in the event's data to its arrival.
type latencyReceiver struct {
	*httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	lat  []time.Duration
	path map[string]*atomic.Int64
	done chan struct{}
	want int64
}

func newLatencyReceiver(want int64) *latencyReceiver {
	r := &latencyReceiver{done: make(chan struct{}), want: want}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var env struct {
			Data struct {
				At int64 `json:"at"`
			} `json:"data"`
		}
		if json.Unmarshal(body, &env) == nil && env.Data.At > 0 {
			d := time.Since(time.Unix(0, env.Data.At))
			r.mu.Lock()
			r.lat = append(r.lat, d)
			r.mu.Unlock()
		}
		w.WriteHeader(http.StatusOK)
		if r.n.Add(1) == r.want {
			close(r.done)
		}
	}))
	return r
}

func (r *latencyReceiver) percentiles(paths ...string) (p50, p99 time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := slices.Clone(r.lat)
	slices.Sort(l)
	if len(l) == 0 {
		return 0, 0
	}
	return l[len(l)/2], l[len(l)*99/100]
}

func benchEndpoints(b benchT, env *benchEnv, ns string, n int, url string) *dispatcher.Dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	d, err := dispatcher.New(ctx, env.js, dispatcher.WithLogger(logr.Discard()))
	if err != nil {
		b.Fatal(err)
	}
	createBenchConsumers(b, env, ns, n)
	k, _ := signingKeys(secretA)
	for i := range n {
		name := fmt.Sprintf("ep%d", i)
		d.Upsert(dispatcher.Endpoint{Namespace: ns, Name: name, URL: url + "/" + name, Keys: k,
			Timeout: 2 * time.Second, PerKey: true, MaxInFlight: benchInFlight, Policy: dispatcher.DefaultPolicy()})
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return d
}

func createBenchConsumers(b benchT, env *benchEnv, ns string, n int) {
	spec := endpointSpec(nil)
	for i := range n {
		cfg, err := streams.ConsumerConfig(ns, fmt.Sprintf("ep%d", i), &spec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := env.js.CreateOrUpdateConsumer(context.Background(), events.StreamName, cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// publishAll publishes count events, paced at rate per second (0: as fast
// as JetStream takes them), with 1000 distinct keys.
func publishAll(b benchT, env *benchEnv, ns string, count, rate int) {
	var tick *time.Ticker
	if rate > 0 {
		tick = time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
	}
	for i := range count {
		if tick != nil {
			<-tick.C
		}
		e := events.Event{ID: "evt_" + strconv.Itoa(i), Namespace: ns, Type: "bench.event", Key: "k" + strconv.Itoa(i%1000),
			Data: []byte(`{"at":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"pad":"` + pad + `"}`)}
		body, hdr, err := e.Encode(events.DefaultMaxBodyBytes)
		if err != nil {
			b.Fatal(err)
		}
		msg := &nats.Msg{Subject: events.Subject(ns, e.Type), Data: body, Header: nats.Header{}}
		for k, v := range hdr {
			msg.Header.Set(k, v)
		}
		if _, err := env.pub.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-env.pub.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("publishing did not complete")
	}
}

// pad makes the body a typical small webhook (about 300 bytes).
var pad = string(bytes.Repeat([]byte("x"), 200))

func BenchmarkDelivery(b *testing.B) {
	for _, endpoints := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("endpoints=%d", endpoints), func(b *testing.B) {
			const deliveries = 20000
			env := newBenchEnv(b)
			events := deliveries / endpoints
			rc := newLatencyReceiver(int64(events * endpoints))
			defer rc.Close()
			// The backlog is published first (the consumers exist, the
			// dispatcher does not run yet), so the figure is the
			// dispatcher's delivery rate, not the publisher's; publish-to-
			// receive latency comes from BenchmarkLatencyAt1000PerSecond.
			createBenchConsumers(b, env, "bench", endpoints)
			publishAll(b, env, "bench", events, 0)
			start := time.Now()
			benchEndpoints(b, env, "bench", endpoints, rc.URL)
			select {
			case <-rc.done:
			case <-time.After(5 * time.Minute):
				b.Fatalf("only %d of %d deliveries arrived", rc.n.Load(), events*endpoints)
			}
			elapsed := time.Since(start)
			rate := float64(events*endpoints) / elapsed.Seconds()

			ceiling := rawCeiling(b, events*endpoints, endpoints*benchInFlight)
			b.ReportMetric(rate, "deliveries/s")
			b.ReportMetric(ceiling, "raw-http/s")
			b.ReportMetric(rate/ceiling, "ratio")
		})
	}
}

// rawCeiling drives a fresh receiver with a plain keep-alive client: the
// most deliveries per second this machine can do at this concurrency.
func rawCeiling(b *testing.B, n, concurrency int) float64 {
	rc := newLatencyReceiver(int64(n))
	defer rc.Close()
	body := []byte(`{"type":"bench.event","id":"evt_1","timestamp":"2026-11-28T10:03:00Z","key":"k1","data":{"pad":"` + pad + `"}}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency}}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				resp, err := client.Post(rc.URL, "application/json", bytes.NewReader(body))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkLatencyAt1000PerSecond publishes 1,000 events a second to one
// endpoint and reports publish-to-receive latency.
func BenchmarkLatencyAt1000PerSecond(b *testing.B) {
	const count = 5000
	env := newBenchEnv(b)
	rc := newLatencyReceiver(count)
	defer rc.Close()
	benchEndpoints(b, env, "lat", 1, rc.URL)
	publishAll(b, env, "lat", count, 1000)
	<-rc.done
	p50, p99 := rc.percentiles()
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}

// BenchmarkIsolation compares healthy endpoints' latency with and without
// a neighbour that times out and one that answers 500 to everything.
func BenchmarkIsolation(b *testing.B) {
	const healthy, count, rate = 10, 1000, 200
	run := func(faulty bool) time.Duration {
		b := &runScope{B: b}
		defer b.end()
		env := newBenchEnv(b)
		rc := newLatencyReceiver(healthy * count)
		defer rc.Close()
		benchEndpoints(b, env, "iso", healthy, rc.URL)
		if faulty {
			stop := make(chan struct{})
			hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-stop:
				}
			}))
			fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
			// Cleanups run last-in first-out: these run after the dispatchers stopped.
			b.Cleanup(func() { close(stop); hang.Close(); fail.Close() })
			benchEndpointsNamed(b, env, "iso", "slow", hang.URL)
			benchEndpointsNamed(b, env, "iso", "failing", fail.URL)
		}
		publishAll(b, env, "iso", count, rate)
		<-rc.done
		_, p99 := rc.percentiles()
		return p99
	}
	// Alternating runs, and the median of each kind: one run's p99 of a few
	// milliseconds moves with a GC pause or a busy core on a shared machine.
	const pairs = 3
	var cleans, faults []time.Duration
	for range pairs {
		cleans = append(cleans, run(false))
		faults = append(faults, run(true))
	}
	clean, withFaults := median(cleans), median(faults)
	b.ReportMetric(float64(clean.Microseconds())/1000, "p99-clean-ms")
	b.ReportMetric(float64(withFaults.Microseconds())/1000, "p99-faulty-ms")
	b.ReportMetric(float64(withFaults)/float64(clean), "ratio")
}

// benchT is what the helpers need of a benchmark. A runScope passes for
// one, so a benchmark that measures several runs can end each run's
// servers and dispatchers before the next starts.
type benchT interface {
	Cleanup(func())
	Fatal(args ...any)
	TempDir() string
}

type runScope struct {
	*testing.B
	cleanups []func()
}

func (s *runScope) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

// end runs the cleanups last-in first-out, as testing does.
func (s *runScope) end() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func benchEndpointsNamed(b benchT, env *benchEnv, ns, name, url string) {
	ctx, cancel := context.WithCancel(context.Background())
	d, err := dispatcher.New(ctx, env.js, dispatcher.WithLogger(logr.Discard()))
	if err != nil {
		b.Fatal(err)
	}
	spec := endpointSpec(nil)
	cfg, _ := streams.ConsumerConfig(ns, name, &spec)
	if _, err := env.js.CreateOrUpdateConsumer(ctx, events.StreamName, cfg); err != nil {
		b.Fatal(err)
	}
	k, _ := signingKeys(secretA)
	d.Upsert(dispatcher.Endpoint{Namespace: ns, Name: name, URL: url, Keys: k, Timeout: time.Second,
		PerKey: true, MaxInFlight: benchInFlight, Policy: dispatcher.DefaultPolicy()})
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
}
