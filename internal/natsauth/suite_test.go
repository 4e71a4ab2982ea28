package natsauth_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/natsauth/natsauthtest"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
)

// The suite runs a real API server (TokenReview, SubjectAccessReview and
// RBAC are its own) and a real nats-server configured with the
// ServerConfig Herald ships, with the manager's callout serving it.
var (
	k8s     client.Client
	cs      *kubernetes.Clientset
	natsURL string
	keys    natsauth.Keys
	callout *natsauth.Callout
	// admin is the manager's connection: the callout's auth user.
	admin   *nats.Conn
	adminJS jetstream.JetStream
)

func TestNATSAuth(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	RunSpecs(t, "natsauth")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	env, err := testenv.ControlPlane()
	Expect(err).NotTo(HaveOccurred())
	cfg, err := env.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(env.Stop)
	k8s, err = client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	cs, err = kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())

	srv, err := natsauthtest.Start(GinkgoT().TempDir(), k8s, []string{"herald-read/apiserver"},
		zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(srv.Close)
	natsURL, keys, callout, admin, adminJS = srv.URL, srv.Keys, srv.Callout, srv.Admin, srv.AdminJS

	// The shipped producer ClusterRole, as the installer applies it.
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "producer_role.yaml"))
	Expect(err).NotTo(HaveOccurred())
	var role rbacv1.ClusterRole
	Expect(yaml.Unmarshal(b, &role)).To(Succeed())
	producerRole = role.Name
	Expect(k8s.Create(ctx, &role)).To(Succeed())
})

var producerRole string

// tenant is a namespace with Herald's streams, an endpoint's consumer, the
// dispatcher's ServiceAccount, a producer bound to herald-producer and a
// ServiceAccount with no Herald rights.
type tenant struct{ ns string }

func newTenant(ctx context.Context, ns string) *tenant {
	GinkgoHelper()
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	for _, sa := range []string{natsauth.DispatcherServiceAccount, "billing", "nobody"} {
		Expect(k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}})).To(Succeed())
	}
	Expect(k8s.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "billing-publishes", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: producerRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "billing", Namespace: ns}},
	})).To(Succeed())
	Expect(streams.EnsureNamespace(ctx, adminJS, streams.DefaultLimits(), ns)).To(Succeed())
	return &tenant{ns: ns}
}

// tokenTTL is how long the suite's tokens live.
const tokenTTL = 10 * time.Minute

// token is a ServiceAccount token as the kubelet projects it.
func (t *tenant) token(ctx context.Context, sa, audience string) string {
	GinkgoHelper()
	tr, err := cs.CoreV1().ServiceAccounts(t.ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To(int64(tokenTTL.Seconds()))},
	}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	return tr.Status.Token
}

// conn connects with a token, as Herald's clients do, and collects the
// asynchronous errors (permission violations) the server sends.
type conn struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	errs chan error
}

func (t *tenant) connect(ctx context.Context, sa string) *conn {
	GinkgoHelper()
	c, err := t.dial(t.token(ctx, sa, natsauth.DefaultAudience))
	Expect(err).NotTo(HaveOccurred())
	return c
}

func (t *tenant) dial(token string) (*conn, error) {
	c := &conn{errs: make(chan error, 100)}
	nc, err := nats.Connect(natsURL, nats.Token(token), nats.CustomInboxPrefix(natsauth.TokenInbox(t.ns, token)),
		nats.MaxReconnects(0), nats.Timeout(5*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		}))
	if err != nil {
		return nil, err
	}
	DeferCleanup(nc.Close)
	c.nc = nc
	c.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(2*time.Second))
	return c, err
}

func discard() logr.Logger { return logr.Discard() }
