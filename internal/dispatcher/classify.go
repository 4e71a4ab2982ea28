package dispatcher

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/herald-dev/herald/internal/egress"
)

// Outcomes of one attempt, as the delivery log and metrics name them.
const (
	OutcomeDelivered  = "delivered"
	OutcomeRetrying   = "retrying"
	OutcomeDead       = "dead"
	OutcomeSuperseded = "superseded"
)

// Failure reasons.
const (
	ReasonTimeout         = "Timeout"
	ReasonConnectionError = "ConnectionError"
	ReasonHTTPError       = "HTTPError"
	ReasonRedirect        = "Redirect"
	// ReasonVersionUnreadable: the endpoint's delivered version of the
	// event's key could not be read, so the event was not sent yet.
	ReasonVersionUnreadable = "VersionUnreadable"
	// ReasonEgressRefused: the egress guard refused the address dialled
	// (or the proxy's); no request was sent. Terminal: it cannot succeed
	// until an administrator opens the range.
	ReasonEgressRefused = "EgressRefused"
)

// verdict is what one response (or its absence) means.
type verdict struct {
	delivered bool
	retryable bool
	reason    string // empty when delivered
	why       string // why a terminal verdict is dead, when not "terminal response"
}

// classify decides what a response means under a policy: 2xx delivered;
// timeouts and connection errors retry when the policy says so; 3xx is a
// failure that is never followed; other codes retry only when the policy
// lists them (by default 408, 429 and 5xx), so 400, 401, 403, 404, 410 and
// 422 are terminal. An address the egress guard refused is terminal.
func classify(p *Policy, status int, err error) verdict {
	switch {
	case errors.Is(err, egress.ErrRefused):
		return verdict{reason: ReasonEgressRefused, why: "egress refused: it cannot succeed until an administrator allows the address (the error names it and the flag)"}
	case err != nil && isTimeout(err):
		return verdict{retryable: p.NetworkErrors, reason: ReasonTimeout}
	case err != nil:
		return verdict{retryable: p.NetworkErrors, reason: ReasonConnectionError}
	case status >= 200 && status < 300:
		return verdict{delivered: true}
	case status >= 300 && status < 400:
		return verdict{retryable: p.retryableStatus(status), reason: ReasonRedirect}
	default:
		return verdict{retryable: p.retryableStatus(status), reason: ReasonHTTPError}
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errorMessage is the error text for logs and status, without the URL
// (url.Error would repeat it, query string and all).
func errorMessage(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		// Past what a Duration holds the answer means "much later":
		// the policy's cap applies, not an overflow to a negative delay.
		if s > int64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64), true
		}
		return max(time.Duration(s)*time.Second, 0), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// retryPlan is when, if ever, a failed event is tried again.
type retryPlan struct {
	dead   bool
	reason string // why it is dead: DeadMaxAttempts or DeadWindow
	why    string
	delay  time.Duration
}

// planRetry applies the policy after the attempt-th attempt failed
// retryably. The window runs from the event's time; a retry that would
// fall outside it is not scheduled. A receiver's Retry-After replaces the
// schedule's delay (capped, and never below the first delay's floor of
// one tenth, so a "Retry-After: 0" cannot make a tight loop); otherwise
// the delay is jittered by up to ±Jitter, and never below a tenth of the
// schedule's delay, so a jitter of 100% cannot make an immediate retry.
func planRetry(p *Policy, attempt int, now, eventTime time.Time, ra time.Duration, hasRA bool, rnd func() float64) retryPlan {
	if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
		return retryPlan{dead: true, reason: DeadMaxAttempts, why: "max attempts reached"}
	}
	i := min(max(attempt-1, 0), len(p.Schedule)-1)
	delay := p.Schedule[i]
	if hasRA && p.HonorRetryAfter {
		delay = max(min(ra, p.RetryAfterMax), p.Schedule[0]/10)
	} else if p.Jitter > 0 {
		delay = max(time.Duration(float64(delay)*(1+p.Jitter*(2*rnd()-1))), delay/10)
	}
	if now.Add(delay).After(eventTime.Add(p.Window)) {
		return retryPlan{dead: true, reason: DeadWindow, why: "retry window exhausted"}
	}
	return retryPlan{delay: delay}
}

func jitterRand() float64 { return rand.Float64() }
