package dispatcher_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

// The delivery benchmark: events published to a real NATS server, delivered
// by the dispatcher to a local receiver that answers 200 at once, compared
// in the same run with the ceiling, a plain keep-alive Go HTTP client
// driving the same receiver at the same concurrency. Run it with
// `make bench`; each benchmark runs once (-benchtime 1x) over a fixed
// number of deliveries and reports its figures as metrics.

const benchInFlight = 16

type benchEnv struct {
	srv *natsserver.Server
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
	env := &benchEnv{srv: srv, js: conn(), pub: conn()}
	return env
}

// latencyReceiver answers 200 at once and records, per delivery, the time
// from the publish stamped in the event's data to its arrival.
type latencyReceiver struct {
	*httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	lat  []time.Duration
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

func (r *latencyReceiver) percentiles() (p50, p99 time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return percentile(r.lat, 50), percentile(r.lat, 99)
}

// percentile is the q-th percentile of d (0 when d is empty).
func percentile(d []time.Duration, q int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)*q/100]
}

func benchEndpoints(b benchT, env *benchEnv, ns string, n int, url string, opts ...dispatcher.Option) *dispatcher.Dispatcher {
	ctx, cancel := context.WithCancel(context.Background())
	d, err := dispatcher.New(ctx, env.js, append([]dispatcher.Option{dispatcher.WithLogger(logr.Discard()), allowLoopback}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	createBenchConsumers(b, env, ns, n)
	for i := range n {
		name := fmt.Sprintf("ep%d", i)
		d.Upsert(benchEndpoint(ns, name, url+"/"+name))
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return d
}

// benchEndpoint is one benchmark endpoint, ordered per key, with the
// default policy.
func benchEndpoint(ns, name, url string) dispatcher.Endpoint {
	k, _ := signingKeys(secretA)
	return dispatcher.Endpoint{Namespace: ns, Name: name, URL: url, Keys: k,
		Timeout: 2 * time.Second, PerKey: true, MaxInFlight: benchInFlight, Policy: dispatcher.DefaultPolicy()}
}

func createBenchConsumers(b benchT, env *benchEnv, ns string, n int) {
	for i := range n {
		createBenchConsumer(b, env, ns, fmt.Sprintf("ep%d", i))
	}
}

// createBenchConsumer does what the operator does for an endpoint.
func createBenchConsumer(b benchT, env *benchEnv, ns, name string) {
	spec := endpointSpec()
	cfg, err := streams.ConsumerConfig(ns, name, &spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := streams.EnsureNamespace(context.Background(), env.js, streams.DefaultLimits(), ns); err != nil {
		b.Fatal(err)
	}
	if _, err := env.js.CreateOrUpdateConsumer(context.Background(), events.StreamName(ns), cfg); err != nil {
		b.Fatal(err)
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
			// Dispatcher and forwarder alternate, twice each, so a busy
			// moment on the shared machine does not fall on one side only.
			var rate, fwd float64
			for range 2 {
				rate += deliveryRate(b, endpoints, deliveries, fmt.Sprintf("endpoints=%d", endpoints)) / 2
				fwd += forwarderRate(b, endpoints, deliveries) / 2
			}
			ceiling := rawCeiling(b, deliveries, endpoints*benchInFlight)
			b.ReportMetric(rate, "deliveries/s")
			b.ReportMetric(fwd, "forwarder/s")
			b.ReportMetric(ceiling, "raw-http/s")
			b.ReportMetric(rate/fwd, "ratio-forwarder")
			b.ReportMetric(rate/ceiling, "ratio-raw")
		})
	}
}

// deliveryRate publishes a backlog for endpoints endpoints (deliveries in
// all), then starts a dispatcher and times it until the receiver has every
// delivery. The backlog goes first, so the figure is the dispatcher's rate,
// not the publisher's; publish-to-receive latency comes from
// BenchmarkLatency.
func deliveryRate(b *testing.B, endpoints, deliveries int, name string, opts ...dispatcher.Option) float64 {
	return drainRate(b, endpoints, deliveries, name, func(s benchT, env *benchEnv, url string) {
		benchEndpoints(s, env, "bench", endpoints, url, opts...)
	})
}

// drainRate publishes the backlog on a NATS server of its own, calls start
// to begin delivering it to url, and returns deliveries per second until
// the receiver has them all.
func drainRate(b *testing.B, endpoints, deliveries int, name string, start func(benchT, *benchEnv, string)) float64 {
	s := &runScope{B: b}
	defer s.end()
	env := newBenchEnv(s)
	per := deliveries / endpoints
	rc := newLatencyReceiver(int64(per * endpoints))
	defer rc.Close()
	createBenchConsumers(s, env, "bench", endpoints)
	publishAll(s, env, "bench", per, 0)
	stopProfile := profileDeliveries(b, name)
	t0 := time.Now()
	start(s, env, rc.URL)
	select {
	case <-rc.done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%s: only %d of %d deliveries arrived", name, rc.n.Load(), per*endpoints)
	}
	elapsed := time.Since(t0)
	stopProfile()
	return float64(per*endpoints) / elapsed.Seconds()
}

// forwarderRate is the JetStream ceiling: the least any JetStream-based
// dispatcher must do. Per endpoint it pulls from the endpoint's consumer
// with the dispatcher's batch sizes (room for heldPerSlot events per
// request slot), signs each event, POSTs it with benchInFlight requests at
// a time and acks it on a 2xx. It keeps no version record, writes no log
// and has no lanes, health, limits or retries. Same backlog, same kind of
// receiver, a NATS server of its own.
func forwarderRate(b *testing.B, endpoints, deliveries int) float64 {
	return drainRate(b, endpoints, deliveries, "forwarder", func(s benchT, env *benchEnv, url string) {
		startForwarder(s, env, endpoints, url)
	})
}

func startForwarder(s benchT, env *benchEnv, endpoints int, receiver string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	s.Cleanup(func() { cancel(); wg.Wait() })
	keys, _ := signingKeys(secretA)
	for i := range endpoints {
		name := fmt.Sprintf("ep%d", i)
		cons, err := env.js.Consumer(ctx, events.StreamName("bench"), streams.ConsumerName("bench", name))
		if err != nil {
			s.Fatal(err)
		}
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchInFlight, MaxConnsPerHost: benchInFlight}}
		url := receiver + "/" + name
		held := make(chan struct{}, benchInFlight*4)
		slots := make(chan struct{}, benchInFlight)
		send := func(msg jetstream.Msg) {
			defer func() { <-held }()
			slots <- struct{}{}
			defer func() { <-slots }()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(msg.Data()))
			req.Header.Set("Content-Type", "application/json")
			id := msg.Headers().Get(events.HeaderID)
			signing.SetHeaders(req.Header, keys, id, time.Now(), msg.Data())
			resp, err := client.Do(req)
			if err != nil {
				_ = msg.Nak()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				_ = msg.Ack()
			} else {
				_ = msg.Nak()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				held <- struct{}{}
				n := 1
				for n < cap(held) {
					select {
					case held <- struct{}{}:
						n++
						continue
					default:
					}
					break
				}
				batch, err := cons.Fetch(n, jetstream.FetchMaxWait(2*time.Second))
				got := 0
				if err == nil {
					for msg := range batch.Messages() {
						got++
						wg.Add(1)
						go func() { defer wg.Done(); send(msg) }()
					}
				}
				for ; got < n; got++ {
					<-held
				}
			}
		}()
	}
}

