package controller

import (
	"errors"
	"strings"
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
		{"backlog starts expiring", status(v1.ReasonLagging, 0), func() *v1.WebhookEndpointStatus {
			s := status(v1.ReasonLagging, 0)
			apimeta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: v1.BacklogExpiringCondition, Status: metav1.ConditionTrue, Reason: v1.ReasonNearRetryWindow, Message: "m"})
			return s
		}(), []string{"BacklogExpiring"}},
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

// readyObs is an observation of an endpoint in place, with the retention
// and the retry window known.
func readyObs(o *observation) *observation {
	o.Now, o.Consumer, o.DispatcherReady, o.HealthKnown = t0, "ns_crm", true, true
	if o.Backlog == nil {
		o.Backlog = &backlogObservation{}
	}
	if o.Retention == 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	if o.RetryWindow == 0 {
		o.RetryWindow, o.WindowSource = 24*time.Hour, "the default retry policy"
	}
	return o
}

func TestTransientAPIErrorKeepsObservedGeneration(t *testing.T) {
	ep := newEndpoint("ns", "crm")
	ep.Generation = 2
	summarise(ep, readyObs(&observation{}))
	assertConditions(t, ep, map[string]string{"Ready": "True/Ready"})

	ep.Generation = 3
	o := readyObs(&observation{APIErr: errors.New(`reading signing Secret ns/crm-signing: secrets "crm-signing" is forbidden`)})
	summarise(ep, o)
	assertConditions(t, ep, map[string]string{"Ready": "Unknown/APIUnavailable", "Reconciling": "True/APIUnavailable", "Stalled": "absent"})
	if ep.Status.ObservedGeneration != 2 {
		t.Errorf("observedGeneration = %d after a transient error, want the previous 2", ep.Status.ObservedGeneration)
	}
	if msg := conditionMessage(ep, v1.ReadyCondition); !strings.Contains(msg, "forbidden") {
		t.Errorf("Ready message %q does not say what failed", msg)
	}
}

func TestBacklogExpiring(t *testing.T) {
	day := 24 * time.Hour
	cases := []struct {
		name              string
		oldest            time.Duration // age of the oldest waiting event; 0: none
		retention, window time.Duration
		want              string
		mentions          []string
	}{
		{"nothing waiting", 0, 7 * day, day, "absent", nil},
		{"young backlog", 11 * time.Hour, 7 * day, day, "absent", nil},
		{"over half the default window", 13 * time.Hour, 7 * day, day, "True/NearRetryWindow", []string{"13h", "24h", "the default retry policy", "dead-letter"}},
		{"over half the retention less the margin", 13 * time.Hour, 2 * day, 144 * time.Hour, "True/NearRetention", []string{"13h", "24h", "48h", "dropped"}},
		{"window unknown: the retention alone", 4 * day, 7 * day, 0, "True/NearRetention", []string{"4d", "144h", "168h"}},
		{"a retention shorter than the margin counts itself", 40 * time.Minute, time.Hour, 2 * time.Hour, "True/NearRetention", []string{"40m", "1h", "kept only 1h"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep := newEndpoint("ns", "crm")
			o := readyObs(&observation{Retention: c.retention, RetryWindow: c.window, WindowSource: "the default retry policy"})
			if c.window == 0 {
				o.RetryWindow, o.WindowSource = 0, ""
			}
			if c.oldest > 0 {
				o.Backlog = &backlogObservation{Backlog: 3, OldestPending: at(-c.oldest)}
			}
			summarise(ep, o)
			assertConditions(t, ep, map[string]string{v1.BacklogExpiringCondition: c.want})
			msg := conditionMessage(ep, v1.BacklogExpiringCondition)
			for _, m := range c.mentions {
				if !strings.Contains(msg, m) {
					t.Errorf("message %q does not mention %q", msg, m)
				}
			}
		})
	}

	t.Run("goes away when the backlog drains, and stays while it cannot be read", func(t *testing.T) {
		ep := newEndpoint("ns", "crm")
		summarise(ep, readyObs(&observation{Backlog: &backlogObservation{Backlog: 1, OldestPending: at(-20 * time.Hour)}}))
		assertConditions(t, ep, map[string]string{v1.BacklogExpiringCondition: "True/NearRetryWindow"})
		o := readyObs(&observation{})
		o.Backlog = nil
		summarise(ep, o)
		assertConditions(t, ep, map[string]string{v1.BacklogExpiringCondition: "True/NearRetryWindow"})
		summarise(ep, readyObs(&observation{}))
		assertConditions(t, ep, map[string]string{v1.BacklogExpiringCondition: "absent"})
	})
}

