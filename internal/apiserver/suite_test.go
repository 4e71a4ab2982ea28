package apiserver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/herald-dev/herald/internal/apiserver"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestAPIServer(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Delivery API Suite")
}

const (
	heraldNS   = "herald-system"
	apiService = "v1alpha1.delivery.herald.dev"
	heraldUser = "system:serviceaccount:herald-system:herald-apiserver"
)

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
	dir := GinkgoT().TempDir()
	var err error
	env, err = testenv.ControlPlane()
	Expect(err).NotTo(HaveOccurred())
	frontProxy, err = testenv.ConfigureAggregation(env, dir)
	Expect(err).NotTo(HaveOccurred())
	cfg, err = env.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(env.Stop)
	k8s, err = client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	Expect(err).NotTo(HaveOccurred())

	By("installing the delivery API's RBAC and APIService from config/default")
	Expect(testenv.Install(ctx, k8s, func(u *unstructured.Unstructured) bool {
		switch u.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "APIService":
			return true
		}
		return false
	})).To(Succeed())
	Expect(testenv.AggregateClusterRoles(ctx, k8s)).To(Succeed())

	By("starting NATS")
	ns, err := testenv.NATS(filepath.Join(dir, "nats"))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())

	By("starting herald apiserver as its ServiceAccount, on 127.0.0.1")
	user, err := env.AddUser(envtest.User{Name: heraldUser}, cfg)
	Expect(err).NotTo(HaveOccurred())
	kubeconfig, err := user.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfigFile := filepath.Join(dir, "herald-apiserver.kubeconfig")
	Expect(os.WriteFile(kubeconfigFile, kubeconfig, 0o600)).To(Succeed())
	tls := apiserver.ServingTLS{Namespace: heraldNS, Secret: "herald-apiserver-tls", Service: "herald-apiserver", APIService: apiService}
	tls.Core, err = kubernetes.NewForConfig(user.Config())
	Expect(err).NotTo(HaveOccurred())
	tls.Dynamic, err = dynamic.NewForConfig(user.Config())
	Expect(err).NotTo(HaveOccurred())
	cert, key, err := tls.Ensure(ctx)
	Expect(err).NotTo(HaveOccurred())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	heraldAddr = ln.Addr().String()
	o := apiserver.NewOptions()
	o.SecureServing.Listener = ln
	o.SecureServing.BindAddress = net.ParseIP("127.0.0.1")
	o.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	Expect(o.UseCertificate(cert, key)).To(Succeed())
	o.Authentication.RemoteKubeConfigFile = kubeconfigFile
	o.Authorization.RemoteKubeConfigFile = kubeconfigFile
	// A refusal is cached for 10 s by default; specs bind and check.
	o.Authorization.DenyCacheTTL = time.Millisecond
	Expect(o.Validate()).To(Succeed())
	srv, err := apiserver.New(o, &deliverylog.Reader{JS: js})
	Expect(err).NotTo(HaveOccurred())
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.PrepareRun().RunWithContext(runCtx) }()
	DeferCleanup(func() { stop(); <-done })

	Expect(testenv.ServeLocal(ctx, k8s, apiService, ln.Addr().(*net.TCPAddr).Port)).To(Succeed())
	Eventually(func(g Gomega) {
		ok, why, err := testenv.APIServiceAvailable(ctx, k8s, apiService)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ok).To(BeTrue(), why)
	}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
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
