package dispatcher

import (
	"testing"
	"time"
)

func TestTurnsWhileProbing(t *testing.T) {
	tr := &tracker{d: &Dispatcher{opts: options{probeAfter: 2}}, kick: make(chan struct{}, 1), changed: make(chan struct{})}
	now := time.Now()
	retry := now.Add(time.Second)
	floor := 10 * time.Second
	if ok, probe, _, _ := tr.takeTurn(now, floor); !ok || probe {
		t.Fatal("a healthy endpoint must give every attempt a turn, none of them the probe")
	}

	tr.failure(Failure{Time: now}, &retry, true)
	tr.failure(Failure{Time: now}, &retry, true)
	ok, _, next, _ := tr.takeTurn(now, floor)
	if ok || !next.Equal(retry) {
		t.Fatalf("probing before the retry is due: got turn %v, next %v; want no turn until %v", ok, next, retry)
	}

	if ok, probe, _, _ := tr.takeTurn(retry, floor); !ok || !probe {
		t.Fatal("the first attempt when the retry is due must be the probe")
	}
	ok, _, _, probeRunning := tr.takeTurn(retry, floor)
	if ok {
		t.Fatal("only one probe at a time")
	}

	after := retry.Add(time.Millisecond)
	tr.failure(Failure{Time: after}, nil, true)
	tr.endTurn(after)
	select {
	case <-probeRunning:
	default:
		t.Fatal("the end of a probe must wake the events waiting for a turn")
	}

	ok, _, next, recovered := tr.takeTurn(after, floor)
	if ok || !next.Equal(after.Add(floor)) {
		t.Fatal("with no retry scheduled, the next probe waits for the floor after the last failure")
	}
	tr.success(after)
	select {
	case <-recovered:
	default:
		t.Fatal("a recovery must wake the events waiting for a turn")
	}
	if ok, _, _, _ := tr.takeTurn(after, floor); !ok {
		t.Fatal("a recovered endpoint must give every attempt a turn")
	}
}

func TestTerminalAnswersDoNotMakeAnEndpointProbe(t *testing.T) {
	tr := &tracker{d: &Dispatcher{opts: options{probeAfter: 2}}, kick: make(chan struct{}, 1), changed: make(chan struct{})}
	now := time.Now()
	for range 5 {
		tr.failure(Failure{Time: now, StatusCode: 404}, nil, false)
	}
	if tr.probing() {
		t.Fatal("five 404s (terminal, one bad event each) made the endpoint probe")
	}
	if tr.h.ConsecutiveFailures != 5 {
		t.Fatalf("consecutive failures = %d, want 5: terminal failures still show", tr.h.ConsecutiveFailures)
	}
	retry := now.Add(time.Second)
	tr.failure(Failure{Time: now, StatusCode: 503}, &retry, true)
	tr.failure(Failure{Time: now, StatusCode: 503}, &retry, true)
	if !tr.probing() {
		t.Fatal("two retryable failures at probeAfter=2 must make the endpoint probe")
	}
}
