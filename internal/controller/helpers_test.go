package controller

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// Object builders, in the style of cert-manager's test/unit/gen.

type endpointOpt func(*v1.WebhookEndpoint)

func withEventTypes(t ...string) endpointOpt {
	return func(e *v1.WebhookEndpoint) { e.Spec.EventTypes = t }
}
func withSecret(name string) endpointOpt {
	return func(e *v1.WebhookEndpoint) { e.Spec.SigningSecretRef.Name = name }
}
func withPolicy(name string) endpointOpt {
	return func(e *v1.WebhookEndpoint) { e.Spec.RetryPolicyRef = &v1.LocalObjectReference{Name: name} }
}
func withSuspend(s bool) endpointOpt { return func(e *v1.WebhookEndpoint) { e.Spec.Suspend = s } }
func withWarnAfter(d time.Duration) endpointOpt {
	return func(e *v1.WebhookEndpoint) {
		e.Spec.Latency.Target = &metav1.Duration{Duration: d / 2}
		e.Spec.Latency.WarnAfter = &metav1.Duration{Duration: d}
	}
}

func newEndpoint(ns, name string, opts ...endpointOpt) *v1.WebhookEndpoint {
	e := &v1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.WebhookEndpointSpec{
			URL:              "http://127.0.0.1:8090/" + name,
			SigningSecretRef: v1.LocalObjectReference{Name: name + "-signing"},
		},
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func whsec() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

func newSecret(ns, name string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{"v1": []byte(whsec())},
	}
}

func newPolicy(ns, name string) *v1.RetryPolicy {
	return &v1.RetryPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.RetryPolicySpec{
			Schedule: []metav1.Duration{{Duration: time.Second}, {Duration: 5 * time.Second}},
			Window:   &metav1.Duration{Duration: time.Hour},
		},
	}
}

// newNamespace creates a fresh namespace per spec, so specs never share
// endpoints, consumers or dispatcher objects.
func newNamespace(prefix string) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

func create(objs ...client.Object) {
	GinkgoHelper()
	for _, o := range objs {
		Expect(k8sClient.Create(ctx, o)).To(Succeed())
	}
}

func getEndpoint(g Gomega, ns, name string) *v1.WebhookEndpoint {
	ep := &v1.WebhookEndpoint{}
	g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, ep)).To(Succeed())
	return ep
}

// condition returns "Status/Reason" of a condition, or "absent".
func condition(ep *v1.WebhookEndpoint, typ string) string {
	c := apimeta.FindStatusCondition(ep.Status.Conditions, typ)
	if c == nil {
		return "absent"
	}
	return string(c.Status) + "/" + c.Reason
}

func conditionMessage(ep *v1.WebhookEndpoint, typ string) string {
	if c := apimeta.FindStatusCondition(ep.Status.Conditions, typ); c != nil {
		return c.Message
	}
	return ""
}

// expectConditions waits until the endpoint's conditions are exactly these
// ("Type": "Status/Reason"; "absent" for kstatus conditions that must be gone).
func expectConditions(ns, name string, want map[string]string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		ep := getEndpoint(g, ns, name)
		for typ, w := range want {
			g.Expect(condition(ep, typ)).To(Equal(w), "condition %s; all: %+v", typ, ep.Status.Conditions)
		}
		g.Expect(ep.Status.ObservedGeneration).To(Equal(ep.Generation))
	}, eventually, poll).Should(Succeed())
}

func consumerInfo(ns, name string) (*jetstream.ConsumerInfo, error) {
	c, err := js.Consumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, name))
	if err != nil {
		return nil, err
	}
	return c.CachedInfo(), nil
}

func publish(ns, typ string) {
	GinkgoHelper()
	p, err := events.NewPublisher(js)
	Expect(err).NotTo(HaveOccurred())
	_, err = p.Publish(ctx, events.Event{
		ID: fmt.Sprintf("evt_%d", time.Now().UnixNano()), Namespace: ns, Type: typ, Key: "sub_1",
		Data: json.RawMessage(`{"plan":"pro"}`),
	})
	Expect(err).NotTo(HaveOccurred())
}

func writeHealth(ns, name string, h dispatcher.Health) {
	GinkgoHelper()
	h.UpdatedAt = time.Now()
	b, err := json.Marshal(h)
	Expect(err).NotTo(HaveOccurred())
	_, err = healthKV(ns).Put(ctx, streams.EndpointKey(ns, name), b)
	Expect(err).NotTo(HaveOccurred())
}

// versionKey is the key the dispatcher's version store writes for one
// ordering key of one endpoint: <namespace>.<endpoint>.<base64url(key)>.
func versionKey(ns, name, key string) string {
	return streams.EndpointKey(ns, name) + "." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// writeVersion records, as the dispatcher does after a delivery, that
// version v (stream sequence seq) of key was delivered to the endpoint.
func writeVersion(ns, name, key string, v int64, seq uint64) {
	GinkgoHelper()
	_, err := versionsKV(ns).Put(ctx, versionKey(ns, name, key), []byte(fmt.Sprintf("%d:%d", v, seq)))
	Expect(err).NotTo(HaveOccurred())
}

// eventReasons lists the reasons of the Kubernetes Events about an object.
func eventReasons(g Gomega, ns, name string) []string {
	var list eventsv1.EventList
	g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

func eventNotes(g Gomega, ns, name, reason string) string {
	var list eventsv1.EventList
	g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return strings.Join(notes, "\n")
}

func deleteAndWaitGone(o client.Object) {
	GinkgoHelper()
	Expect(k8sClient.Delete(ctx, o)).To(Succeed())
	Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), o))
	}, eventually, poll).Should(BeTrue())
}

// updateEndpoint changes an endpoint, retrying on the conflicts that the
// controller's own writes (finalizer, status) cause.
func updateEndpoint(ns, name string, mutate func(*v1.WebhookEndpoint)) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ep := &v1.WebhookEndpoint{}
		if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, ep); err != nil {
			return err
		}
		mutate(ep)
		return k8sClient.Update(ctx, ep)
	})).To(Succeed())
}
