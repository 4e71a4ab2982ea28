package dispatcher_test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/herald-dev/herald/internal/dispatcher"
)

// concurrencyReceiver answers fail for its first failFor requests and
// then 200 after hold, recording how many requests were in flight as each
// successful one arrived.
type concurrencyReceiver struct {
	*receiver
	inFlight atomic.Int64
	mu       sync.Mutex
	seen     []int64 // at each successful request's arrival, in order
}

func newConcurrencyReceiver(failFor int, fail int, hold time.Duration) *concurrencyReceiver {
	cr := &concurrencyReceiver{}
	cr.receiver = newReceiver(func(n int, _ request) (int, http.Header, time.Duration) {
		if n <= failFor {
			return fail, nil, 0
		}
		c := cr.inFlight.Add(1)
		cr.mu.Lock()
		cr.seen = append(cr.seen, c)
		cr.mu.Unlock()
		// The answer is held here and the count comes down before it is
		// written, so the count never runs ahead of what the dispatcher
		// really has in flight (a timer racing the response did, by one,
		// on a loaded machine).
		<-time.After(hold)
		cr.inFlight.Add(-1)
		return 200, nil, 0
	})
	return cr
}

func (cr *concurrencyReceiver) arrivals() []int64 {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return append([]int64(nil), cr.seen...)
}

var _ = Describe("Adaptive limits", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("ramps a recovering endpoint up from one request instead of sending maxInFlight at once, and reports the limit", func() {
		cr := newConcurrencyReceiver(3, 500, 30*time.Millisecond)
		startDispatcher(endpoint(ns, "crm", cr.URL, func(e *dispatcher.Endpoint) { e.PerKey = false }))
		for i := range 200 {
			publish(ns, "a.b", fmt.Sprintf("evt_%d", i), "", 0, map[string]any{})
		}
		Eventually(func() int { return len(cr.arrivals()) }, 30*time.Second).Should(BeNumerically(">=", 200))
		seen := cr.arrivals()
		By(fmt.Sprintf("in flight at the first 12 successful arrivals: %v", seen[:12]))
		// Slow start: one, then two, then four at a time, not sixteen.
		Expect(seen[0]).To(BeNumerically("==", 1))
		Expect(seen[:3]).To(HaveEach(BeNumerically("<=", 2)))
		Expect(seen[:7]).To(HaveEach(BeNumerically("<=", 4)))
		// And it grows to what the endpoint allows.
		Expect(seen).To(ContainElement(BeNumerically("==", 16)))
		Expect(seen).To(HaveEach(BeNumerically("<=", 16)))
		Eventually(func(g Gomega) int64 { return healthOf(g, ns, "crm").ConcurrencyLimit }).Should(BeNumerically("==", 16))
	})

	It("sets an adaptive rate when an endpoint answers 429, and still delivers everything", func() {
		var over atomic.Int64
		rc := newReceiver(func(n int, _ request) (int, http.Header, time.Duration) {
			if n <= 20 {
				over.Add(1)
				return http.StatusTooManyRequests, nil, 0
			}
			return 200, nil, 0
		})
		startDispatcher(endpoint(ns, "crm", rc.URL, func(e *dispatcher.Endpoint) { e.PerKey = false }))
		for i := range 20 {
			publish(ns, "a.b", fmt.Sprintf("evt_%d", i), "", 0, map[string]any{})
		}
		Eventually(func(g Gomega) float64 { return healthOf(g, ns, "crm").AdaptiveRate }).Should(BeNumerically(">", 0))
		Eventually(rc.count, 30*time.Second).Should(BeNumerically(">=", 40))
		Expect(over.Load()).To(BeNumerically("==", 20))
	})
})
