package apiserver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/herald-dev/herald/internal/apiserver/apiservertest"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestAPIServer(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Delivery API Suite")
}

var (
	env        *envtest.Environment
	cfg        *rest.Config
	k8s        client.Client
	js         jetstream.JetStream
	frontProxy *testenv.FrontProxy
	// heraldAddr is where the delivery API server listens, for requests
	// that skip kube-apiserver.
	heraldAddr string
)

// The suite runs one delivery API server (genericapiserver keeps global
// state) behind a real kube-apiserver with its aggregation layer on, and
// a real NATS; the shipped RBAC and APIService are installed as a user
// installs them.
var _ = BeforeSuite(func(ctx SpecContext) {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	e, stop, err := apiservertest.StartEnv(ctx, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(stop)
	env, cfg, k8s, js, frontProxy, heraldAddr = e.Env, e.Config, e.Client, e.JS, e.FrontProxy, e.Addr
}, NodeTimeout(3*time.Minute))

// viewer is a user with the built-in view role in namespaces, and a
// kubeconfig file for kubectl.
func viewer(ctx context.Context, name string, namespaces ...string) (*rest.Config, string) {
	GinkgoHelper()
	u, err := env.AddUser(envtest.User{Name: name}, cfg)
	Expect(err).NotTo(HaveOccurred())
	for _, ns := range namespaces {
		ensureNamespace(ctx, ns)
		Expect(k8s.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-view", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: name}},
		})).To(Succeed())
	}
	kc, err := u.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	f := filepath.Join(GinkgoT().TempDir(), name+".kubeconfig")
	Expect(os.WriteFile(f, kc, 0o600)).To(Succeed())
	return u.Config(), f
}

func ensureNamespace(ctx context.Context, ns string) {
	GinkgoHelper()
	err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
}
