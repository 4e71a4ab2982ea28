// Package apiserver serves the delivery API (delivery.herald.dev) as an
// aggregated API server: kube-apiserver authenticates every request and
// proxies it here, this server asks the cluster whether the user may
// (SubjectAccessReview), and answers from NATS through deliverylog. It
// stores nothing, so any number of replicas answer alike.
package apiserver

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

var (
	// Scheme knows the delivery API's types, external only: they are
	// read, never written, so there is no internal version to convert to.
	Scheme = runtime.NewScheme()
	// Codecs encode them.
	Codecs = serializer.NewCodecFactory(Scheme)
)

// fieldLabels are the field selectors each kind serves, by their short
// names and the paths they stand for.
var fieldLabels = map[string]map[string]string{
	"WebhookDelivery": {v1.FieldEventID: "spec.eventID", v1.FieldEndpoint: "spec.endpoint", v1.FieldPhase: "status.phase"},
	"DeadLetter":      {v1.FieldEventID: "spec.eventID", v1.FieldEndpoint: "spec.endpoint", v1.FieldReason: "status.reason"},
	"DeliverySummary": {},
}

func init() {
	if err := v1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	// Options and status objects of meta/v1, unversioned.
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	if err := Scheme.SetVersionPriority(v1.SchemeGroupVersion); err != nil {
		panic(err)
	}
	for kind, labels := range fieldLabels {
		if err := Scheme.AddFieldLabelConversionFunc(v1.SchemeGroupVersion.WithKind(kind), convertFieldLabel(labels)); err != nil {
			panic(err)
		}
	}
}

// convertFieldLabel accepts a kind's short field names and their paths
// (spec.eventID for eventID) and answers with the short name, which is
// what the storage matches on; anything else is refused with the list of
// what is served.
func convertFieldLabel(labels map[string]string) func(label, value string) (string, string, error) {
	return func(label, value string) (string, string, error) {
		switch label {
		case "metadata.name", "metadata.namespace":
			return label, value, nil
		}
		for short, path := range labels {
			if label == short || label == path {
				return short, value, nil
			}
		}
		served := []string{"metadata.name", "metadata.namespace"}
		for short := range labels {
			served = append(served, short)
		}
		slices.Sort(served)
		return "", "", fmt.Errorf("field label not supported: %s (served: %v)", label, served)
	}
}
