package deliverylog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
)

// Summary counts a namespace's retrying and failed deliveries by endpoint
// and by last status code, from one walk over the log's latest entries.
func (r *Reader) Summary(ctx context.Context, namespace string) (*v1.DeliverySummary, error) {
	var ds []v1.WebhookDelivery
	err := r.Deliveries(ctx, namespace, Selector{LogOnly: true}, func(d *v1.WebhookDelivery) {
		if p := d.Status.Phase; p == v1.PhaseRetrying || p == v1.PhaseFailed {
			ds = append(ds, *d)
		}
	})
	if err != nil {
		return nil, err
	}
	s := Summarize(namespace, ds)
	log, err := r.JS.Stream(ctx, streams.AttemptsStream(namespace))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("opening delivery log %s: %w", streams.AttemptsStream(namespace), err)
	case log.CachedInfo().State.Msgs > 0:
		t := metav1.NewTime(log.CachedInfo().State.FirstTime)
		s.Status.Since = &t
	}
	return &s, nil
}

// Summarize counts the retrying and failed deliveries of ds, in any
// order; the summary's creation time is the latest failure's.
func Summarize(namespace string, ds []v1.WebhookDelivery) v1.DeliverySummary {
	s := v1.DeliverySummary{ObjectMeta: metav1.ObjectMeta{Name: v1.SummaryName, Namespace: namespace}}
	byEndpoint := map[string]*v1.EndpointSummary{}
	latest := map[string]time.Time{} // of each endpoint's failures
	for i := range ds {
		d := &ds[i]
		failed := d.Status.Phase == v1.PhaseFailed
		if !failed && d.Status.Phase != v1.PhaseRetrying {
			continue
		}
		at := Changed(*d)
		if at.After(s.CreationTimestamp.Time) {
			s.CreationTimestamp = metav1.NewTime(at)
		}
		e := byEndpoint[d.Spec.Endpoint]
		if e == nil {
			e = &v1.EndpointSummary{Endpoint: d.Spec.Endpoint}
			byEndpoint[d.Spec.Endpoint] = e
		}
		if !at.Before(latest[e.Endpoint]) {
			latest[e.Endpoint], e.LastError = at, d.Status.LastError
		}
		if failed {
			s.Status.Failed++
			e.Failed++
		} else {
			s.Status.Retrying++
			e.Retrying++
			if t := d.CreationTimestamp; e.OldestRetrying == nil || t.Before(e.OldestRetrying) {
				e.OldestRetrying = &t
			}
		}
		s.Status.Codes = count(s.Status.Codes, d.Status.LastStatusCode, failed)
		e.Codes = count(e.Codes, d.Status.LastStatusCode, failed)
	}
	for _, e := range byEndpoint {
		sortCodes(e.Codes)
		s.Status.Endpoints = append(s.Status.Endpoints, *e)
	}
	sortCodes(s.Status.Codes)
	slices.SortFunc(s.Status.Endpoints, func(a, b v1.EndpointSummary) int {
		return cmp.Or(cmp.Compare(b.Retrying+b.Failed, a.Retrying+a.Failed), cmp.Compare(a.Endpoint, b.Endpoint))
	})
	return s
}

func count(cs []v1.CodeCount, code int32, failed bool) []v1.CodeCount {
	i := slices.IndexFunc(cs, func(c v1.CodeCount) bool { return c.Code == code })
	if i < 0 {
		cs = append(cs, v1.CodeCount{Code: code})
		i = len(cs) - 1
	}
	if failed {
		cs[i].Failed++
	} else {
		cs[i].Retrying++
	}
	return cs
}

func sortCodes(cs []v1.CodeCount) {
	slices.SortFunc(cs, func(a, b v1.CodeCount) int {
		return cmp.Or(cmp.Compare(b.Retrying+b.Failed, a.Retrying+a.Failed), cmp.Compare(a.Code, b.Code))
	})
}
