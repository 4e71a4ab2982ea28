package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

// stalledError is a failure a person has to fix (a missing Secret, a
// malformed key, a missing RetryPolicy). Retrying does not help, so the
// reconcilers report it as Stalled and wait for a watch event instead of
// backing off.
type stalledError struct {
	Reason  string
	Message string
	err     error
}

func (e *stalledError) Error() string { return e.Message }
func (e *stalledError) Unwrap() error { return e.err }

func stalled(reason, msg string, err error) error {
	return &stalledError{Reason: reason, Message: msg, err: err}
}

// asStalled reports whether err carries a Stalled reason.
func asStalled(err error) (*stalledError, bool) {
	var s *stalledError
	ok := errors.As(err, &s)
	return s, ok
}

// resolved is what an endpoint references, read from the API.
type resolved struct {
	SecretData map[string][]byte
	// SecretVersion is the Secret's resourceVersion, so callers can tell a
	// rotation from a no-op.
	SecretVersion string
	// Headers are the spec.headersFrom values by header name. They go to
	// the dispatcher only: never into status, Events, logs or errors.
	Headers map[string]string
	// HeaderSecretVersions lists the headersFrom Secrets' resourceVersions
	// (name=version, sorted), so a rotated token changes the fingerprint.
	HeaderSecretVersions string
	// Policy is nil when the endpoint uses the built-in default.
	Policy        *v1.RetryPolicySpec
	PolicyVersion string
}

// secretReader reads signing Secrets without caching every Secret of the
// cluster in memory. When a metadata cache is available (the manager
// watches Secrets as metadata only), a Secret's data is fetched from the
// API server only when its resourceVersion moved; otherwise (the
// namespaced dispatcher, whose Role can only `get` the referenced names)
// every read goes to the API server.
type secretReader struct {
	api  client.Reader
	meta client.Reader // may be nil

	mu   sync.Mutex
	data map[types.NamespacedName]cachedSecret
}

type cachedSecret struct {
	version string
	data    map[string][]byte
}

func newSecretReader(api, meta client.Reader) *secretReader {
	return &secretReader{api: api, meta: meta, data: map[types.NamespacedName]cachedSecret{}}
}

// get returns the Secret's data and resourceVersion. NotFound comes back
// as an apierrors NotFound error.
func (r *secretReader) get(ctx context.Context, key types.NamespacedName) (map[string][]byte, string, error) {
	if r.meta != nil {
		var m metav1.PartialObjectMetadata
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
		if err := r.meta.Get(ctx, key, &m); err != nil {
			if apierrors.IsNotFound(err) {
				r.forget(key)
			}
			return nil, "", err
		}
		r.mu.Lock()
		c, ok := r.data[key]
		r.mu.Unlock()
		if ok && c.version == m.ResourceVersion {
			return c.data, c.version, nil
		}
	}
	var s corev1.Secret
	if err := r.api.Get(ctx, key, &s); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(key)
		}
		return nil, "", err
	}
	if r.meta != nil {
		r.mu.Lock()
		r.data[key] = cachedSecret{version: s.ResourceVersion, data: s.Data}
		r.mu.Unlock()
	}
	return s.Data, s.ResourceVersion, nil
}

func (r *secretReader) forget(key types.NamespacedName) {
	r.mu.Lock()
	delete(r.data, key)
	r.mu.Unlock()
}