func TestReadyMessageWarnsOfARetryWindowBeyondRetention(t *testing.T) {
	ep := newEndpoint("ns", "crm", withPolicy("slow"))
	summarise(ep, readyObs(&observation{Retention: time.Hour, RetryWindow: 2 * time.Hour, WindowSource: `RetryPolicy "slow"`}))
	// Deliveries go on: the endpoint is Ready, and says what will go wrong.
	assertConditions(t, ep, map[string]string{"Ready": "True/Ready", "Stalled": "absent"})
	msg := conditionMessage(ep, v1.ReadyCondition)
	for _, m := range []string{`RetryPolicy "slow"`, "2h", "1h"} {
		if !strings.Contains(msg, m) {
			t.Errorf("Ready message %q does not mention %q", msg, m)
		}
	}
	summarise(ep, readyObs(&observation{RetryWindow: 2 * time.Hour, WindowSource: `RetryPolicy "slow"`}))
	if msg := conditionMessage(ep, v1.ReadyCondition); strings.Contains(msg, "retention") {
		t.Errorf("a window that fits must not be warned about: %q", msg)
	}
}

func TestHealthyMessageNamesTheLatencyTarget(t *testing.T) {
	delivered := &dispatcher.Health{Delivered: 3, LastSuccess: at(0)}
	cases := []struct {
		name     string
		oldest   time.Duration
		want     string
		mentions []string
		not      []string
	}{
		{"nothing waiting", 0, "True/Delivering", []string{"target 5s", "Lagging after 1m"}, nil},
		{"inside the target", 3 * time.Second, "True/Delivering", []string{"within the 5s target", "1m"}, []string{"3s"}},
		{"over the target, under the threshold", 12 * time.Second, "True/Delivering", []string{"12s old", "over the 5s target", "1m"}, nil},
		{"lagging", 2 * time.Minute, "False/Lagging", []string{"2m old", "5s target", "warnAfter (1m)"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep := newEndpoint("ns", "crm")
			ep.Spec.Latency = v1.Latency{Target: &metav1.Duration{Duration: 5 * time.Second}, WarnAfter: &metav1.Duration{Duration: time.Minute}}
			o := readyObs(&observation{Health: delivered})
			if c.oldest > 0 {
				o.Backlog = &backlogObservation{Backlog: 2, OldestPending: at(-c.oldest)}
			}
			summarise(ep, o)
			assertConditions(t, ep, map[string]string{"Healthy": c.want})
			msg := conditionMessage(ep, v1.HealthyCondition)
			for _, m := range c.mentions {
				if !strings.Contains(msg, m) {
					t.Errorf("Healthy message %q does not mention %q", msg, m)
				}
			}
			for _, m := range c.not {
				if strings.Contains(msg, m) {
					t.Errorf("Healthy message %q mentions %q: inside the target it must not change with the age", msg, m)
				}
			}
		})
	}
	t.Run("defaults when the spec was not defaulted", func(t *testing.T) {
		ep := newEndpoint("ns", "crm")
		summarise(ep, readyObs(&observation{Health: delivered}))
		if msg := conditionMessage(ep, v1.HealthyCondition); !strings.Contains(msg, "target 5s") {
			t.Errorf("Healthy message %q does not name the default target", msg)
		}
	})
}

func TestNextRetryIn(t *testing.T) {
	cases := []struct {
		in   *time.Time
		want string
	}{
		{nil, ""},
		{at(47 * time.Second), "in 47s"},
		{at(47*time.Second + 600*time.Millisecond), "in 47s"},
		{at(3 * time.Minute), "in 3m"},
		{at(3*time.Minute + 20*time.Second), "in 3m20s"},
		{at(47 * time.Minute), "in 47m"},
		{at(5 * time.Hour), "in 5h"},
		{at(200 * time.Millisecond), "due"},
		{at(-5 * time.Second), "due"},
	}
	for _, c := range cases {
		if got := nextRetryIn(c.in, t0); got != c.want {
			t.Errorf("nextRetryIn(%v) = %q, want %q", c.in, got, c.want)
		}
	}
	ep := newEndpoint("ns", "crm")
	summarise(ep, readyObs(&observation{Health: &dispatcher.Health{ConsecutiveFailures: 1, NextRetry: at(47 * time.Second)}}))
	if ep.Status.NextRetryIn != "in 47s" {
		t.Errorf("status.nextRetryIn = %q, want it filled as of the write", ep.Status.NextRetryIn)
	}
}

