package dispatcher_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herald-dev/herald/internal/streams"
)

// BenchmarkIdleEndpoints is one dispatcher with many endpoints of one
// namespace, on an in-process NATS, as the operator sets them up (an
// events and a replay consumer each):
//
//   - startup-s: from the dispatcher's start, with one event waiting for
//     every endpoint, until every endpoint has received it;
//
//   - idle-cpu-%-per-1000: then, with nothing flowing, the CPU this
//     process (dispatcher and NATS server together) uses, in percent of a
//     core per 1,000 endpoints, over four minutes (two pulls' waits);
//
//   - idle-nats-msgs/s: the messages NATS moves in that window (pulls,
//     their expiries, heartbeats);
//
//   - heap-MiB-per-1000: the live heap the running dispatcher adds, per
//     1,000 endpoints.
//
//     go test ./internal/dispatcher -run '^$' -bench IdleEndpoints -benchtime 1x
func BenchmarkIdleEndpoints(b *testing.B) {
	const endpoints = 1000
	const window = 4 * time.Minute
	env := newBenchEnv(b)
	ctx := context.Background()
	spec := endpointSpec()
	createBenchConsumers(b, env, "idle", endpoints)
	for i := range endpoints {
		cfg := streams.ReplayConsumerConfig("idle", fmt.Sprintf("ep%d", i), &spec)
		if _, err := env.js.CreateOrUpdateConsumer(ctx, streams.ReplayStream("idle"), cfg); err != nil {
			b.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	all := make(chan struct{})
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if !seen[r.URL.Path] {
			seen[r.URL.Path] = true
			if len(seen) == endpoints {
				close(all)
			}
		}
		mu.Unlock()
	}))
	defer rc.Close()
	publishAll(b, env, "idle", 1, 0)
	heap0 := liveHeap()
	// What the NATS server alone costs with these consumers and no
	// client: the part of the idle cost that is not the dispatcher's.
	time.Sleep(5 * time.Second)
	cpu0 := processCPU()
	time.Sleep(window / 4)
	natsOnly := processCPU() - cpu0
	b.ReportMetric(100*natsOnly.Seconds()/(window/4).Seconds()*1000/endpoints, "idle-cpu-%-per-1000-nats-alone")

	start := time.Now()
	benchEndpoints(b, env, "idle", endpoints, rc.URL)
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d endpoints received their event", len(seen), endpoints)
	}
	b.ReportMetric(time.Since(start).Seconds(), "startup-s")

	// Let the last acks and health writes settle, then measure a quiet
	// window.
	time.Sleep(5 * time.Second)
	counts := map[string]int{}
	var cmu sync.Mutex
	if os.Getenv("BENCH_SUBJECTS") != "" {
		sub, _ := env.js.Conn().Subscribe(">", func(m *nats.Msg) {
			t := strings.Split(m.Subject, ".")
			k := strings.Join(t[:min(len(t), 5)], ".")
			if strings.HasPrefix(k, "_INBOX") {
				k = "_INBOX " + m.Header.Get("Status")
			}
			cmu.Lock()
			counts[k]++
			cmu.Unlock()
		})
		defer func() { _ = sub.Unsubscribe() }()
	}
	v0, _ := env.srv.Varz(nil)
	stopProfile := profileDeliveries(b, "idle")
	cpu0 = processCPU()
	time.Sleep(window)
	cpu := processCPU() - cpu0
	stopProfile()
	v1, _ := env.srv.Varz(nil)
	b.ReportMetric(100*cpu.Seconds()/window.Seconds()*1000/endpoints, "idle-cpu-%-per-1000")
	b.ReportMetric(float64(v1.InMsgs+v1.OutMsgs-v0.InMsgs-v0.OutMsgs)/window.Seconds(), "idle-nats-msgs/s")
	if len(counts) > 0 {
		cmu.Lock()
		for k, v := range counts {
			if v > 20 {
				fmt.Fprintf(os.Stderr, "%6d %s\n", v, k)
			}
		}
		cmu.Unlock()
	}
	b.ReportMetric(float64(liveHeap()-heap0)/(1<<20)*1000/endpoints, "heap-MiB-per-1000")
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
