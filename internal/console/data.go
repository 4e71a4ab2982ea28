package console

import (
	"cmp"
	"context"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// row is one endpoint on the overview, and the head of its own page.
type row struct {
	Namespace, Name string
	Ready           metav1.ConditionStatus
	ReadyReason     string
	Health          string // the Healthy condition's reason
	HealthMessage   string
	Backlog         int64
	Oldest          *metav1.Time
	Target, Warn    time.Duration
	LastSuccess     *metav1.Time
	LastFailure     *v1.DeliveryFailure
	NextRetry       *metav1.Time
}

// Failing says whether the endpoint needs someone: not ready, failing,
// or with its oldest event past the warning threshold.
func (r row) Failing() bool {
	return r.Ready != metav1.ConditionTrue || r.Health == v1.ReasonFailing || r.Health == v1.ReasonLagging || r.Lag() == "lagging"
}

// Lag places the oldest waiting event's age against the endpoint's
// latency target and warning threshold: "", "ok", "late" or "lagging".
func (r row) Lag() string {
	if r.Oldest == nil || r.Backlog == 0 {
		return ""
	}
	age := time.Since(r.Oldest.Time)
	switch {
	case r.Warn > 0 && age > r.Warn:
		return "lagging"
	case r.Target > 0 && age > r.Target:
		return "late"
	}
	return "ok"
}

func rowOf(ep *v1.WebhookEndpoint) row {
	r := row{
		Namespace: ep.Namespace, Name: ep.Name, Ready: metav1.ConditionUnknown,
		Backlog: ep.Status.Backlog, Oldest: ep.Status.OldestPendingTime,
		LastSuccess: ep.Status.LastSuccessTime, LastFailure: ep.Status.LastFailure, NextRetry: ep.Status.NextRetryTime,
	}
	if c := apimeta.FindStatusCondition(ep.Status.Conditions, v1.ReadyCondition); c != nil {
		r.Ready, r.ReadyReason = c.Status, c.Reason
	}
	if c := apimeta.FindStatusCondition(ep.Status.Conditions, v1.HealthyCondition); c != nil {
		r.Health, r.HealthMessage = c.Reason, c.Message
	}
	if d := ep.Spec.Latency.Target; d != nil {
		r.Target = d.Duration
	}
	if d := ep.Spec.Latency.WarnAfter; d != nil {
		r.Warn = d.Duration
	}
	return r
}

// worstFirst orders failing endpoints first, then the biggest backlog,
// then by name.
func worstFirst(a, b row) int {
	if fa, fb := a.Failing(), b.Failing(); fa != fb {
		if fa {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(b.Backlog, a.Backlog), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// endpoints are the endpoints the user may see: every namespace's when
// they may list across the cluster, their own namespace's otherwise (and
// scoped says so).
func (s *Server) endpoints(ctx context.Context) (rows []row, scoped bool, err error) {
	var l v1.WebhookEndpointList
	err = s.kube.List(ctx, &l)
	if apierrors.IsForbidden(err) && s.opts.Namespace != "" {
		scoped = true
		err = s.kube.List(ctx, &l, client.InNamespace(s.opts.Namespace))
	}
	if err != nil {
		return nil, scoped, err
	}
	rows = make([]row, 0, len(l.Items))
	for i := range l.Items {
		rows = append(rows, rowOf(&l.Items[i]))
	}
	slices.SortFunc(rows, worstFirst)
	return rows, scoped, nil
}

// namespaceGroup is one namespace's endpoints on the overview.
type namespaceGroup struct {
	Namespace string
	Rows      []row
	Failing   int
}

func groupByNamespace(rows []row) []namespaceGroup {
	var out []namespaceGroup
	at := map[string]int{}
	for _, r := range rows {
		i, ok := at[r.Namespace]
		if !ok {
			i = len(out)
			at[r.Namespace] = i
			out = append(out, namespaceGroup{Namespace: r.Namespace})
		}
		out[i].Rows = append(out[i].Rows, r)
		if r.Failing() {
			out[i].Failing++
		}
	}
	// Rows came worst first, so a namespace with a failing endpoint is
	// already ahead of those without.
	return out
}

// endpointPage is everything the endpoint page shows.
type endpointPage struct {
	row
	URL        string
	Conditions []metav1.Condition
	Codes      []deliveryv1.CodeCount
	Retrying   []deliveryv1.WebhookDelivery
	Dead       []deliveryv1.DeadLetter
	// MoreRetrying and MoreDead count the rows past the first page.
	MoreRetrying, MoreDead int64
	Replays                []v1.WebhookReplay
	Attempts               chart
	Latency                chart
	Sampled                int // deliveries the charts were drawn from
	CanReplay              bool
}

// chartDeliveries bounds the deliveries read for an endpoint's charts:
// the newest first, so a busy endpoint's last hour may be cut short (the
// page says so).
const chartDeliveries = 5000

func (s *Server) endpointData(ctx context.Context, ns, name string) (*endpointPage, error) {
	var ep v1.WebhookEndpoint
	if err := s.kube.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ep); err != nil {
		return nil, err
	}
	p := &endpointPage{row: rowOf(&ep), URL: ep.Spec.URL, Conditions: ep.Status.Conditions}
	sum, err := s.delivery.Summary(ctx, ns)
	if err != nil {
		return nil, err
	}
	for _, e := range sum.Status.Endpoints {
		if e.Endpoint == name {
			p.Codes = e.Codes
		}
	}
	retrying, err := s.delivery.Deliveries(ctx, ns, metav1.ListOptions{
		FieldSelector: fields.SelectorFromSet(fields.Set{deliveryv1.FieldEndpoint: name, deliveryv1.FieldPhase: string(deliveryv1.PhaseRetrying)}).String(),
		Limit:         100,
	})
	if err != nil {
		return nil, err
	}
	p.Retrying, p.MoreRetrying = retrying.Items, remaining(retrying.ListMeta)
	dead, err := s.delivery.DeadLetters(ctx, ns, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector(deliveryv1.FieldEndpoint, name).String(), Limit: 100})
	if err != nil {
		return nil, err
	}
	p.Dead, p.MoreDead = dead.Items, remaining(dead.ListMeta)
	var replays v1.WebhookReplayList
	if err := s.kube.List(ctx, &replays, client.InNamespace(ns)); err != nil && !apierrors.IsForbidden(err) {
		return nil, err
	}
	for _, rp := range replays.Items {
		if rp.Spec.Endpoint == name && !rp.Spec.DryRun {
			p.Replays = append(p.Replays, rp)
		}
	}
	slices.SortFunc(p.Replays, func(a, b v1.WebhookReplay) int {
		return b.CreationTimestamp.Compare(a.CreationTimestamp.Time)
	})
	c, err := s.chartsOf(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	p.Attempts, p.Latency, p.Sampled = c.attempts, c.latency, c.sampled
	p.CanReplay = s.can(ctx, "create", "webhookreplays", ns)
	return p, nil
}

func remaining(l metav1.ListMeta) int64 {
	if l.RemainingItemCount != nil {
		return *l.RemainingItemCount
	}
	return 0
}

// drawn is an endpoint's charts, as last drawn.
type drawn struct {
	at                time.Time
	attempts, latency chart
	sampled           int
}

// chartEvery is how long an endpoint's charts are kept: reading up to
// 5,000 deliveries for every two-second refresh of every open page would
// load the delivery API and NATS far more than a minute's chart needs.
const chartEvery = 30 * time.Second

func (s *Server) chartsOf(ctx context.Context, ns, name string) (drawn, error) {
	key := ns + "/" + name
	if v, ok := s.charts.Load(key); ok && time.Since(v.(drawn).at) < chartEvery {
		return v.(drawn), nil
	}
	recent, err := s.delivery.Deliveries(ctx, ns, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector(deliveryv1.FieldEndpoint, name).String(), Limit: chartDeliveries})
	if err != nil {
		return drawn{}, err
	}
	d := drawn{at: time.Now(), sampled: len(recent.Items)}
	d.attempts, d.latency = charts(recent.Items, d.at)
	s.charts.Store(key, d)
	return d, nil
}

// eventAt is one event at one endpoint, with its attempts.
type eventAt struct {
	deliveryv1.WebhookDelivery
	CanReplay bool
}

// eventData finds an event in every namespace the user may see.
func (s *Server) eventData(ctx context.Context, id string) ([]eventAt, error) {
	rows, _, err := s.endpoints(ctx)
	if err != nil {
		return nil, err
	}
	var out []eventAt
	for _, g := range groupByNamespace(rows) {
		ds, err := s.delivery.EventStatus(ctx, g.Namespace, id)
		if apierrors.IsForbidden(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		canReplay := len(ds) > 0 && s.can(ctx, "create", "webhookreplays", g.Namespace)
		for _, d := range ds {
			if full, err := s.delivery.Delivery(ctx, g.Namespace, id, d.Spec.Endpoint); err == nil {
				d = *full
			}
			out = append(out, eventAt{WebhookDelivery: d, CanReplay: canReplay})
		}
	}
	slices.SortFunc(out, func(a, b eventAt) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Spec.Endpoint, b.Spec.Endpoint))
	})
	return out, nil
}
