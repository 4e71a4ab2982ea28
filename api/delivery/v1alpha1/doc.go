// Package v1alpha1 is Herald's delivery API, delivery.herald.dev/v1alpha1:
// the delivery log and the dead letters as read-only Kubernetes
// resources, served by `herald apiserver` behind the cluster's
// aggregation layer. The objects are never stored in etcd; each read is
// answered from NATS.
//
// Apps import this package for the types; pkg/delivery is a small typed
// client over them.
//
// There is no +groupName marker on purpose: controller-gen would make a
// CRD of these types, and they must not be one.
//
// +kubebuilder:object:generate=true
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=dev.herald.delivery.v1alpha1
package v1alpha1