// resolveReferences reads the endpoint's signing Secret, its headersFrom
// Secrets and its RetryPolicy, all from
// the endpoint's own namespace (the API has no namespace field on the
// references, and this function never takes one). Problems a person must
// fix come back as a stalledError; anything else is transient.
func resolveReferences(ctx context.Context, secrets *secretReader, c client.Reader, ep *v1.WebhookEndpoint) (*resolved, error) {
	out := &resolved{}
	secretKey := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Spec.SigningSecretRef.Name}
	data, version, err := secrets.get(ctx, secretKey)
	switch {
	case apierrors.IsNotFound(err):
		return nil, stalled(v1.ReasonSecretMissing,
			fmt.Sprintf("signing Secret %q not found in namespace %s: create it with a data key whose value is whsec_<base64>", secretKey.Name, ep.Namespace), err)
	case err != nil:
		return nil, fmt.Errorf("reading signing Secret %s: %w", secretKey, err)
	}
	// Validate with the dispatcher's own parser so the operator and the
	// dispatcher can never disagree; its errors name keys, never values.
	if _, err := dispatcher.ParseSecretData(data); err != nil {
		return nil, stalled(v1.ReasonSecretInvalid, fmt.Sprintf("signing Secret %q: %v", secretKey.Name, err), err)
	}
	out.SecretData, out.SecretVersion = data, version

	if err := resolveHeaderSecrets(ctx, secrets, ep, out); err != nil {
		return nil, err
	}

	if ref := ep.Spec.RetryPolicyRef; ref != nil {
		var p v1.RetryPolicy
		err := c.Get(ctx, types.NamespacedName{Namespace: ep.Namespace, Name: ref.Name}, &p)
		switch {
		case apierrors.IsNotFound(err):
			return nil, stalled(v1.ReasonPolicyMissing,
				fmt.Sprintf("RetryPolicy %q not found in namespace %s: create it or remove spec.retryPolicyRef to use the default schedule", ref.Name, ep.Namespace), err)
		case err != nil:
			return nil, fmt.Errorf("reading RetryPolicy %s/%s: %w", ep.Namespace, ref.Name, err)
		}
		out.Policy = &p.Spec
		out.PolicyVersion = p.ResourceVersion
	}
	return out, nil
}

// resolveHeaderSecrets reads each spec.headersFrom key into out.Headers,
// every Secret once. Errors name the Secret, the key and the header, never
// a value.
func resolveHeaderSecrets(ctx context.Context, secrets *secretReader, ep *v1.WebhookEndpoint, out *resolved) error {
	if len(ep.Spec.HeadersFrom) == 0 {
		return nil
	}
	type read struct {
		data    map[string][]byte
		version string
	}
	seen := map[string]read{}
	out.Headers = make(map[string]string, len(ep.Spec.HeadersFrom))
	for i, h := range ep.Spec.HeadersFrom {
		ref := h.SecretKeyRef
		r, ok := seen[ref.Name]
		if !ok {
			key := types.NamespacedName{Namespace: ep.Namespace, Name: ref.Name}
			data, version, err := secrets.get(ctx, key)
			switch {
			case apierrors.IsNotFound(err):
				return stalled(v1.ReasonHeaderSecretMissing,
					fmt.Sprintf("Secret %q named by spec.headersFrom[%d] (header %s) not found in namespace %s: create it with data key %q",
						ref.Name, i, h.Name, ep.Namespace, ref.Key), err)
			case err != nil:
				return fmt.Errorf("reading header Secret %s: %w", key, err)
			}
			r = read{data: data, version: version}
			seen[ref.Name] = r
		}
		v, ok := r.data[ref.Key]
		if !ok {
			return stalled(v1.ReasonHeaderSecretMissing,
				fmt.Sprintf("Secret %q has no data key %q, named by spec.headersFrom[%d] (header %s): add the key or fix secretKeyRef.key",
					ref.Name, ref.Key, i, h.Name), nil)
		}
		if err := dispatcher.CheckHeaderValue(v); err != nil {
			return stalled(v1.ReasonHeaderSecretInvalid,
				fmt.Sprintf("Secret %q data key %q, named by spec.headersFrom[%d] (header %s): %v",
					ref.Name, ref.Key, i, h.Name, err), err)
		}
		out.Headers[h.Name] = string(v)
	}
	versions := make([]string, 0, len(seen))
	for name, r := range seen {
		versions = append(versions, name+"="+r.version)
	}
	slices.Sort(versions)
	out.HeaderSecretVersions = strings.Join(versions, ",")
	return nil
}
