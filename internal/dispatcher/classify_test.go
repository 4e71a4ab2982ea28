package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/herald-dev/herald/internal/egress"
)

func TestClassify(t *testing.T) {
	p := DefaultPolicy()
	for _, tc := range []struct {
		status    int
		err       error
		delivered bool
		retryable bool
		reason    string
	}{
		{200, nil, true, false, ""},
		{204, nil, true, false, ""},
		{302, nil, false, false, ReasonRedirect},
		{400, nil, false, false, ReasonHTTPError},
		{401, nil, false, false, ReasonHTTPError},
		{403, nil, false, false, ReasonHTTPError},
		{404, nil, false, false, ReasonHTTPError},
		{408, nil, false, true, ReasonHTTPError},
		{410, nil, false, false, ReasonHTTPError},
		{422, nil, false, false, ReasonHTTPError},
		{429, nil, false, true, ReasonHTTPError},
		{500, nil, false, true, ReasonHTTPError},
		{503, nil, false, true, ReasonHTTPError},
		{0, fmt.Errorf("wrapped: %w", context.DeadlineExceeded), false, true, ReasonTimeout},
		{0, errors.New("connection refused"), false, true, ReasonConnectionError},
		// Not retried although network errors are: only an administrator
		// can change the answer.
		{0, &net.OpError{Op: "dial", Net: "tcp", Err: &egress.RefusedError{Addr: netip.MustParseAddr("10.0.0.5"), Why: "a private range"}}, false, false, ReasonEgressRefused},
	} {
		v := classify(&p, tc.status, tc.err)
		if v.delivered != tc.delivered || v.retryable != tc.retryable || v.reason != tc.reason {
			t.Errorf("%d %v: got %+v", tc.status, tc.err, v)
		}
	}
	p.NetworkErrors = false
	if classify(&p, 0, errors.New("refused")).retryable {
		t.Error("network errors retried although the policy says not to")
	}
	p.RetryStatus = []string{"404"}
	if !classify(&p, 404, nil).retryable || classify(&p, 500, nil).retryable {
		t.Error("retryOn status codes not honoured")
	}
}

func TestPlanRetry(t *testing.T) {
	now := time.Date(2026, 11, 28, 10, 3, 0, 0, time.UTC)
	p := DefaultPolicy()
	mid := func() float64 { return 0.5 } // no jitter
	hi := func() float64 { return 1 }    // +jitter
	lo := func() float64 { return 0 }    // -jitter
	for i, want := range []time.Duration{10 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, time.Hour, time.Hour} {
		if got := planRetry(&p, i+1, now, now, 0, false, mid); got.dead || got.delay != want {
			t.Errorf("attempt %d: got %+v, want %s", i+1, got, want)
		}
	}
	if got := planRetry(&p, 1, now, now, 0, false, hi); got.delay != 12*time.Second {
		t.Errorf("+20%% jitter: got %s", got.delay)
	}
	if got := planRetry(&p, 1, now, now, 0, false, lo); got.delay != 8*time.Second {
		t.Errorf("-20%% jitter: got %s", got.delay)
	}
	if got := planRetry(&p, 1, now, now, 90*time.Second, true, hi); got.delay != 90*time.Second {
		t.Errorf("Retry-After not honoured: %s", got.delay)
	}
	if got := planRetry(&p, 1, now, now, 5*time.Hour, true, hi); got.delay != time.Hour {
		t.Errorf("Retry-After not capped: %s", got.delay)
	}
	if got := planRetry(&p, 1, now, now, 0, true, hi); got.delay != time.Second {
		t.Errorf("Retry-After 0 must not make a tight loop: %s", got.delay)
	}
	if got := planRetry(&p, 3, now, now.Add(-24*time.Hour+time.Minute), 0, false, mid); !got.dead || got.why != "retry window exhausted" {
		t.Errorf("window: got %+v", got)
	}
	p.MaxAttempts = 3
	if got := planRetry(&p, 3, now, now, 0, false, mid); !got.dead || got.why != "max attempts reached" {
		t.Errorf("max attempts: got %+v", got)
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 11, 28, 10, 3, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{"soon", 0, false},
	} {
		got, ok := retryAfter(http.Header{"Retry-After": {tc.v}}, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q: got %s %v", tc.v, got, ok)
		}
	}
}

func TestRetryAfterPastADurationIsCappedNotNegative(t *testing.T) {
	now := time.Now()
	p := DefaultPolicy()
	ra, ok := retryAfter(http.Header{"Retry-After": {"9223372037"}}, now)
	if !ok || ra < 0 {
		t.Fatalf("Retry-After 9223372037 = %s, %v; want a huge positive delay", ra, ok)
	}
	plan := planRetry(&p, 1, now, now.Add(-time.Minute), ra, ok, func() float64 { return 0.5 })
	if plan.dead || plan.delay != p.RetryAfterMax {
		t.Fatalf("got %+v, want a retry after the policy's cap %s", plan, p.RetryAfterMax)
	}
}

func TestFullJitterNeverMakesAnImmediateRetry(t *testing.T) {
	now := time.Now()
	p := DefaultPolicy()
	p.Jitter = 1
	plan := planRetry(&p, 1, now, now, 0, false, func() float64 { return 0 })
	if plan.dead || plan.delay < p.Schedule[0]/10 {
		t.Fatalf("100%% jitter at its low end gave %+v; want at least a tenth of %s", plan, p.Schedule[0])
	}
}