func TestConsumerBelongs(t *testing.T) {
	cases := []struct {
		name  string
		have  map[string]string
		known bool
		want  bool
	}{
		{"this endpoint's", map[string]string{endpointUIDKey: "uid-2"}, true, true},
		{"this endpoint's, before its status was written", map[string]string{endpointUIDKey: "uid-2"}, false, true},
		{"an earlier endpoint of the same name", map[string]string{endpointUIDKey: "uid-1"}, true, false},
		{"unowned, found by a new endpoint", map[string]string{"herald.dev/endpoint": "ns/crm"}, false, false},
		{"unowned, of an endpoint that had it (made before UIDs)", map[string]string{"herald.dev/endpoint": "ns/crm"}, true, true},
	}
	for _, c := range cases {
		if got := consumerBelongs(c.have, "uid-2", c.known); got != c.want {
			t.Errorf("%s: consumerBelongs = %v, want %v", c.name, got, c.want)
		}
	}
	ep := newEndpoint("ns", "crm")
	ep.UID = "uid-2"
	want, err := desiredConsumer(ep)
	if err != nil {
		t.Fatal(err)
	}
	if want.Metadata[endpointUIDKey] != "uid-2" || want.Metadata["herald.dev/endpoint"] != "ns/crm" {
		t.Errorf("consumer metadata %v must carry the endpoint's UID next to its name", want.Metadata)
	}
}

func TestHealthyMessageSaysWhenBookkeepingIsHeld(t *testing.T) {
	ep := newEndpoint("ns", "crm")
	o := readyObs(&observation{Health: &dispatcher.Health{Delivered: 3, LastSuccess: at(0), PendingWrites: 2}})
	summarise(ep, o)
	if msg := conditionMessage(ep, v1.HealthyCondition); !strings.Contains(msg, "2 delivered or dead-lettered events wait") {
		t.Fatalf("Healthy message %q does not say that bookkeeping is held", msg)
	}
}

func TestStatusIntervalKeepsAllEndpointsWithinTheWriteBudget(t *testing.T) {
	for _, c := range []struct {
		endpoints int
		want      time.Duration
	}{
		{0, 5 * time.Second}, {100, 5 * time.Second}, {400, 5 * time.Second},
		{1000, 12500 * time.Millisecond}, {10_000, 125 * time.Second},
	} {
		got := spread(5*time.Second, DefaultStatusWriteBudget, c.endpoints)
		if got != c.want {
			t.Errorf("%d endpoints: interval %v, want %v", c.endpoints, got, c.want)
		}
		if c.endpoints > 0 {
			if rate := float64(c.endpoints) / got.Seconds(); rate > DefaultStatusWriteBudget {
				t.Errorf("%d endpoints written every %v: %.0f writes/s, over the budget", c.endpoints, got, rate)
			}
		}
	}
}

func TestQuietEndpointsAreThoseWithOnlyDriftToWatch(t *testing.T) {
	ep := newEndpoint("ns", "crm")
	summarise(ep, readyObs(&observation{}))
	if !quiet(&ep.Status) {
		t.Fatalf("a Ready endpoint with nothing waiting is not quiet: %+v", ep.Status)
	}
	for name, mutate := range map[string]func(*v1.WebhookEndpointStatus){
		"backlog":  func(s *v1.WebhookEndpointStatus) { s.Backlog = 1 },
		"failing":  func(s *v1.WebhookEndpointStatus) { s.ConsecutiveFailures = 2 },
		"retrying": func(s *v1.WebhookEndpointStatus) { s.NextRetryTime = &metav1.Time{Time: t0} },
		"not ready": func(s *v1.WebhookEndpointStatus) {
			s.Conditions = nil
		},
	} {
		s := *ep.Status.DeepCopy()
		mutate(&s)
		if quiet(&s) {
			t.Errorf("%s: counted as quiet", name)
		}
	}
}
