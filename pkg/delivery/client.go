// Package delivery is a small typed client of Herald's delivery API
// (delivery.herald.dev/v1alpha1), for apps that show their users where a
// change stands ("sync pending / sent / retrying / failed"). It talks to
// the cluster's API server like any Kubernetes client, with the app's own
// identity, so RBAC decides what it sees: a ServiceAccount with view in
// its namespace reads that namespace's deliveries.
//
//	c, err := delivery.NewForConfig(restConfig)
//	ds, err := c.EventStatus(ctx, "shop", "evt_123")
//	for _, d := range ds { fmt.Println(d.Spec.Endpoint, d.Status.Phase) }
package delivery

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// Client reads webhookdeliveries, deadletters and deliverysummaries.
type Client struct {
	rc rest.Interface
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := v1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// NewForConfig is a client for the cluster cfg points at.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &v1.SchemeGroupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("delivery API client: %w", err)
	}
	return &Client{rc: rc}, nil
}

// Name is the object name of one event's delivery (or dead letter) at
// one endpoint.
func Name(eventID, endpoint string) string { return eventID + "." + endpoint }

func (c *Client) get(ctx context.Context, namespace, resource, name string, into runtime.Object) error {
	return c.rc.Get().Namespace(namespace).Resource(resource).Name(name).Do(ctx).Into(into)
}

func (c *Client) list(ctx context.Context, namespace, resource string, opts metav1.ListOptions, into runtime.Object) error {
	return c.rc.Get().Namespace(namespace).Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(into)
}

// Delivery is one event's delivery at one endpoint, with its history.
func (c *Client) Delivery(ctx context.Context, namespace, eventID, endpoint string) (*v1.WebhookDelivery, error) {
	d := &v1.WebhookDelivery{}
	return d, c.get(ctx, namespace, "webhookdeliveries", Name(eventID, endpoint), d)
}

// Deliveries lists a namespace's deliveries ("" for all the caller may
// see), newest first; opts.FieldSelector takes eventID, endpoint and
// phase, opts.Limit and opts.Continue page.
func (c *Client) Deliveries(ctx context.Context, namespace string, opts metav1.ListOptions) (*v1.WebhookDeliveryList, error) {
	l := &v1.WebhookDeliveryList{}
	return l, c.list(ctx, namespace, "webhookdeliveries", opts, l)
}

// EventStatus is where one event stands at every endpoint: the app's
// "sync status" of one change.
func (c *Client) EventStatus(ctx context.Context, namespace, eventID string) ([]v1.WebhookDelivery, error) {
	var out []v1.WebhookDelivery
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector(v1.FieldEventID, eventID).String(), Limit: 500}
	for {
		l, err := c.Deliveries(ctx, namespace, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, l.Items...)
		if opts.Continue = l.Continue; opts.Continue == "" {
			return out, nil
		}
	}
}

// DeadLetter is one dead letter with its payload and history.
func (c *Client) DeadLetter(ctx context.Context, namespace, eventID, endpoint string) (*v1.DeadLetter, error) {
	d := &v1.DeadLetter{}
	return d, c.get(ctx, namespace, "deadletters", Name(eventID, endpoint), d)
}

// DeadLetters lists dead letters; opts.FieldSelector takes eventID,
// endpoint and reason.
func (c *Client) DeadLetters(ctx context.Context, namespace string, opts metav1.ListOptions) (*v1.DeadLetterList, error) {
	l := &v1.DeadLetterList{}
	return l, c.list(ctx, namespace, "deadletters", opts, l)
}

// Summary counts a namespace's retrying and failed deliveries by endpoint
// and status code.
func (c *Client) Summary(ctx context.Context, namespace string) (*v1.DeliverySummary, error) {
	s := &v1.DeliverySummary{}
	return s, c.get(ctx, namespace, "deliverysummaries", v1.SummaryName, s)
}

// Summaries lists the summaries of a namespace, or ("") of every
// namespace the caller may see.
func (c *Client) Summaries(ctx context.Context, namespace string, opts metav1.ListOptions) (*v1.DeliverySummaryList, error) {
	l := &v1.DeliverySummaryList{}
	return l, c.list(ctx, namespace, "deliverysummaries", opts, l)
}

// Table is the server's table of a list, as kubectl prints it.
func (c *Client) Table(ctx context.Context, namespace, resource string, opts metav1.ListOptions) (*metav1.Table, error) {
	t := &metav1.Table{}
	res := c.rc.Get().Namespace(namespace).Resource(resource).VersionedParams(&opts, metav1.ParameterCodec).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx)
	// Error, not Raw's error: it decodes the server's Status (Forbidden,
	// with its message) where Raw has only "unknown".
	if err := res.Error(); err != nil {
		return nil, err
	}
	b, err := res.Raw()
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, t); err != nil {
		return nil, fmt.Errorf("decoding the table of %s: %w", resource, err)
	}
	return t, nil
}
