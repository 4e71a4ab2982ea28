package dispatcher

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Adaptive limits: an endpoint is not sent what it was configured to take
// (maxInFlight, rateLimit) but what it has lately shown it can take, below
// those. After an outage, with thousands of events waiting, a recovering
// receiver gets one request, then two, then four (slow start), not
// maxInFlight at once; once it answers 429 or 503, times out or slows
// down, it gets less (additive increase, multiplicative decrease, as TCP
// does). A concurrency window alone cannot hold back a receiver that
// answers 429 in a millisecond (one request in flight is already 1,000
// requests a second), so an explicit overload answer also sets a rate,
// which grows again while it is what holds the endpoint back and lapses
// once it has not been for a while.
const (
	// initialWindow is where a new endpoint starts: low, but two, so one
	// slow request does not hold up the next key.
	initialWindow = 2
	// A latency rise counts as congestion when the short moving average
	// is over twice the long one and this much above it: a receiver that
	// is merely noisy, or whose events differ in cost, is not throttled.
	latencySlack = 25 * time.Millisecond
	// minCut is the least time between two decreases: the answers of
	// requests sent before a cut say nothing about the cut window.
	minCut = 100 * time.Millisecond
	// rateLapse is how long an adaptive rate stays once no overload was
	// signalled and it held nothing back.
	rateLapse = 30 * time.Second
	minRate   = 1.0
	// fullFor is how recently the window must have been all in use for
	// a success to grow it, at least: four moving-average latencies.
	fullFor = 50 * time.Millisecond
	// sendRing is how many send times measure the request rate that an
	// overload answer halves.
	sendRing = 64
)

// signal is what one answer says about the receiver's capacity.
type signal int

const (
	neutral     signal = iota // a terminal answer, a redirect: nothing about capacity
	success                   // 2xx
	overload                  // 429 or 503: slow down, by rate too
	serverError               // another 5xx
	unreachable               // a timeout or a connection error
)

func signalOf(status int, err error) signal {
	switch {
	case err != nil:
		return unreachable
	case status == 429 || status == 503:
		return overload
	case status >= 200 && status < 300:
		return success
	case status >= 500:
		return serverError
	}
	return neutral
}

// adaptive is one endpoint's concurrency window and rate. The window is
// enforced on a channel semaphore of maxInFlight tokens by keeping the
// tokens above the window (reserved): a request takes and returns a
// token as before, and a shrink takes tokens back as requests end.
type adaptive struct {
	slots chan struct{}
	max   int
	rate  *rate.Limiter
	fixed bool // limits off: maxInFlight from the start, no adaptive rate

	mu         sync.Mutex
	window     float64 // 1..max
	ssthresh   float64 // slow start below it, additive increase above
	reserved   int     // tokens held so that at most int(window) requests run
	inFlight   int
	rps        float64       // the adaptive rate; 0 while none is in force
	avg        time.Duration // over about the last 8 answers
	longAvg    time.Duration // over about the last 256
	fullAt     time.Time     // when the window was last all in use
	lastCut    time.Time
	lastSignal time.Time // the last overload answer
	lastBound  time.Time // the last time the adaptive rate made a request wait
	sends      [sendRing]time.Time
	nSends     int
}

func newAdaptive(maxInFlight int, fixed bool) *adaptive {
	a := &adaptive{
		slots:    make(chan struct{}, maxInFlight),
		max:      maxInFlight,
		rate:     rate.NewLimiter(rate.Inf, 1),
		fixed:    fixed,
		ssthresh: float64(maxInFlight),
	}
	a.window = float64(min(initialWindow, maxInFlight))
	if fixed {
		a.window = float64(maxInFlight)
	}
	a.reserved = maxInFlight - int(a.window)
	for range a.reserved {
		a.slots <- struct{}{}
	}
	return a
}

// acquired counts a request that took a token, once it has one.
func (a *adaptive) acquired() {
	a.mu.Lock()
	a.inFlight++
	if a.inFlight >= int(a.window) {
		a.fullAt = time.Now()
	}
	a.mu.Unlock()
}

// release returns a request's token, or keeps it while the window is
// smaller than the tokens out.
func (a *adaptive) release() {
	a.mu.Lock()
	a.inFlight--
	keep := a.reserved < a.max-int(a.window)
	if keep {
		a.reserved++
	}
	a.mu.Unlock()
	if !keep {
		<-a.slots
	}
}

// setWindowLocked sets the window and hands back the tokens it no longer needs
// reserved.
func (a *adaptive) setWindowLocked(w float64) {
	a.window = min(max(w, 1), float64(a.max))
	for a.reserved > a.max-int(a.window) {
		a.reserved--
		<-a.slots
	}
}

