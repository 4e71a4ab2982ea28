package controller

import (
	"errors"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// Table tests of the pure steps: no API server, no NATS.

var t0 = time.Date(2026, 3, 1, 10, 3, 0, 0, time.UTC)

func at(d time.Duration) *time.Time { t := t0.Add(d); return &t }

func assertConditions(t *testing.T, ep *v1.WebhookEndpoint, want map[string]string) {
	t.Helper()
	for typ, w := range want {
		if got := condition(ep, typ); got != w {
			t.Errorf("condition %s = %s, want %s (all: %+v)", typ, got, w, ep.Status.Conditions)
		}
	}
}

func TestSummarise(t *testing.T) {
	ready := func(o *observation) *observation {
		o.Now, o.Consumer, o.DispatcherReady, o.HealthKnown = t0, "ns_crm", true, true
		if o.Backlog == nil {
			o.Backlog = &backlogObservation{}
		}
		return o
	}
	cases := []struct {
		name string
		spec func(*v1.WebhookEndpoint)
		obs  *observation
		want map[string]string
	}{
		{"new endpoint", nil, ready(&observation{}),
			map[string]string{"Ready": "True/Ready", "Healthy": "True/NoDeliveriesYet", "Reconciling": "absent", "Stalled": "absent"}},
		{"delivering", nil, ready(&observation{Health: &dispatcher.Health{Delivered: 3, LastSuccess: at(0)}}),
			map[string]string{"Healthy": "True/Delivering"}},
		{"failing beats lagging", nil, ready(&observation{
			Health:  &dispatcher.Health{ConsecutiveFailures: 2, LastFailure: &dispatcher.Failure{StatusCode: 500, Reason: "HTTPError"}},
			Backlog: &backlogObservation{Backlog: 4, OldestPending: at(-time.Hour)}}),
			map[string]string{"Healthy": "False/Failing", "Ready": "True/Ready"}},
		{"lagging past warnAfter", nil, ready(&observation{
			Health:  &dispatcher.Health{Delivered: 1},
			Backlog: &backlogObservation{Backlog: 4, OldestPending: at(-61 * time.Second)}}),
			map[string]string{"Healthy": "False/Lagging"}},
		{"not lagging inside warnAfter", nil, ready(&observation{
			Health:  &dispatcher.Health{Delivered: 1},
			Backlog: &backlogObservation{Backlog: 4, OldestPending: at(-59 * time.Second)}}),
			map[string]string{"Healthy": "True/Delivering"}},
		{"suspended", func(e *v1.WebhookEndpoint) { e.Spec.Suspend = true }, ready(&observation{}),
			map[string]string{"Healthy": "False/Suspended", "Ready": "True/Ready"}},
		{"secret missing", nil, ready(&observation{Stalled: &stalledError{Reason: v1.ReasonSecretMissing, Message: "m"}}),
			map[string]string{"Ready": "False/SecretMissing", "Stalled": "True/SecretMissing", "Reconciling": "absent"}},
		{"nats down", nil, &observation{Now: t0, NATSErr: errors.New("no responders")},
			map[string]string{"Ready": "False/NATSUnavailable", "Reconciling": "True/NATSUnavailable", "Healthy": "Unknown/HealthUnknown", "Stalled": "absent"}},
		{"dispatcher starting", nil, func() *observation {
			o := ready(&observation{})
			o.DispatcherReady, o.DispatcherMessage = false, "waiting"
			return o
		}(), map[string]string{"Ready": "False/Progressing", "Reconciling": "True/Progressing"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep := newEndpoint("ns", "crm")
			ep.Generation = 3
			if c.spec != nil {
				c.spec(ep)
			}
			summarise(ep, c.obs)
			assertConditions(t, ep, c.want)
			wantGen := int64(3)
			if !c.obs.succeeded() {
				wantGen = 0
			}
			if ep.Status.ObservedGeneration != wantGen {
				t.Errorf("observedGeneration = %d, want %d", ep.Status.ObservedGeneration, wantGen)
			}
		})
	}
}

func TestSetDeliveryStatusRoundsTimes(t *testing.T) {
	ep := newEndpoint("ns", "crm")
	ok := t0.Add(1500 * time.Millisecond)
	summarise(ep, &observation{Now: t0, HealthKnown: true, Backlog: &backlogObservation{Backlog: 2, OldestPending: &ok},
		Health: &dispatcher.Health{LastSuccess: &ok, Delivered: 1, LastFailure: &dispatcher.Failure{Time: ok, Message: string(make([]byte, 1000))}}})
	if got := ep.Status.LastSuccessTime.Time; !got.Equal(t0.Add(time.Second)) {
		t.Errorf("lastSuccessTime = %v, want whole seconds", got)
	}
	if n := len(ep.Status.LastFailure.Message); n > maxFailureMessage+4 {
		t.Errorf("lastFailure.message has %d bytes, want it capped", n)
	}
	if ep.Status.Backlog != 2 || ep.Status.OldestPendingTime == nil {
		t.Errorf("backlog not copied: %+v", ep.Status)
	}
}

func TestWriteDecision(t *testing.T) {
	base := newEndpoint("ns", "crm")
	summarise(base, &observation{Now: t0, Consumer: "c", DispatcherReady: true, HealthKnown: true, Backlog: &backlogObservation{}})
	counters := base.DeepCopy()
	counters.Status.Backlog = 7
	healthMoved := base.DeepCopy()
	apimeta.SetStatusCondition(&healthMoved.Status.Conditions, metav1.Condition{Type: v1.HealthyCondition, Status: metav1.ConditionFalse, Reason: v1.ReasonFailing})
	messageOnly := base.DeepCopy()
	apimeta.SetStatusCondition(&messageOnly.Status.Conditions, metav1.Condition{Type: v1.HealthyCondition, Status: metav1.ConditionTrue, Reason: v1.ReasonNoDeliveriesYet, Message: "other"})

	cases := []struct {
		name      string
		after     *v1.WebhookEndpoint
		sinceLast time.Duration
		write     bool
		wait      time.Duration
	}{
		{"unchanged is never written", base, time.Hour, false, 0},
		{"counters inside the interval wait", counters, 2 * time.Second, false, 3 * time.Second},
		{"counters after the interval are written", counters, 5 * time.Second, true, 0},
		{"a condition move is written at once", healthMoved, 0, true, 0},
		{"a message-only change waits", messageOnly, time.Second, false, 4 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			write, wait := writeDecision(&base.Status, &c.after.Status, t0.Add(-c.sinceLast), t0, 5*time.Second)
			if write != c.write || wait != c.wait {
				t.Errorf("writeDecision = (%v, %v), want (%v, %v)", write, wait, c.write, c.wait)
			}
		})
	}
}

