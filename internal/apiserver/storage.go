package apiserver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
)

// The three resources are read-only: get and list.
var (
	_ readOnly = (*deliveries)(nil)
	_ readOnly = (*deadLetters)(nil)
	_ readOnly = (*summaries)(nil)
)

type readOnly interface {
	rest.Storage
	rest.Getter
	rest.Lister
	rest.Scoper
	rest.SingularNameProvider
	rest.CategoriesProvider
}

type base struct{ r *deliverylog.Reader }

func (base) Destroy()              {}
func (base) NamespaceScoped() bool { return true }
func (base) Categories() []string  { return []string{"herald"} }

// namespaces are the request's namespace, or every namespace with a
// delivery log for a request across all of them.
func (b base) namespaces(ctx context.Context) ([]string, error) {
	if ns := genericapirequest.NamespaceValue(ctx); ns != "" {
		return []string{ns}, checkNamespace(ns)
	}
	ns, err := b.r.Namespaces(ctx)
	return ns, unavailable(err)
}

// checkNamespace refuses a namespace that is not a DNS label: it becomes
// part of NATS stream names and subjects, so it must never hold a dot or a
// wildcard, whatever reaches this server.
func checkNamespace(ns string) error {
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return apierrors.NewBadRequest(fmt.Sprintf("namespace %q: %s", ns, strings.Join(errs, "; ")))
	}
	return nil
}

// unavailable turns a failed read into what a client should see: a bad
// selector is the client's, anything else is NATS not answering.
func unavailable(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, deliverylog.ErrInvalidSelector):
		return apierrors.NewBadRequest(err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return apierrors.NewTimeoutError("reading the delivery log: "+err.Error(), 1)
	}
	return apierrors.NewServiceUnavailable("reading the delivery log from NATS: " + err.Error())
}

// selection is what a list's selectors ask for: the subject filter NATS
// applies, and the full match applied after.
type selection struct {
	sel    deliverylog.Selector
	fields fields.Selector
	labels labels.Selector
}

func selectionOf(opts *metainternalversion.ListOptions) (selection, error) {
	s := selection{fields: fields.Everything(), labels: labels.Everything()}
	if opts != nil && opts.FieldSelector != nil {
		s.fields = opts.FieldSelector
	}
	if opts != nil && opts.LabelSelector != nil {
		s.labels = opts.LabelSelector
	}
	s.sel.EventID, _ = s.fields.RequiresExactMatch(v1.FieldEventID)
	s.sel.Endpoint, _ = s.fields.RequiresExactMatch(v1.FieldEndpoint)
	if name, ok := s.fields.RequiresExactMatch("metadata.name"); ok {
		byName, valid := deliverylog.SplitName(name)
		if !valid {
			return s, apierrors.NewBadRequest(fmt.Sprintf("metadata.name %q is not <event id>.<endpoint>", name))
		}
		if (s.sel.EventID != "" && s.sel.EventID != byName.EventID) || (s.sel.Endpoint != "" && s.sel.Endpoint != byName.Endpoint) {
			return s, apierrors.NewBadRequest("metadata.name contradicts the eventID or endpoint selector")
		}
		s.sel.EventID, s.sel.Endpoint = byName.EventID, byName.Endpoint
	}
	return s, unavailable(s.sel.Check())
}

func (s selection) matches(meta metav1.ObjectMeta, f fields.Set) bool {
	f["metadata.name"], f["metadata.namespace"] = meta.Name, meta.Namespace
	return s.fields.Matches(f) && s.labels.Matches(labels.Set(meta.Labels))
}

func notFound(resource, name string) error {
	return apierrors.NewNotFound(v1.Resource(resource), name)
}

// deliveries serves webhookdeliveries.
type deliveries struct{ base }

func (deliveries) New() runtime.Object     { return &v1.WebhookDelivery{} }
func (deliveries) NewList() runtime.Object { return &v1.WebhookDeliveryList{} }
func (deliveries) ShortNames() []string    { return []string{"whd"} }
func (deliveries) GetSingularName() string { return "webhookdelivery" }
func (deliveries) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return deliveryTable(obj)
}

func (s deliveries) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	sel, ok := deliverylog.SplitName(name)
	if !ok {
		return nil, notFound("webhookdeliveries", name)
	}
	ns := genericapirequest.NamespaceValue(ctx)
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	d, err := s.r.Delivery(ctx, ns, sel.EventID, sel.Endpoint)
	if err != nil {
		return nil, unavailable(err)
	}
	if d == nil {
		return nil, notFound("webhookdeliveries", name)
	}
	return d, nil
}

