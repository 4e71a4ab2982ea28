// Package v1alpha1 contains the Herald API: WebhookEndpoint and RetryPolicy.
//
// +kubebuilder:object:generate=true
// +groupName=webhooks.herald.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is group version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "webhooks.herald.dev", Version: "v1alpha1"}

	// SchemeBuilder is used to add go types to the GroupVersionKind scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// DispatcherLabel on a Namespace chooses where its endpoints' deliveries
// run when the operator dispatches with Deployments: DispatcherDedicated
// (the default, a Deployment of the namespace's own) or DispatcherShared
// (the shared dispatcher pool, which serves many namespaces in one
// process, each with its own NATS identity and egress guard).
const (
	DispatcherLabel     = "webhooks.herald.dev/dispatcher"
	DispatcherDedicated = "dedicated"
	DispatcherShared    = "shared"
)
