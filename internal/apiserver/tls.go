package apiserver

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
)

// ServingTLS keeps the server's certificate in a Secret all replicas
// share, and the APIService's caBundle in step with it, so kube-apiserver
// verifies the server without cert-manager and without
// insecureSkipTLSVerify. The certificate (from client-go's certutil: a
// CA of its own and a serving certificate for the Service's names, one
// year) is made by the first replica that finds none, and again by the
// first to start within renewBefore of its expiry; the caBundle then
// holds the new CA and the previous one, so replicas not restarted yet
// are still trusted. A replica reads the certificate when it starts, so
// the Deployment must restart within the renewal window (90 days).
type ServingTLS struct {
	Core    kubernetes.Interface
	Dynamic dynamic.Interface
	// Namespace, Secret and Service are where the server runs: the
	// certificate is for <Service>.<Namespace>.svc.
	Namespace, Secret, Service string
	// APIService is the name of the APIService to keep the caBundle of.
	APIService string
}

const renewBefore = 90 * 24 * time.Hour

var apiServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// Ensure returns the serving certificate and key, making or renewing them
// as needed, after setting the APIService's caBundle to their CA.
func (t ServingTLS) Ensure(ctx context.Context) (certPEM, keyPEM []byte, err error) {
	secrets := t.Core.CoreV1().Secrets(t.Namespace)
	for range 5 {
		s, err := secrets.Get(ctx, t.Secret, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: t.Secret, Namespace: t.Namespace}, Type: corev1.SecretTypeTLS}
			if err := t.fill(s); err != nil {
				return nil, nil, err
			}
			if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				continue // another replica made one first: use it
			} else if err != nil {
				return nil, nil, fmt.Errorf("creating Secret %s/%s: %w", t.Namespace, t.Secret, err)
			}
		case err != nil:
			return nil, nil, fmt.Errorf("reading Secret %s/%s: %w", t.Namespace, t.Secret, err)
		case !fresh(s.Data[corev1.TLSCertKey]):
			previous := s.Data["ca.crt"]
			if err := t.fill(s); err != nil {
				return nil, nil, err
			}
			// Replicas still serving the old certificate stay trusted
			// until they restart: the bundle keeps the previous CA.
			if b, _ := pem.Decode(previous); b != nil {
				s.Data["ca.crt"] = append(s.Data["ca.crt"], pem.EncodeToMemory(b)...)
			}
			if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); apierrors.IsConflict(err) {
				continue
			} else if err != nil {
				return nil, nil, fmt.Errorf("renewing Secret %s/%s: %w", t.Namespace, t.Secret, err)
			}
		}
		if err := t.setCABundle(ctx, s.Data["ca.crt"]); err != nil {
			return nil, nil, err
		}
		return s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey], nil
	}
	return nil, nil, fmt.Errorf("the Secret %s/%s keeps changing under this server", t.Namespace, t.Secret)
}

func (t ServingTLS) fill(s *corev1.Secret) error {
	host := t.Service + "." + t.Namespace + ".svc"
	chain, key, err := certutil.GenerateSelfSignedCertKey(host, nil, []string{t.Service, t.Service + "." + t.Namespace})
	if err != nil {
		return fmt.Errorf("generating the serving certificate: %w", err)
	}
	// The chain is the serving certificate, then the CA that signed it.
	var blocks [][]byte
	for rest := chain; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		blocks = append(blocks, pem.EncodeToMemory(b))
	}
	if len(blocks) < 2 {
		return fmt.Errorf("generating the serving certificate: no CA in the chain")
	}
	s.Data = map[string][]byte{corev1.TLSCertKey: blocks[0], corev1.TLSPrivateKeyKey: key, "ca.crt": blocks[len(blocks)-1]}
	return nil
}

// fresh reports whether a certificate is good for renewBefore more.
func fresh(certPEM []byte) bool {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	return err == nil && time.Until(c.NotAfter) > renewBefore
}

func (t ServingTLS) setCABundle(ctx context.Context, ca []byte) error {
	svc, err := t.Dynamic.Resource(apiServices).Get(ctx, t.APIService, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading APIService %s: %w", t.APIService, err)
	}
	current, _, _ := unstructured.NestedString(svc.Object, "spec", "caBundle")
	if b, err := base64.StdEncoding.DecodeString(current); err == nil && bytes.Equal(b, ca) {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"caBundle": ca}})
	if _, err := t.Dynamic.Resource(apiServices).Patch(ctx, t.APIService, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("setting the caBundle of APIService %s: %w", t.APIService, err)
	}
	return nil
}
