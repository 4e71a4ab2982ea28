package dispatcher

import (
	"testing"
	"time"
)

// take takes up to n request slots the way acquireSlot does, without
// waiting, and says how many it got.
func take(a *adaptive, n int) int {
	got := 0
	for range n {
		if !tryAcquire(a.slots) {
			break
		}
		a.acquired()
		got++
	}
	return got
}

// round sends as many requests as the window admits, all answered with s.
func round(a *adaptive, s signal, now time.Time) int {
	n := take(a, a.max)
	for range n {
		a.sent(now)
	}
	for range n {
		a.observe(s, time.Millisecond, now)
		a.release()
	}
	return n
}

func TestAdaptiveSlowStartDoublesAWindowInUseUpToMaxInFlight(t *testing.T) {
	a := newAdaptive(16, false)
	now := time.Now()
	var got []int
	for range 5 {
		got = append(got, round(a, success, now))
	}
	want := []int{2, 4, 8, 16, 16}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("requests admitted per round = %v, want %v", got, want)
		}
	}
}

func TestAdaptiveDoesNotGrowAWindowThatIsNotUsed(t *testing.T) {
	a := newAdaptive(16, false)
	now := time.Now()
	for range 100 {
		if take(a, 1) != 1 {
			t.Fatal("no slot for one request at a time")
		}
		a.observe(success, time.Millisecond, now)
		a.release()
	}
	if w, _ := a.limits(); w != initialWindow {
		t.Fatalf("window after 100 requests one at a time = %d, want %d", w, initialWindow)
	}
}

func TestAdaptiveOverloadHalvesTheWindowAndTheRateOncePerCut(t *testing.T) {
	a := newAdaptive(16, false)
	now := time.Now()
	for range 4 {
		round(a, success, now)
	}
	// 64 sends a millisecond apart: 1,000 requests a second.
	for i := range sendRing {
		a.sent(now.Add(time.Duration(i-sendRing+1) * time.Millisecond))
	}
	n := take(a, 16)
	if n != 16 {
		t.Fatalf("admitted %d, want 16", n)
	}
	for range n {
		a.observe(overload, time.Millisecond, now)
		a.release()
	}
	w, rps := a.limits()
	if w != 8 {
		t.Errorf("window after a burst of 429s = %d, want 8 (one cut)", w)
	}
	if rps < 450 || rps > 550 {
		t.Errorf("adaptive rate = %v, want about 500 (half the observed 1,000/s)", rps)
	}
	if got := take(a, 16); got != 8 {
		t.Errorf("slots admitted after the cut = %d, want 8", got)
	}
	for range 8 {
		a.release()
	}
	later := now.Add(minCut)
	a.observe(overload, time.Millisecond, later)
	if w, rps2 := a.limits(); w != 4 || rps2 > rps/2+1 {
		t.Errorf("after a second cut: window %d, rate %v; want 4 and about %v", w, rps2, rps/2)
	}
}

func TestAdaptiveRateGrowsWhileItHoldsRequestsBackAndLapsesWhenItDoesNot(t *testing.T) {
	a := newAdaptive(16, false)
	now := time.Now()
	a.mu.Lock()
	a.setRateLocked(50)
	a.lastSignal = now
	a.mu.Unlock()
	for range 10 {
		take(a, 1)
		a.mu.Lock()
		a.lastBound = now
		a.mu.Unlock()
		a.observe(success, time.Millisecond, now)
		a.release()
	}
	if _, rps := a.limits(); rps <= 50 || rps > 53 {
		t.Fatalf("rate after 10 successes held back by it = %v, want a little above 50", rps)
	}
	quiet := now.Add(rateLapse + time.Second)
	take(a, 1)
	a.observe(success, time.Millisecond, quiet)
	a.release()
	if _, rps := a.limits(); rps != 0 {
		t.Fatalf("rate after %v without a 429 or a wait = %v, want none", rateLapse, rps)
	}
}

func TestAdaptiveUnreachableReceiverStartsAgainFromOneRequest(t *testing.T) {
	a := newAdaptive(16, false)
	now := time.Now()
	for range 4 {
		round(a, success, now)
	}
	round(a, unreachable, now)
	if w, _ := a.limits(); w != 1 {
		t.Fatalf("window after timeouts = %d, want 1", w)
	}
	if got := round(a, success, now); got != 1 {
		t.Fatalf("admitted %d after timeouts, want 1", got)
	}
	if got := round(a, success, now); got != 2 {
		t.Fatalf("admitted %d on the next round, want 2 (slow start again)", got)
	}
}

func TestSignalOf(t *testing.T) {
	for _, tc := range []struct {
		status int
		err    error
		want   signal
	}{
		{200, nil, success}, {204, nil, success}, {429, nil, overload}, {503, nil, overload},
		{500, nil, serverError}, {404, nil, neutral}, {301, nil, neutral}, {0, errTest, unreachable},
	} {
		if got := signalOf(tc.status, tc.err); got != tc.want {
			t.Errorf("signalOf(%d, %v) = %v, want %v", tc.status, tc.err, got, tc.want)
		}
	}
}

var errTest = errString("connection refused")

type errString string

func (e errString) Error() string { return string(e) }
