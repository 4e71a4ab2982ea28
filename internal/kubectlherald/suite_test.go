package kubectlherald_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/herald-dev/herald/internal/apiserver/apiservertest"
	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/kubectlherald"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

func TestKubectlHerald(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "kubectl herald Suite")
}

var (
	env     *envtest.Environment
	cfg     *rest.Config
	k8s     client.Client
	js      jetstream.JetStream
	pub     *events.Publisher
	adminKC string
)

// The plugin runs against what a cluster has: a real kube-apiserver with
// the delivery API aggregated into it, NATS, and a manager delivering
// in-process with the replay controller, as `make dev` runs it.
var _ = BeforeSuite(func(ctx SpecContext) {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	e, stop, err := apiservertest.StartEnv(ctx, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(stop)
	env, cfg, k8s, js = e.Env, e.Config, e.Client, e.JS
	adminKC = kubeconfigOf(envtest.User{Name: "support-admin", Groups: []string{"system:masters"}})
	pub, err = events.NewPublisher(js)
	Expect(err).NotTo(HaveOccurred())

	startManager()
}, NodeTimeout(3*time.Minute))

// startManager runs the in-process manager's controllers, with the
// receivers on 127.0.0.1 allowed.
func startManager() {
	GinkgoHelper()
	mctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	DeferCleanup(func() { stop(); <-done })
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 testenv.Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{ByObject: controller.CacheByObject()},
	})
	Expect(err).NotTo(HaveOccurred())
	Expect(controller.SetupIndexes(mctx, mgr)).To(Succeed())
	guard := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	hw := controller.NewHealthWatcher(js, 200*time.Millisecond, nil)
	Expect(mgr.Add(hw)).To(Succeed())
	Expect((&controller.WebhookEndpointReconciler{
		Client: mgr.GetClient(), JS: js, Recorder: mgr.GetEventRecorder("herald-operator"),
		Mode: controller.DispatchInProcess, MinStatusWriteInterval: 200 * time.Millisecond,
		HealthEvents: hw.Events(), Egress: guard,
	}).SetupWithManager(mgr)).To(Succeed())
	Expect((&controller.RetryPolicyReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr)).To(Succeed())
	Expect((&controller.WebhookReplayReconciler{Client: mgr.GetClient(), JS: js, Recorder: mgr.GetEventRecorder("herald-replay"), Poll: 250 * time.Millisecond}).SetupWithManager(mgr)).To(Succeed())
	d, err := dispatcher.New(mctx, js, dispatcher.WithLogger(GinkgoLogr), dispatcher.WithEgressGuard(guard),
		dispatcher.WithHealthInterval(200*time.Millisecond), dispatcher.WithDrainTimeout(2*time.Second))
	Expect(err).NotTo(HaveOccurred())
	Expect(mgr.Add(manager.RunnableFunc(d.Run))).To(Succeed())
	Expect((&controller.DispatchReconciler{Client: mgr.GetClient(), Dispatcher: d, WatchSecrets: true, Egress: guard}).SetupWithManager(mgr)).To(Succeed())
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(mctx)).To(Succeed())
	}()
}

// kubeconfigOf writes a kubeconfig file for a user of the test cluster.
func kubeconfigOf(u envtest.User) string {
	GinkgoHelper()
	au, err := env.AddUser(u, cfg)
	Expect(err).NotTo(HaveOccurred())
	kc, err := au.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	f := filepath.Join(GinkgoT().TempDir(), u.Name+".kubeconfig")
	Expect(os.WriteFile(f, kc, 0o600)).To(Succeed())
	return f
}

// viewer is a user with the built-in view role in namespaces only.
func viewer(ctx context.Context, name string, namespaces ...string) string {
	GinkgoHelper()
	for _, ns := range namespaces {
		Expect(k8s.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-view", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: name}},
		})).To(Succeed())
	}
	return kubeconfigOf(envtest.User{Name: name})
}

func ensureNamespace(ctx context.Context, ns string) {
	GinkgoHelper()
	err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
}

// herald runs `kubectl herald args...` as the user of kubeconfig, and
// returns what it printed and its error.
func herald(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := kubectlherald.NewCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &out})
	cmd.SetArgs(append(args, "--kubeconfig", kubeconfig))
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}