func (s deliveries) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	q, err := selectionOf(opts)
	if err != nil {
		return nil, err
	}
	// A selected phase skips what it does not want, unread.
	phase, _ := q.fields.RequiresExactMatch(v1.FieldPhase)
	q.sel.Phase = v1.Phase(phase)
	namespaces, err := s.namespaces(ctx)
	if err != nil {
		return nil, err
	}
	p, err := newPager(func(d *v1.WebhookDelivery) position {
		return position{Time: deliverylog.Changed(*d).UnixNano(), Namespace: d.Namespace, Name: d.Name}
	}, genericapirequest.NamespaceValue(ctx), opts)
	if err != nil {
		return nil, err
	}
	for _, ns := range namespaces {
		err := s.r.Deliveries(ctx, ns, q.sel, func(d *v1.WebhookDelivery) {
			if q.matches(d.ObjectMeta, fields.Set{v1.FieldEventID: d.Spec.EventID, v1.FieldEndpoint: d.Spec.Endpoint, v1.FieldPhase: string(d.Status.Phase)}) {
				p.offer(d)
			}
		})
		if err != nil {
			return nil, unavailable(err)
		}
	}
	page, next, remaining := p.page()
	if err := s.r.FillFirstAttempts(ctx, page); err != nil {
		return nil, unavailable(err)
	}
	return &v1.WebhookDeliveryList{ListMeta: metav1.ListMeta{Continue: next, RemainingItemCount: remaining}, Items: page}, nil
}

// deadLetters serves deadletters.
type deadLetters struct{ base }

func (deadLetters) New() runtime.Object     { return &v1.DeadLetter{} }
func (deadLetters) NewList() runtime.Object { return &v1.DeadLetterList{} }
func (deadLetters) ShortNames() []string    { return []string{"dl"} }
func (deadLetters) GetSingularName() string { return "deadletter" }
func (deadLetters) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return deadLetterTable(obj)
}

func (s deadLetters) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	sel, ok := deliverylog.SplitName(name)
	if !ok {
		return nil, notFound("deadletters", name)
	}
	ns := genericapirequest.NamespaceValue(ctx)
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	d, err := s.r.DeadLetter(ctx, ns, sel.EventID, sel.Endpoint)
	if err != nil {
		return nil, unavailable(err)
	}
	if d == nil {
		return nil, notFound("deadletters", name)
	}
	return d, nil
}

func (s deadLetters) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	q, err := selectionOf(opts)
	if err != nil {
		return nil, err
	}
	namespaces, err := s.namespaces(ctx)
	if err != nil {
		return nil, err
	}
	p, err := newPager(func(d *v1.DeadLetter) position {
		return position{Time: d.Status.DeadTime.UnixNano(), Namespace: d.Namespace, Name: d.Name}
	}, genericapirequest.NamespaceValue(ctx), opts)
	if err != nil {
		return nil, err
	}
	for _, ns := range namespaces {
		dls, err := s.r.DeadLetters(ctx, ns, q.sel)
		if err != nil {
			return nil, unavailable(err)
		}
		for i := range dls {
			d := &dls[i]
			if q.matches(d.ObjectMeta, fields.Set{v1.FieldEventID: d.Spec.EventID, v1.FieldEndpoint: d.Spec.Endpoint, v1.FieldReason: d.Status.Reason}) {
				p.offer(d)
			}
		}
	}
	page, next, remaining := p.page()
	return &v1.DeadLetterList{ListMeta: metav1.ListMeta{Continue: next, RemainingItemCount: remaining}, Items: page}, nil
}

// summaries serves deliverysummaries: one per namespace, named summary.
type summaries struct{ base }

func (summaries) New() runtime.Object     { return &v1.DeliverySummary{} }
func (summaries) NewList() runtime.Object { return &v1.DeliverySummaryList{} }
func (summaries) ShortNames() []string    { return []string{"whs"} }
func (summaries) GetSingularName() string { return "deliverysummary" }
func (summaries) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return summaryTable(obj)
}

func (s summaries) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	if name != v1.SummaryName {
		return nil, notFound("deliverysummaries", name)
	}
	ns := genericapirequest.NamespaceValue(ctx)
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	sum, err := s.r.Summary(ctx, ns)
	return sum, unavailable(err)
}

func (s summaries) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	// The scheme refuses field selectors on anything but metadata, so
	// there is no subject filter to derive.
	q := selection{fields: fields.Everything(), labels: labels.Everything()}
	if opts.FieldSelector != nil {
		q.fields = opts.FieldSelector
	}
	if opts.LabelSelector != nil {
		q.labels = opts.LabelSelector
	}
	namespaces, err := s.namespaces(ctx)
	if err != nil {
		return nil, err
	}
	out := &v1.DeliverySummaryList{}
	for _, ns := range namespaces {
		sum, err := s.r.Summary(ctx, ns)
		if err != nil {
			return nil, unavailable(err)
		}
		if q.matches(sum.ObjectMeta, fields.Set{}) {
			out.Items = append(out.Items, *sum)
		}
	}
	return out, nil
}