// BenchmarkDeliveryCost shows what each durable write costs: one endpoint,
// the full dispatcher, then without the version record, without the
// delivery log, and without both (switches only tests can set), two
// alternating rounds with the JetStream forwarder, against both ceilings
// in the same run.
func BenchmarkDeliveryCost(b *testing.B) {
	const deliveries = 20000
	variants := []struct {
		name string
		opts []dispatcher.Option
	}{
		{"full", nil},
		{"no-version-record", []dispatcher.Option{dispatcher.WithoutVersionRecords()}},
		{"no-delivery-log", []dispatcher.Option{dispatcher.WithoutDeliveryLog()}},
		{"neither", []dispatcher.Option{dispatcher.WithoutVersionRecords(), dispatcher.WithoutDeliveryLog()}},
	}
	rates := make([][]float64, len(variants))
	var fwd float64
	for range 2 {
		for i, v := range variants {
			rates[i] = append(rates[i], deliveryRate(b, 1, deliveries, v.name, v.opts...))
		}
		fwd += forwarderRate(b, 1, deliveries) / 2
	}
	ceiling := rawCeiling(b, deliveries, benchInFlight)
	b.ReportMetric(ceiling, "raw-http/s")
	b.ReportMetric(fwd, "forwarder/s")
	// A write made free (pipelined, batched) can at best bring the full
	// dispatcher to the variant without it: these ratios bound what
	// pipelining the version writes or batching the log could reach.
	for i, v := range variants {
		r := (rates[i][0] + rates[i][1]) / 2
		b.ReportMetric(r, v.name+"/s")
		b.ReportMetric(r/ceiling, v.name+"-ratio")
		b.ReportMetric(r/fwd, v.name+"-vs-forwarder")
	}
}

