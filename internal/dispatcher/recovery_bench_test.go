package dispatcher_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/herald-dev/herald/internal/dispatcher"
)

// BenchmarkRecovery shows the adaptive limits against the same dispatcher
// with them off (maxInFlight from the first request, no adaptive rate), in
// the same run:
//
//   - herd: one endpoint down (500) with 10,000 events waiting, then up.
//     The most requests in flight over the first ten that succeed and
//     over the first 100 ms, requests in the first second, and the time
//     from the first success until all 10,000 are delivered.
//   - 429: a receiver that answers 429 above 50 requests/s (a token bucket
//     of 50/s, burst 5) and 1,000 events waiting: 429s in the first two
//     seconds and after them, and the time until all are delivered.
//
// Run it with `make bench`.
func BenchmarkRecovery(b *testing.B) {
	for _, mode := range []string{"adaptive", "fixed"} {
		var opts []dispatcher.Option
		if mode == "fixed" {
			opts = append(opts, dispatcher.WithoutAdaptiveLimits())
		}
		b.Run("herd/"+mode, func(b *testing.B) { benchHerd(b, opts) })
		b.Run("429/"+mode, func(b *testing.B) { bench429(b, opts) })
	}
}

// recoveryPolicy retries fast, so the figures are the limits', not the
// schedule's.
func recoveryPolicy() dispatcher.Policy {
	p := dispatcher.DefaultPolicy()
	p.Schedule = []time.Duration{200 * time.Millisecond, 500 * time.Millisecond, time.Second}
	p.Jitter = 0
	return p
}

// recoveryReceiver answers answer(), and records every 2xx arrival's time
// and the requests in flight when it came.
type recoveryReceiver struct {
	*httptest.Server
	inFlight  atomic.Int64
	delivered atomic.Int64
	rejected  atomic.Int64 // non-2xx answers
	mu        sync.Mutex
	arrivals  []arrival
	rejects   []time.Time
	done      chan struct{}
}

type arrival struct {
	at       time.Time
	inFlight int64
}

func newRecoveryReceiver(want int64, answer func() int) *recoveryReceiver {
	rr := &recoveryReceiver{done: make(chan struct{})}
	rr.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := rr.inFlight.Add(1)
		defer rr.inFlight.Add(-1)
		now := time.Now()
		status := answer()
		w.WriteHeader(status)
		rr.mu.Lock()
		defer rr.mu.Unlock()
		if status/100 != 2 {
			rr.rejected.Add(1)
			rr.rejects = append(rr.rejects, now)
			return
		}
		rr.arrivals = append(rr.arrivals, arrival{now, c})
		if rr.delivered.Add(1) == want {
			close(rr.done)
		}
	}))
	return rr
}

func (rr *recoveryReceiver) wait(b *testing.B, within time.Duration) {
	select {
	case <-rr.done:
	case <-time.After(within):
		b.Fatalf("only %d deliveries arrived in %v", rr.delivered.Load(), within)
	}
}

func recoveryEndpoint(d *dispatcher.Dispatcher, url string) {
	ep := benchEndpoint("bench", "ep0", url)
	ep.Policy = recoveryPolicy()
	d.Upsert(ep)
}

func benchHerd(b *testing.B, opts []dispatcher.Option) {
	const events = 10_000
	var up atomic.Bool
	rr := newRecoveryReceiver(events, func() int {
		if !up.Load() {
			return http.StatusInternalServerError
		}
		// A receiver just back does a little work per request.
		time.Sleep(2 * time.Millisecond)
		return http.StatusOK
	})
	defer rr.Close()
	env := newBenchEnv(b)
	createBenchConsumers(b, env, "bench", 1)
	publishAll(b, env, "bench", events, 0)
	d := benchEndpoints(b, env, "bench", 0, rr.URL, append([]dispatcher.Option{dispatcher.WithProbeAfter(3)}, opts...)...)
	recoveryEndpoint(d, rr.URL+"/ep0")
	// Down for a while: until it has failed enough to probe.
	deadline := time.Now().Add(30 * time.Second)
	for rr.rejected.Load() < 10 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	up.Store(true)
	rr.wait(b, 3*time.Minute)

	rr.mu.Lock()
	first := rr.arrivals[0].at
	var firstSecond, peak10, peak100ms int64
	for i, a := range rr.arrivals {
		since := a.at.Sub(first)
		if since < time.Second {
			firstSecond++
		}
		if since < 100*time.Millisecond {
			peak100ms = max(peak100ms, a.inFlight)
		}
		if i < 10 {
			peak10 = max(peak10, a.inFlight)
		}
	}
	drain := rr.arrivals[len(rr.arrivals)-1].at.Sub(first)
	rr.mu.Unlock()
	b.ReportMetric(float64(firstSecond), "requests-first-s")
	b.ReportMetric(float64(peak10), "peak-in-flight-first-10-requests")
	b.ReportMetric(float64(peak100ms), "peak-in-flight-first-100ms")
	b.ReportMetric(drain.Seconds(), "drain-s")
	b.ReportMetric(float64(events)/drain.Seconds(), "deliveries/s")
}

func bench429(b *testing.B, opts []dispatcher.Option) {
	const events = 1_000
	lim := rate.NewLimiter(50, 5)
	rr := newRecoveryReceiver(events, func() int {
		if !lim.Allow() {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	defer rr.Close()
	env := newBenchEnv(b)
	createBenchConsumers(b, env, "bench", 1)
	publishAll(b, env, "bench", events, 0)
	start := time.Now()
	d := benchEndpoints(b, env, "bench", 0, rr.URL, opts...)
	recoveryEndpoint(d, rr.URL+"/ep0")
	rr.wait(b, 3*time.Minute)
	took := time.Since(start)

	rr.mu.Lock()
	var early, late int
	for _, t := range rr.rejects {
		if t.Sub(start) < 2*time.Second {
			early++
		} else {
			late++
		}
	}
	rr.mu.Unlock()
	b.ReportMetric(float64(early), "429s-first-2s")
	b.ReportMetric(float64(late), "429s-after")
	b.ReportMetric(float64(late)/max(took.Seconds()-2, 1), "429s/s-after")
	b.ReportMetric(took.Seconds(), "drain-s")
}
