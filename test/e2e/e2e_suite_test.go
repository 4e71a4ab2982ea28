//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/events"
)

// The suite runs against the cluster E2E_KUBECONFIG names (by default the
// one `make cluster-up` starts), with Herald's image already loaded there
// under E2E_IMAGE.
var (
	repoRoot   string
	kubeconfig string
	image      string

	k8s  client.Client
	nc   *nats.Conn
	js   jetstream.JetStream
	pub  *events.Publisher
	fwds []*forward
	// natsAddr is the port-forward to NATS's Service.
	natsAddr string

	// Every spec's tenants: namespaces with a receiver, a signing secret
	// and a fast retry policy.
	tenantA = &tenant{ns: "tenant-a"}
	tenantB = &tenant{ns: "tenant-b"}
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(2 * time.Minute)
	SetDefaultEventuallyPollingInterval(500 * time.Millisecond)
	SetDefaultConsistentlyDuration(3 * time.Second)
	RunSpecs(t, "Herald e2e")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	wd, err := os.Getwd()
	Expect(err).NotTo(HaveOccurred())
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	// Not KUBECONFIG: a shell's everyday cluster must never be the one the
	// suite breaks by accident.
	kubeconfig = envOr("E2E_KUBECONFIG", filepath.Join(repoRoot, "bin", "cluster", "kubeconfig"))
	image = envOr("E2E_IMAGE", "herald:e2e")
	_, err = os.Stat(kubeconfig)
	Expect(err).NotTo(HaveOccurred(), "no cluster: run `make cluster-up`, or set E2E_KUBECONFIG")

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(v1.AddToScheme(scheme)).To(Succeed())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	By("installing NATS with JetStream, TLS from the cluster's CA and Herald's auth callout, its store on a volume")
	makeNATSSecrets()
	apply(natsSecretsManifest())
	apply(natsManifest())
	kubectl("-n", "nats", "rollout", "status", "statefulset/nats", "--timeout=3m")

	By("installing Herald from dist/install.yaml")
	installHerald()
	kubectl("-n", "herald-system", "rollout", "status", "deployment/herald-controller-manager", "--timeout=3m")
	kubectl("-n", "herald-system", "rollout", "status", "deployment/herald-apiserver", "--timeout=3m")

	By("reaching NATS through a port-forward")
	f := startForward("nats", "svc/nats", 4222)
	natsAddr = f.addr
	// The suite reads and publishes across namespaces as the manager does.
	nc, err = nats.Connect("nats://"+f.addr, append(natsOptions(), nats.Name("herald-e2e"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.Timeout(5*time.Second))...)
	Expect(err).NotTo(HaveOccurred())
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
	pub, err = events.NewPublisher(js)
	Expect(err).NotTo(HaveOccurred())

	By("creating the tenants: a receiver, a signing secret and a fast retry policy each")
	for _, t := range []*tenant{tenantA, tenantB} {
		t.setUp()
	}
})

var _ = AfterSuite(func() {
	if nc != nil {
		nc.Close()
	}
	for _, f := range fwds {
		f.stop()
	}
	if os.Getenv("E2E_KEEP") != "" {
		return
	}
	// Leave the cluster as we found it, so the suite can run again.
	for _, ns := range []string{tenantA.ns, tenantB.ns} {
		_, _ = tryKubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=2m")
	}
	_, _ = tryKubectl("delete", "-f", filepath.Join(repoRoot, "dist", "install.yaml"), "--ignore-not-found", "--wait=true", "--timeout=2m")
	_, _ = tryKubectl("delete", "namespace", "nats", "--ignore-not-found", "--wait=true", "--timeout=2m")
	// The store's directory is on this machine when the node is (the
	// cluster of `make cluster-up`); elsewhere there is nothing here to remove.
	if natsDataDir != "" {
		_ = os.RemoveAll(natsDataDir)
	}
})

// On failure every spec leaves what a person needs to see why: logs of the
// manager, the dispatchers and NATS, the events and the pods.
var _ = JustAfterEach(func() {
	if !CurrentSpecReport().Failed() {
		return
	}
	dump := func(args ...string) {
		out, err := tryKubectl(args...)
		fmt.Fprintf(GinkgoWriter, "\n===== kubectl %s =====\n%s", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(GinkgoWriter, "(%v)\n", err)
		}
	}
	dump("get", "webhookendpoints,retrypolicies", "-A", "-o", "wide")
	dump("logs", "-n", "herald-system", "-l", "app.kubernetes.io/component=manager", "--all-containers", "--prefix", "--tail=200")
	for _, ns := range []string{tenantA.ns, tenantB.ns} {
		dump("logs", "-n", ns, "-l", "app.kubernetes.io/component=dispatcher", "--all-containers", "--prefix", "--tail=200")
		dump("describe", "pods", "-n", ns)
	}
	dump("logs", "-n", "nats", "statefulset/nats", "--tail=50")
	dump("describe", "pods", "-n", "herald-system")
	dump("get", "events", "-A", "--sort-by=.lastTimestamp")
})

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
