package testenv

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// FrontProxy is the aggregation layer's client identity: kube-apiserver
// presents its certificate to aggregated API servers, with the user in
// request headers they trust because of the CA.
type FrontProxy struct {
	CA                *CA
	CertFile, KeyFile string
}

// ConfigureAggregation turns on kube-apiserver's aggregation layer in env
// (call it before env.Start): a front-proxy CA and client certificate in
// dir, and the request-header flags kube-apiserver publishes to
// kube-system/extension-apiserver-authentication for aggregated servers.
// Routing stays on Services (no --enable-aggregator-routing): see
// ServeLocal.
func ConfigureAggregation(env *envtest.Environment, dir string) (*FrontProxy, error) {
	ca, err := NewCA()
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue(x509.ExtKeyUsageClientAuth, 24*time.Hour, []string{"front-proxy-client"})
	if err != nil {
		return nil, err
	}
	fp := &FrontProxy{CA: ca, CertFile: filepath.Join(dir, "front-proxy-client.crt"), KeyFile: filepath.Join(dir, "front-proxy-client.key")}
	caFile := filepath.Join(dir, "front-proxy-ca.crt")
	for f, b := range map[string][]byte{caFile: ca.PEM, fp.CertFile: cert, fp.KeyFile: key} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f, err)
		}
	}
	a := env.ControlPlane.GetAPIServer().Configure()
	a.Set("requestheader-client-ca-file", caFile)
	a.Set("requestheader-allowed-names", "front-proxy-client")
	a.Set("requestheader-username-headers", "X-Remote-User")
	a.Set("requestheader-group-headers", "X-Remote-Group")
	a.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
	a.Set("requestheader-uid-headers", "X-Remote-Uid")
	a.Set("proxy-client-cert-file", fp.CertFile)
	a.Set("proxy-client-key-file", fp.KeyFile)
	return fp, nil
}

var apiServiceGVK = schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"}

// ServeLocal points an installed APIService at a server on 127.0.0.1:port.
// kube-apiserver refuses loopback addresses in Endpoints and
// EndpointSlices, but dials the name of an ExternalName Service as it is:
// the Service becomes one for localhost, and the APIService's port the
// server's. TLS is still verified against the Service's DNS name
// (<service>.<namespace>.svc), so the server's certificate is the one it
// has in a cluster.
func ServeLocal(ctx context.Context, c client.Client, apiService string, port int) error {
	as := &unstructured.Unstructured{}
	as.SetGroupVersionKind(apiServiceGVK)
	if err := c.Get(ctx, client.ObjectKey{Name: apiService}, as); err != nil {
		return fmt.Errorf("reading APIService %s: %w", apiService, err)
	}
	name, _, _ := unstructured.NestedString(as.Object, "spec", "service", "name")
	ns, _, _ := unstructured.NestedString(as.Object, "spec", "service", "namespace")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
		Ports: []corev1.ServicePort{{Name: "https", Port: int32(port)}},
	}}
	if err := c.Create(ctx, svc); err != nil {
		return fmt.Errorf("creating Service %s/%s: %w", ns, name, err)
	}
	patch := client.MergeFrom(as.DeepCopy())
	if err := unstructured.SetNestedField(as.Object, int64(port), "spec", "service", "port"); err != nil {
		return err
	}
	return c.Patch(ctx, as, patch)
}

// APIServiceAvailable reports whether kube-apiserver has found the
// APIService's server answering, and if not, why.
func APIServiceAvailable(ctx context.Context, c client.Client, apiService string) (bool, string, error) {
	as := &unstructured.Unstructured{}
	as.SetGroupVersionKind(apiServiceGVK)
	if err := c.Get(ctx, client.ObjectKey{Name: apiService}, as); err != nil {
		return false, "", err
	}
	conds, _, _ := unstructured.NestedSlice(as.Object, "status", "conditions")
	for _, raw := range conds {
		if cond, ok := raw.(map[string]any); ok && cond["type"] == "Available" {
			return cond["status"] == "True", fmt.Sprint(cond["reason"], ": ", cond["message"]), nil
		}
	}
	return false, "no Available condition yet", nil
}

// AggregateClusterRoles does what kube-controller-manager's
// clusterrole-aggregation controller does, once: every ClusterRole with an
// aggregationRule (view, edit, admin) gets the rules of the roles its
// selectors match. envtest runs no controller manager, so without this
// `view` grants nothing.
func AggregateClusterRoles(ctx context.Context, c client.Client) error {
	var roles rbacv1.ClusterRoleList
	if err := c.List(ctx, &roles); err != nil {
		return fmt.Errorf("listing ClusterRoles: %w", err)
	}
	for i := range roles.Items {
		agg := &roles.Items[i]
		if agg.AggregationRule == nil {
			continue
		}
		var rules []rbacv1.PolicyRule
		for _, sel := range agg.AggregationRule.ClusterRoleSelectors {
			s, err := metav1.LabelSelectorAsSelector(&sel)
			if err != nil {
				return err
			}
			for _, r := range roles.Items {
				if r.Name != agg.Name && s.Matches(labels.Set(r.Labels)) {
					for _, rule := range r.Rules {
						if !slices.ContainsFunc(rules, func(x rbacv1.PolicyRule) bool { return equalRule(x, rule) }) {
							rules = append(rules, rule)
						}
					}
				}
			}
		}
		agg.Rules = rules
		if err := c.Update(ctx, agg); err != nil {
			return fmt.Errorf("aggregating ClusterRole %s: %w", agg.Name, err)
		}
	}
	return nil
}

func equalRule(a, b rbacv1.PolicyRule) bool {
	return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) &&
		slices.Equal(a.Verbs, b.Verbs) && slices.Equal(a.ResourceNames, b.ResourceNames) && slices.Equal(a.NonResourceURLs, b.NonResourceURLs)
}

// Install applies the objects of Herald's installer (config/default,
// rendered by kubectl kustomize) that keep selects, as shipped.
func Install(ctx context.Context, c client.Client, keep func(*unstructured.Unstructured) bool) error {
	out, err := exec.CommandContext(ctx, "kubectl", "kustomize", filepath.Join(RepoRoot(), "config", "default")).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("kubectl kustomize config/default: %w: %s", err, exit.Stderr)
		}
		return fmt.Errorf("kubectl kustomize config/default: %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("decoding the installer: %w", err)
		}
		if len(u.Object) == 0 || !keep(u) {
			continue
		}
		if err := c.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
}