// sent records a request's start, for the rate an overload answer halves.
func (a *adaptive) sent(now time.Time) {
	a.mu.Lock()
	a.sends[a.nSends%sendRing] = now
	a.nSends++
	a.mu.Unlock()
}

// observedRateLocked is the request rate over the last sendRing sends, 0
// before there are two.
func (a *adaptive) observedRateLocked(now time.Time) float64 {
	n := min(a.nSends, sendRing)
	if n < 2 {
		return 0 // not known yet
	}
	oldest := a.sends[(a.nSends-n)%sendRing]
	span := now.Sub(oldest).Seconds()
	if span <= 0 {
		return float64(n) * 1000
	}
	return float64(n-1) / span
}

// observe adjusts the limits to one answer. It is called before the
// request's token is released, so inFlight includes it.
func (a *adaptive) observe(s signal, latency time.Duration, now time.Time) (window int, rps float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.fixed {
		a.observeLocked(s, latency, now)
	}
	return int(a.window), a.rps
}

func (a *adaptive) observeLocked(s signal, latency time.Duration, now time.Time) {
	if s == success || s == overload {
		a.observeLatencyLocked(latency)
	}
	canCut := now.Sub(a.lastCut) >= max(minCut, 2*a.avg)
	switch s {
	case success:
		if a.congestedLocked() {
			if canCut {
				a.lastCut = now
				a.ssthresh = max(a.window*0.75, 1)
				a.setWindowLocked(a.ssthresh)
			}
			return
		}
		// Grow only a window that is used: one sized for a quiet hour
		// would let the next burst through unchecked.
		if now.Sub(a.fullAt) <= max(4*a.avg, fullFor) {
			if a.window < a.ssthresh {
				a.setWindowLocked(a.window + 1)
			} else {
				a.setWindowLocked(a.window + 1/a.window)
			}
		}
		a.adjustRateLocked(now)
	case overload:
		a.lastSignal = now
		if !canCut {
			return
		}
		a.lastCut = now
		a.ssthresh = max(a.window/2, 1)
		a.setWindowLocked(a.ssthresh)
		r := a.observedRateLocked(now)
		if a.rps > 0 {
			r = min(r, a.rps)
		}
		if r > 0 {
			a.setRateLocked(max(r/2, minRate))
		}
	case serverError:
		// A failing receiver is not one that said how much it takes: the
		// window halves, but slow start after its recovery goes on to
		// half of maxInFlight at least.
		if canCut {
			a.lastCut = now
			a.ssthresh = max(a.window/2, float64(a.max)/2)
			a.setWindowLocked(a.window / 2)
		}
	case unreachable:
		// A receiver that times out or cannot be reached starts again
		// from one request, as TCP does after a timeout; the health
		// tracker probes meanwhile.
		if canCut {
			a.lastCut = now
			a.ssthresh = max(a.window/2, float64(a.max)/2)
		}
		a.setWindowLocked(1)
	}
}

// adjustRateLocked grows an adaptive rate by a quarter a second (one
// request a second at least)
// while it is what holds requests back, and drops it once it has not
// been for rateLapse and no overload came meanwhile.
func (a *adaptive) adjustRateLocked(now time.Time) {
	if a.rps == 0 {
		return
	}
	if now.Sub(a.lastSignal) > rateLapse && now.Sub(a.lastBound) > rateLapse {
		a.setRateLocked(0)
		return
	}
	if now.Sub(a.lastBound) < time.Second {
		// At r successes a second this adds max(1, r/4) a second.
		a.setRateLocked(a.rps + max(1/a.rps, 0.25))
	}
}

func (a *adaptive) setRateLocked(r float64) {
	a.rps = r
	if r == 0 {
		a.rate.SetLimit(rate.Inf)
		return
	}
	a.rate.SetLimit(rate.Limit(r))
}

// noteWait records whether the adaptive rate is about to make a request
// wait: only then does it grow, and only while it does not is it let lapse.
func (a *adaptive) noteWait(now time.Time) {
	a.mu.Lock()
	if a.rps > 0 && a.rate.TokensAt(now) < 1 {
		a.lastBound = now
	}
	a.mu.Unlock()
}

// observeLatencyLocked keeps a short and a long moving average: a rise
// is the short one well above the long one, and a receiver that got
// slower for good stops counting as congested once the long one follows.
func (a *adaptive) observeLatencyLocked(d time.Duration) {
	if a.avg == 0 {
		a.avg, a.longAvg = d, d
		return
	}
	a.avg += (d - a.avg) / 8
	a.longAvg += (d - a.longAvg) / 256
}

func (a *adaptive) congestedLocked() bool {
	return a.avg > 2*a.longAvg && a.avg-a.longAvg > latencySlack
}

// limits is the current window and adaptive rate (0: none).
func (a *adaptive) limits() (window int, rps float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(a.window), math.Round(a.rps*10) / 10
}
