package controller

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
)

// Test timing: the resync and write interval are the production ones
// scaled so a spec waits seconds, not minutes. The write interval stays at
// the production 5s because one spec measures the write rate.
const (
	testResync        = 2 * time.Second
	testWriteInterval = DefaultMinStatusWriteInterval
	eventually        = 30 * time.Second
	poll              = 100 * time.Millisecond
)

var (
	cfg       *rest.Config
	k8sClient client.WithWatch
	testEnv   *envtest.Environment
	natsSrv   *natsserver.Server
	nc        *nats.Conn
	js        jetstream.JetStream
	// mgrClient is the manager's cached client (with the field indexes),
	// for specs that run a reconciler of their own.
	mgrClient  client.Client
	fake       *fakeDispatch
	kubeconfig string
	ctx        context.Context
	cancel     context.CancelFunc
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controller Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, &suiteLogs)), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.TODO())

	var err error
	testEnv, err = testenv.ControlPlane()
	Expect(err).NotTo(HaveOccurred())
	Expect(testEnv.ErrorIfCRDPathMissing).To(BeTrue())
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8sClient, err = client.NewWithWatch(cfg, client.Options{Scheme: testenv.Scheme()})
	Expect(err).NotTo(HaveOccurred())

	// A kubeconfig for the kubectl checks.
	admin, err := testEnv.AddUser(envtest.User{Name: "herald-test-admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfig = filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	natsSrv, err = testenv.NATS(GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	nc, err = nats.Connect(natsSrv.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 testenv.Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{ByObject: CacheByObject()},
	})
	Expect(err).NotTo(HaveOccurred())
	Expect(SetupIndexes(ctx, mgr)).To(Succeed())
	mgrClient = mgr.GetClient()
	hw := NewHealthWatcher(js, time.Second, nil)
	Expect(mgr.Add(hw)).To(Succeed())
	Expect((&WebhookEndpointReconciler{
		Client:                 mgr.GetClient(),
		JS:                     js,
		Recorder:               mgr.GetEventRecorder("herald-operator"),
		Mode:                   DispatchInProcess,
		ResyncInterval:         testResync,
		MinStatusWriteInterval: testWriteInterval,
		CleanupTimeout:         2 * time.Second,
		HealthEvents:           hw.Events(),
		Egress:                 loopbackEgress, // the specs' endpoints are on 127.0.0.1
	}).SetupWithManager(mgr)).To(Succeed())
	Expect((&RetryPolicyReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr)).To(Succeed())
	// The Deployment mode's reconciler runs too, so its objects can be
	// checked; the endpoints' Ready condition follows the in-process mode.
	Expect((&DispatcherDeploymentReconciler{
		Client: mgr.GetClient(),
		Config: DispatcherConfig{Image: "herald:test", NATSURL: "nats://nats.herald-system:4222",
			NATSTokenAuth: true, NATSCA: []byte(testNATSCA), NATSServerName: "nats.herald-system.svc",
			NetworkPolicy: true, NATSNamespace: "herald-system"},
	}).SetupWithManager(mgr)).To(Succeed())
	// A recording fake stands in for the dispatcher, so these specs do not
	// depend on deliveries (delivery_test.go runs the real one).
	fake = newFakeDispatch()
	Expect((&DispatchReconciler{Client: mgr.GetClient(), Dispatcher: fake, WatchSecrets: true, Egress: loopbackEgress}).SetupWithManager(mgr)).To(Succeed())

	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
})

var _ = AfterSuite(func() {
	cancel()
	if nc != nil {
		nc.Close()
	}
	if natsSrv != nil {
		natsSrv.Shutdown()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

// suiteLogs keeps every log line of the suite's manager (debug level
// included), so specs can check that no secret value was ever logged.
var suiteLogs testenv.LogBuffer

// fakeDispatch records what the DispatchReconciler asks of a dispatcher.
type fakeDispatch struct {
	mu      sync.Mutex
	current map[string]dispatcher.Endpoint
	removed map[string]int
	upserts map[string]int
}

var _ Dispatch = (*fakeDispatch)(nil)

func newFakeDispatch() *fakeDispatch {
	return &fakeDispatch{current: map[string]dispatcher.Endpoint{}, removed: map[string]int{}, upserts: map[string]int{}}
}

func (f *fakeDispatch) Upsert(ep dispatcher.Endpoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current[ep.ID()] = ep
	f.upserts[ep.ID()]++
}

func (f *fakeDispatch) Remove(namespace, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.current, namespace+"/"+name)
	f.removed[namespace+"/"+name]++
}

// delivering reports whether the endpoint runs and may send: a stalled
// endpoint runs only to dead-letter expired events (dispatcher.SweepOnly:
// suspended, without signing keys).
func (f *fakeDispatch) delivering(namespace, name string) bool {
	ep, ok := f.get(namespace, name)
	return ok && !ep.Suspend && len(ep.Keys) > 0
}

// get returns the endpoint as last upserted, if it is running.
func (f *fakeDispatch) get(namespace, name string) (dispatcher.Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.current[namespace+"/"+name]
	return ep, ok
}

// healthKV and versionsKV are a namespace's buckets, which its first
// endpoint's reconcile creates.
func healthKV(ns string) jetstream.KeyValue   { return kvOf(streams.HealthBucket(ns)) }
func versionsKV(ns string) jetstream.KeyValue { return kvOf(streams.VersionsBucket(ns)) }

func kvOf(bucket string) jetstream.KeyValue {
	GinkgoHelper()
	var kv jetstream.KeyValue
	Eventually(func() (err error) {
		kv, err = js.KeyValue(context.Background(), bucket)
		return err
	}).Should(Succeed())
	return kv
}