// profileDeliveries writes a CPU profile of the delivery phase alone
// (no publishing, no ceiling run) to $BENCH_CPUPROFILE-<name>, when set.
func profileDeliveries(b *testing.B, name string) func() {
	base := os.Getenv("BENCH_CPUPROFILE")
	if base == "" {
		return func() {}
	}
	f, err := os.Create(base + "-" + name)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }
}

// rawCeiling drives a fresh receiver with a plain keep-alive client: the
// most deliveries per second this machine can do at this concurrency. It
// is the median of three runs, so one lucky or unlucky moment on a shared
// machine does not set the ratio.
func rawCeiling(b *testing.B, n, concurrency int) float64 {
	r := []float64{rawRate(b, n, concurrency), rawRate(b, n, concurrency), rawRate(b, n, concurrency)}
	slices.Sort(r)
	return r[1]
}

func rawRate(b *testing.B, n, concurrency int) float64 {
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

// BenchmarkLatency publishes events at a steady rate to one endpoint and
// reports publish-to-receive latency: 1,000 a second for the target, and
// 10 and 50 a second, the rates of the peer comparison in
// docs/performance.md.
func BenchmarkLatency(b *testing.B) {
	for _, c := range []struct{ rate, count int }{{10, 300}, {50, 1500}, {1000, 5000}} {
		b.Run(fmt.Sprintf("rate=%d", c.rate), func(b *testing.B) {
			env := newBenchEnv(b)
			rc := newLatencyReceiver(int64(c.count))
			defer rc.Close()
			benchEndpoints(b, env, "lat", 1, rc.URL)
			publishAll(b, env, "lat", c.count, c.rate)
			<-rc.done
			p50, p99 := rc.percentiles()
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkIsolation compares healthy endpoints' latency with and without
// a neighbour that times out and one that answers 500 to everything. The
// faulty pair retries on a short schedule, so their retries and probes run
// during the measurement and not only their first failures.
func BenchmarkIsolation(b *testing.B) {
	const healthy, count, rate = 10, 1000, 200
	cpu := map[bool]time.Duration{}
	run := func(faulty bool) []time.Duration {
		var receivers *exec.Cmd
		// After the scope's end, which stops it: its whole life, a little
		// more than the measured part, so the faulty side is not flattered.
		defer func() {
			if receivers != nil {
				cpu[true] += receivers.ProcessState.UserTime() + receivers.ProcessState.SystemTime()
			}
		}()
		b := &runScope{B: b}
		defer b.end()
		env := newBenchEnv(b)
		rc := newLatencyReceiver(healthy * count)
		defer rc.Close()
		d := benchEndpoints(b, env, "iso", healthy, rc.URL)
		if faulty {
			// The faulty pair are endpoints of the same dispatcher, as two
			// endpoints of one namespace would be; their receivers run in a
			// process of their own, as a customer's would, not in the one
			// whose latency is measured.
			var hang, fail string
			receivers, hang, fail = faultyReceivers(b)
			for name, url := range map[string]string{"slow": hang, "failing": fail} {
				createBenchConsumer(b, env, "iso", name)
				ep := benchEndpoint("iso", name, url)
				ep.Timeout = time.Second
				ep.Policy.Schedule = []time.Duration{200 * time.Millisecond, 500 * time.Millisecond, time.Second}
				d.Upsert(ep)
			}
		}
		cpu0 := processCPU()
		publishAll(b, env, "iso", count, rate)
		<-rc.done
		cpu[faulty] += processCPU() - cpu0
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return slices.Clone(rc.lat)
	}
	// Alternating runs, pooled per kind: one run's p99 of a few
	// milliseconds moves with a GC pause or a busy core on a shared
	// machine, and the pool of 50,000 deliveries moves much less. The
	// clean runs split in two give the noise floor: what the ratio is
	// when nothing differs.
	const pairs = 5
	var clean, faulty, cleanOdd, cleanEven []time.Duration
	var ratios []float64
	var worstFaulty time.Duration
	for i := range pairs {
		c := run(false)
		clean = append(clean, c...)
		if i%2 == 0 {
			cleanEven = append(cleanEven, c...)
		} else {
			cleanOdd = append(cleanOdd, c...)
		}
		f := run(true)
		faulty = append(faulty, f...)
		ratios = append(ratios, float64(percentile(f, 99))/float64(percentile(c, 99)))
		worstFaulty = max(worstFaulty, percentile(f, 99))
	}
	slices.Sort(ratios)
	pc, pf := percentile(clean, 99), percentile(faulty, 99)
	b.ReportMetric(float64(pc.Microseconds())/1000, "p99-clean-ms")
	b.ReportMetric(float64(pf.Microseconds())/1000, "p99-faulty-ms")
	b.ReportMetric(float64(pf)/float64(pc), "ratio")
	// The bound over runs: the median of the pairs' own ratios, and the
	// worst healthy p99 of any faulty run.
	b.ReportMetric(ratios[len(ratios)/2], "median-pair-ratio")
	b.ReportMetric(float64(worstFaulty.Microseconds())/1000, "worst-faulty-p99-ms")
	b.ReportMetric(float64(percentile(cleanOdd, 99))/float64(percentile(cleanEven, 99)), "clean-vs-clean")
	// The CPU this process (NATS, the dispatcher, the healthy receiver)
	// used while the runs published and delivered, plus the faulty
	// receivers' process: what the faulty pair adds.
	b.ReportMetric(float64(cpu[true])/float64(cpu[false]), "cpu-faulty-vs-clean")
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// faultyReceivers starts this test binary as a process serving a receiver
// that never answers and one that answers 500 to everything, and returns
// their URLs. The process ends with the run.
func faultyReceivers(b benchT) (cmd *exec.Cmd, hang, fail string) {
	cmd = exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), receiversEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for (hang == "" || fail == "") && sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "hang":
			hang = v
		case "fail":
			fail = v
		}
	}
	if hang == "" || fail == "" {
		b.Fatal("the faulty receivers did not start")
	}
	return cmd, hang, fail
}

const receiversEnv = "HERALD_TEST_FAULTY_RECEIVERS"

// runFaultyReceivers is the faulty receivers' process: it serves until its
// parent closes stdin.
func runFaultyReceivers() {
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	fmt.Printf("hang=%s\nfail=%s\n", hang.URL, fail.URL)
	_, _ = io.Copy(io.Discard, os.Stdin)
	close(stop)
	hang.Close()
	fail.Close()
}
