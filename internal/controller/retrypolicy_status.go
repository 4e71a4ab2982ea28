package controller

import (
	"fmt"
	"strings"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// setPolicyStatus is the pure status summary of a RetryPolicy, given how
// long the events stream keeps an event (0: unknown, nothing compared).
// Ready is True when the policy can work; False Invalid (a spec that
// predates the CRD's rules) or WindowExceedsRetention. Stalled is present
// (True, WindowExceedsRetention) only while the window does not end
// RetentionMargin before the events expire.
func setPolicyStatus(p *v1.RetryPolicy, endpoints int32, retention time.Duration) {
	p.Status.Endpoints = endpoints
	p.Status.ObservedGeneration = p.Generation
	window := dispatcher.PolicyFromSpec(&p.Spec).Window
	problem, exceeds := windowProblem("spec.window", window, retention)
	if exceeds {
		apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: v1.StalledCondition, Status: metav1.ConditionTrue,
			Reason: v1.ReasonWindowExceedsRetention, Message: problem, ObservedGeneration: p.Generation})
	} else {
		apimeta.RemoveStatusCondition(&p.Status.Conditions, v1.StalledCondition)
	}
	cond := metav1.Condition{Type: v1.ReadyCondition, Status: metav1.ConditionTrue, Reason: v1.ReasonReady,
		Message: "valid", ObservedGeneration: p.Generation}
	switch msg := validatePolicy(&p.Spec); {
	case msg != "":
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, v1.ReasonInvalid, msg
	case exceeds:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, v1.ReasonWindowExceedsRetention, problem
	}
	apimeta.SetStatusCondition(&p.Status.Conditions, cond)
}

// validatePolicy repeats, for objects that predate the CRD's CEL rules,
// the checks a dispatcher depends on; "" means valid.
func validatePolicy(s *v1.RetryPolicySpec) string {
	for i, d := range s.Schedule {
		if d.Duration <= 0 {
			return fmt.Sprintf("schedule[%d] must be greater than zero", i)
		}
	}
	if s.Window != nil && len(s.Schedule) > 0 && s.Window.Duration < s.Schedule[0].Duration {
		return fmt.Sprintf("window %s is shorter than the first retry delay %s", s.Window.Duration, s.Schedule[0].Duration)
	}
	return ""
}

// windowProblem says, with both durations, why a retry window does not fit
// the events' retention: retries must end RetentionMargin before the
// stream drops the event. what names the window ("spec.window", "the
// retry window of RetryPolicy \"slow\""). A zero window or retention is
// unknown and fits.
func windowProblem(what string, window, retention time.Duration) (string, bool) {
	if window <= 0 || retention <= 0 || window <= retention-v1.RetentionMargin {
		return "", false
	}
	msg := fmt.Sprintf("%s %s must end %s (the retention margin) before the events expire, but events are kept only %s (the manager's --events-max-age): retries would outlive the events they retry; ",
		what, fmtDuration(window), fmtDuration(v1.RetentionMargin), fmtDuration(retention))
	if limit := retention - v1.RetentionMargin; limit > 0 {
		msg += fmt.Sprintf("shorten the window to at most %s, or ", fmtDuration(limit))
	}
	return msg + fmt.Sprintf("raise --events-max-age to at least %s", fmtDuration(window+v1.RetentionMargin)), true
}

// fmtDuration writes a configured duration as a person writes it in a
// spec: 2h, 1h30m, 144h, 4s (time.Duration's form without zero units).
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
