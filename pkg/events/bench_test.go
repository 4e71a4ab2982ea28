package events_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herald-dev/herald/pkg/events"
)

// BenchmarkPublish measures one producer publishing to a namespace's
// events stream on an in-process NATS with file storage: every publish is
// confirmed by the stream before it counts. Synchronous publishes report
// their latency; the batched, asynchronous path its rate. Both use
// envelopes of about 300 bytes over 1,000 keys, as the delivery benchmark.
//
//	go test ./pkg/events -run '^$' -bench Publish -benchtime 1x
func BenchmarkPublish(b *testing.B) {
	data := []byte(`{"plan":"pro","seats":12,"note":"` + strings.Repeat("x", 160) + `"}`)
	event := func(run, i int) events.Event {
		return events.Event{ID: fmt.Sprintf("r%d_%d", run, i), Namespace: "shop", Type: "subscription.updated",
			Key: fmt.Sprintf("sub_%d", i%1000), Version: int64(i + 1), Data: data}
	}
	b.Run("sync", func(b *testing.B) {
		js := jetStream(b)
		pub, _ := events.NewPublisher(js)
		const n = 5000
		ctx := context.Background()
		for run := range b.N {
			lat := make([]time.Duration, 0, n)
			start := time.Now()
			for i := range n {
				t0 := time.Now()
				if _, err := pub.Publish(ctx, event(run, i)); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			slices.Sort(lat)
			b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "p99-ms")
		}
	})
	for _, window := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch/window=%d", window), func(b *testing.B) {
			js := jetStream(b)
			pub, _ := events.NewPublisher(js)
			const n = 100_000
			for run := range b.N {
				evs := make([]events.Event, n)
				for i := range evs {
					evs[i] = event(run, i)
				}
				start := time.Now()
				for i, err := range pub.PublishBatch(context.Background(), evs, window) {
					if err != nil {
						b.Fatalf("event %d: %v", i, err)
					}
				}
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
			}
		})
	}
}
