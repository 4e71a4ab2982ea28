//go:build e2e

package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/testenv"
)

// NATS in the e2e cluster runs as in production: auth callout served by
// the manager (operator mode, an account per namespace) and TLS with a
// certificate from the cluster's CA, which every pod already trusts
// (the ServiceAccount mount's ca.crt).
const natsServerName = "nats.nats.svc"

// natsSecrets is what the suite makes once: the keys, the server's
// certificate, and the CA pool its own clients verify NATS with.
type natsSecrets struct {
	keys            natsauth.Keys
	certPEM, keyPEM []byte
	caPool          *x509.CertPool
}

var natsSec natsSecrets

// makeNATSSecrets signs NATS's certificate with the cluster's CA (the
// PKI of hack/cluster, or E2E_CLUSTER_PKI) and makes Herald's keys.
func makeNATSSecrets() {
	GinkgoHelper()
	pki := envOr("E2E_CLUSTER_PKI", filepath.Join(repoRoot, "bin", "cluster", "state", "pki"))
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	Expect(err).NotTo(HaveOccurred(), "the cluster's CA (set E2E_CLUSTER_PKI for a cluster not made by make cluster-up)")
	caKeyPEM, err := os.ReadFile(filepath.Join(pki, "ca.key"))
	Expect(err).NotTo(HaveOccurred())
	ca, err := testenv.LoadCA(caPEM, caKeyPEM)
	Expect(err).NotTo(HaveOccurred())
	natsSec.certPEM, natsSec.keyPEM, err = ca.Issue(x509.ExtKeyUsageServerAuth, 7*24*time.Hour,
		[]string{natsServerName, "nats.nats.svc.cluster.local", "nats.nats", "nats"})
	Expect(err).NotTo(HaveOccurred())
	natsSec.caPool = ca.Pool()

	natsSec.keys, err = natsauth.NewKeys()
	Expect(err).NotTo(HaveOccurred())
}

// natsConfig is the server's configuration: TLS, JetStream, and the auth
// block Herald ships (natsauth.Keys.ServerConfig, as herald nats-keys
// writes it).
func natsConfig() string {
	GinkgoHelper()
	auth, err := natsSec.keys.ServerConfig("/data/accounts")
	Expect(err).NotTo(HaveOccurred())
	return fmt.Sprintf(`port: 4222
http_port: 8222
tls {
  cert_file: "/etc/nats/tls/tls.crt"
  key_file: "/etc/nats/tls/tls.key"
}
jetstream {
  store_dir: "/data"
  # Each namespace's streams reserve their budgets; the test node's disk
  # is shared, so the server may promise more than it has.
  max_file_store: 1T
}
%s`, auth)
}

// natsSecretsManifest holds the server's configuration and certificate,
// and the manager's keys Secret, which the installed manager mounts.
func natsSecretsManifest() string {
	GinkgoHelper()
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimRight(string(b), "\n"), "\n", "\n    ")
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: nats
---
apiVersion: v1
kind: Secret
metadata:
  name: nats-config
  namespace: nats
stringData:
  nats.conf: |
%s
  tls.crt: |
%s
  tls.key: |
%s
---
apiVersion: v1
kind: Namespace
metadata:
  name: herald-system
---
apiVersion: v1
kind: Secret
metadata:
  name: herald-nats-keys
  namespace: herald-system
stringData:
%s`, indent([]byte(natsConfig())), indent(natsSec.certPEM), indent(natsSec.keyPEM), keysData())
}

// keysData is the keys Secret's stringData, one seed per file.
func keysData() string {
	var b strings.Builder
	for i, seed := range natsSec.keys.Seeds() {
		fmt.Fprintf(&b, "  %s: %q\n", natsauth.KeyFiles[i], *seed)
	}
	return b.String()
}

// natsOptions connect the suite as the manager does: its user, TLS
// verified against the cluster's CA for NATS's Service name (the suite
// dials a port-forward on 127.0.0.1).
func natsOptions() []nats.Option {
	GinkgoHelper()
	return []nats.Option{natsSec.keys.ManagerOption(), nats.Secure(&tls.Config{ServerName: natsServerName, RootCAs: natsSec.caPool, MinVersion: tls.VersionTLS12})}
}

// tenantConn connects with a ServiceAccount token, as a tenant's pod
// does: TLS, the token, the namespace's inbox.
func tenantConn(ns, token string, errs chan error) (*nats.Conn, error) {
	return nats.Connect("nats://"+natsAddr, nats.Token(token), nats.CustomInboxPrefix(natsauth.TokenInbox(ns, token)),
		nats.Secure(&tls.Config{ServerName: natsServerName, RootCAs: natsSec.caPool, MinVersion: tls.VersionTLS12}),
		nats.MaxReconnects(0), nats.Timeout(5*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
}

// jetstreamOn opens JetStream on a tenant's connection.
func jetstreamOn(c *nats.Conn) (jetstream.JetStream, error) { return jetstream.New(c) }