func TestTransitionEvents(t *testing.T) {
	status := func(health string, dead int64) *v1.WebhookEndpointStatus {
		s := &v1.WebhookEndpointStatus{Totals: v1.DeliveryTotals{DeadLettered: dead}, ConsecutiveFailures: 4}
		if health != "" {
			apimeta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: v1.HealthyCondition, Status: metav1.ConditionFalse, Reason: health})
		}
		return s
	}
	reasons := func(evs []eventRecord) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Reason)
		}
		return out
	}
	cases := []struct {
		name          string
		before, after *v1.WebhookEndpointStatus
		want          []string
	}{
		{"starts failing", status(v1.ReasonDelivering, 0), status(v1.ReasonFailing, 0), []string{"DeliveryFailing"}},
		{"still failing is quiet", status(v1.ReasonFailing, 0), status(v1.ReasonFailing, 0), nil},
		{"recovers", status(v1.ReasonFailing, 0), status(v1.ReasonDelivering, 0), []string{"DeliveryRecovered"}},
		{"lags", status(v1.ReasonDelivering, 0), status(v1.ReasonLagging, 0), []string{"Lagging"}},
		{"dead letters are aggregated", status(v1.ReasonFailing, 1), status(v1.ReasonFailing, 5), []string{"DeadLettered"}},
		{"first status", status("", 0), status(v1.ReasonNoDeliveriesYet, 0), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := reasons(transitionEvents(c.before, c.after))
			if len(got) != len(c.want) || (len(got) > 0 && got[0] != c.want[0]) {
				t.Errorf("events = %v, want %v", got, c.want)
			}
		})
	}
}

func TestShouldWake(t *testing.T) {
	iv := 5 * time.Second
	cases := []struct {
		name       string
		prev, next wakeState
		want       bool
	}{
		{"first record", wakeState{}, wakeState{at: t0}, true},
		{"burst is coalesced", wakeState{at: t0}, wakeState{at: t0.Add(time.Second)}, false},
		{"after the interval", wakeState{at: t0}, wakeState{at: t0.Add(iv)}, true},
		{"starts failing at once", wakeState{at: t0}, wakeState{at: t0.Add(time.Second), failing: true}, true},
	}
	for _, c := range cases {
		if got := shouldWake(c.prev, c.next, iv); got != c.want {
			t.Errorf("%s: shouldWake = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestConsumerDrifted(t *testing.T) {
	want, err := desiredConsumer(newEndpoint("ns", "crm", withEventTypes("b.*", "a")))
	if err != nil {
		t.Fatal(err)
	}
	have := want
	// The server adds its own metadata and may order filters differently.
	have.Metadata = map[string]string{"_nats.ver": "2.12", "herald.dev/endpoint": "ns/crm"}
	have.FilterSubjects = []string{want.FilterSubjects[1], want.FilterSubjects[0]}
	if consumerDrifted(want, have) {
		t.Error("server-side additions must not count as drift")
	}
	have.MaxAckPending++
	if !consumerDrifted(want, have) {
		t.Error("a changed max ack pending is drift")
	}
	have = want
	have.FilterSubjects = []string{"herald.events.ns.>"}
	if !consumerDrifted(want, have) {
		t.Error("changed filters are drift")
	}
	if _, err := desiredConsumer(newEndpoint("ns", "crm", withEventTypes("a..b"))); err == nil {
		t.Error("an empty token must be refused")
	} else if s, ok := asStalled(err); !ok || s.Reason != v1.ReasonEventTypesRefused {
		t.Errorf("refusal must be Stalled %s, got %v", v1.ReasonEventTypesRefused, err)
	}
}
