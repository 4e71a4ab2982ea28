package controller

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
)

func policyCondition(p *v1.RetryPolicy, typ string) (string, string) {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return string(c.Status) + "/" + c.Reason, c.Message
		}
	}
	return "absent", ""
}

func TestMaxRetryWindowFitsTheDefaultRetention(t *testing.T) {
	if got := streams.DefaultLimits().EventsMaxAge - v1.RetentionMargin; got != v1.MaxRetryWindow {
		t.Errorf("default events retention less RetentionMargin = %s, but v1alpha1.MaxRetryWindow (and the CRD's CEL rule) = %s", got, v1.MaxRetryWindow)
	}
}

func TestSetPolicyStatus(t *testing.T) {
	week := 7 * 24 * time.Hour
	cases := []struct {
		name      string
		window    *metav1.Duration
		retention time.Duration
		ready     string
		stalled   string
		mentions  []string
	}{
		{"the default window fits the default retention", nil, week, "True/Ready", "absent", nil},
		{"the longest window the API accepts fits", &metav1.Duration{Duration: v1.MaxRetryWindow}, week, "True/Ready", "absent", nil},
		{"a 2h window with a 1h retention is stalled", &metav1.Duration{Duration: 2 * time.Hour}, time.Hour,
			"False/WindowExceedsRetention", "True/WindowExceedsRetention", []string{"2h", "1h", "--events-max-age"}},
		{"a window inside the retention but not its margin is stalled", &metav1.Duration{Duration: 30 * time.Hour}, 48 * time.Hour,
			"False/WindowExceedsRetention", "True/WindowExceedsRetention", []string{"30h", "48h", "24h"}},
		{"the default 24h window with a 1d retention is stalled", nil, 24 * time.Hour,
			"False/WindowExceedsRetention", "True/WindowExceedsRetention", []string{"24h"}},
		{"retention unknown: nothing to compare", &metav1.Duration{Duration: 2 * time.Hour}, 0, "True/Ready", "absent", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &v1.RetryPolicy{ObjectMeta: metav1.ObjectMeta{Name: "slow", Generation: 2},
				Spec: v1.RetryPolicySpec{Schedule: []metav1.Duration{{Duration: time.Second}}, Window: c.window}}
			setPolicyStatus(p, 1, c.retention)
			ready, _ := policyCondition(p, v1.ReadyCondition)
			stalled, msg := policyCondition(p, v1.StalledCondition)
			if ready != c.ready || stalled != c.stalled {
				t.Errorf("Ready = %s, Stalled = %s; want %s, %s", ready, stalled, c.ready, c.stalled)
			}
			for _, m := range c.mentions {
				if !strings.Contains(msg, m) {
					t.Errorf("Stalled message %q does not mention %q", msg, m)
				}
			}
			if p.Status.ObservedGeneration != 2 || p.Status.Endpoints != 1 {
				t.Errorf("observedGeneration %d, endpoints %d", p.Status.ObservedGeneration, p.Status.Endpoints)
			}
		})
	}

	t.Run("Stalled goes away once the window is fixed", func(t *testing.T) {
		p := &v1.RetryPolicy{Spec: v1.RetryPolicySpec{Window: &metav1.Duration{Duration: 2 * time.Hour}}}
		setPolicyStatus(p, 0, time.Hour)
		p.Spec.Window.Duration = 30 * time.Minute
		setPolicyStatus(p, 0, 25*time.Hour)
		if got, _ := policyCondition(p, v1.StalledCondition); got != "absent" {
			t.Errorf("Stalled = %s, want absent", got)
		}
	})
}

func TestWindowProblem(t *testing.T) {
	if msg, bad := windowProblem("spec.window", 2*time.Hour, time.Hour); !bad || !strings.Contains(msg, "raise --events-max-age") {
		t.Errorf("a retention shorter than the margin must say to raise it: %q", msg)
	}
	if msg, bad := windowProblem("spec.window", 30*time.Hour, 48*time.Hour); !bad || !strings.Contains(msg, "at most 24h") {
		t.Errorf("a window over the limit must say the limit: %q", msg)
	}
	if _, bad := windowProblem("spec.window", 24*time.Hour, 48*time.Hour); bad {
		t.Error("a window equal to retention less the margin fits")
	}
}
