package controller

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// The alert rules compare each endpoint with its own thresholds, and
// read the last success from the operator: these are their inputs.
func TestExportEndpointMetrics(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	oldest := now.Add(-90 * time.Second)
	success := now.Add(-time.Minute)
	ep := &v1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "metrics-test", Name: "crm"}}
	ep.Spec.Latency.WarnAfter = &metav1.Duration{Duration: 2 * time.Minute}
	exportEndpointMetrics(ep, &observation{Now: now, Backlog: &backlogObservation{Backlog: 7, OldestPending: &oldest},
		Health: &dispatcher.Health{LastSuccess: &success}})

	for name, c := range map[string]struct{ got, want float64 }{
		"backlog":      {testutil.ToFloat64(backlogGauge.WithLabelValues("metrics-test", "crm")), 7},
		"oldest":       {testutil.ToFloat64(lagGauge.WithLabelValues("metrics-test", "crm")), 90},
		"warnAfter":    {testutil.ToFloat64(warnAfterGauge.WithLabelValues("metrics-test", "crm")), 120},
		"target":       {testutil.ToFloat64(targetGauge.WithLabelValues("metrics-test", "crm")), defaultTarget.Seconds()},
		"last success": {testutil.ToFloat64(lastSuccessGauge.WithLabelValues("metrics-test", "crm")), float64(success.Unix())},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", name, c.got, c.want)
		}
	}

	forgetEndpointMetrics("metrics-test", "crm")
	if lastSuccessGauge.DeleteLabelValues("metrics-test", "crm") {
		t.Error("the last-success series is left after the endpoint went")
	}
}
