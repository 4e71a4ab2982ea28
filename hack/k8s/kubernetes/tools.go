//go:build tools

// Package kubernetes pins the Kubernetes components Herald runs: the
// kube-apiserver that envtest and `make dev` use, and the node components
// of the e2e cluster (hack/cluster). It is a module of its own so that
// k8s.io/kubernetes never enters Herald's dependency graph.
package kubernetes

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
