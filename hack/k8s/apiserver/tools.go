//go:build tools

// Package apiserver pins the kube-apiserver that envtest and `make dev` run.
// It is a module of its own so that k8s.io/kubernetes never enters Herald's
// dependency graph.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
