// Command dev runs Herald on a local default for `make dev`: the same
// kube-apiserver and etcd the tests use (through envtest), a nats-server
// with JetStream, Herald's manager delivering in-process, and a demo
// receiver. Ctrl-C stops everything it started.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/testenv"
)

// managerMemLimit is the --manager-memory-limit flag.
var managerMemLimit string

// natsProfPort is where nats-server serves Go's profiler, on 127.0.0.1.
const natsProfPort = 8083

// maxFileStore is the --nats-max-file-store flag.
var maxFileStore string

func main() {
	bin := flag.String("bin", "bin", "directory with herald and nats-server")
	natsPort := flag.Int("nats-port", 4222, "NATS client port")
	receiverAddr := flag.String("receiver", "127.0.0.1:8090", "demo receiver address")
	apiPort := flag.Int("apiserver-port", 8444, "port of the delivery API server (herald apiserver) on 127.0.0.1")
	flag.StringVar(&managerMemLimit, "manager-memory-limit", "", "GOMEMLIMIT of the manager (as the Go runtime takes it, 922MiB say): what it sets itself from its container's memory limit in a cluster (90% of it), which make dev's processes do not have; empty for none")
	flag.StringVar(&maxFileStore, "nats-max-file-store", "", "JetStream max_file_store (as nats-server takes it, 4T say): every namespace reserves its streams' budgets against it, so many namespaces need it set above the disk on purpose (docs/operations.md, Storage)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *natsPort, *receiverAddr, *apiPort); err != nil {
		fmt.Fprintln(os.Stderr, "make dev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, natsPort int, receiverAddr string, apiPort int) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	devDir := filepath.Join(bin, "dev")
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		return err
	}
	apiAddr := fmt.Sprintf("127.0.0.1:%d", apiPort)
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", natsPort), receiverAddr, apiAddr} {
		if l, err := net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("%s is taken (is another `make dev` running?): %w", addr, err)
		} else {
			l.Close()
		}
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	// The aggregation layer, for the delivery API as in a cluster.
	if _, err := testenv.ConfigureAggregation(env, devDir); err != nil {
		return err
	}
	fmt.Println("starting kube-apiserver and etcd ...")
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("starting the control plane (KUBEBUILDER_ASSETS=%s): %w", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "herald-dev", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("creating the admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	kcPath := filepath.Join(devDir, "kubeconfig")
	if err := os.WriteFile(kcPath, kubeconfig, 0o600); err != nil {
		return err
	}

	// The demo receiver's control endpoints need a bearer token: a new one
	// each run, in a file only this user can read, for the curl hint below.
	tokenPath := filepath.Join(devDir, "receiver-token")
	if err := writeToken(tokenPath); err != nil {
		return err
	}

	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	// The control plane starts empty each time, so NATS does too: no
	// consumers of endpoints that no longer exist.
	jsDir := filepath.Join(devDir, "jetstream")
	if err := os.RemoveAll(jsDir); err != nil {
		return err
	}
	// NATS with the auth a cluster gets: operator mode, the manager as
	// the callout's user, and an account per namespace for every
	// ServiceAccount token the callout lets in.
	natsConf, keysDir, err := writeNATSConfig(devDir, natsPort, jsDir)
	if err != nil {
		return err
	}
	heraldToken := filepath.Join(devDir, "herald-token")
	if err := writeHeraldToken(ctx, env, heraldToken); err != nil {
		return err
	}
	apiKubeconfig, apiToken, err := installDeliveryAPI(ctx, env, devDir, apiPort)
	if err != nil {
		return err
	}
	procs := []*exec.Cmd{
		command("nats", filepath.Join(bin, "nats-server"), "-c", natsConf),
		command("manager", filepath.Join(bin, "herald"), "manager", "--dispatch=in-process", "--nats-url="+natsURL,
			"--nats-keys-dir="+keysDir,
			"--metrics-bind-address=127.0.0.1:8080", "--metrics-secure=false", "--health-probe-bind-address=127.0.0.1:8081",
			"--pprof-bind-address=127.0.0.1:8082",
			// The demo receiver is on loopback, which the egress guard
			// refuses unless opened.
			"--egress-allow=127.0.0.0/8"),
		command("receiver", filepath.Join(bin, "herald"), "receiver", "--listen="+receiverAddr, "--token-file="+tokenPath),
		// The delivery API as its ServiceAccount: delegated authn and
		// authz, its certificate in a Secret and the APIService's
		// caBundle, NATS through the callout as a cluster reader.
		command("apiserver", filepath.Join(bin, "herald"), "apiserver", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
			"--authentication-kubeconfig="+apiKubeconfig, "--authorization-kubeconfig="+apiKubeconfig,
			"--tls-secret=herald-apiserver-tls", "--namespace=herald-system",
			"--nats-url="+natsURL, "--nats-token-file="+apiToken),
	}
	// As in a cluster: the manager runs in herald-system, beside the
	// delivery API server's ServiceAccount (--nats-readers).
	procs[1].Env = append(os.Environ(), "KUBECONFIG="+kcPath, "POD_NAMESPACE=herald-system")
	if managerMemLimit != "" {
		procs[1].Env = append(procs[1].Env, "GOMEMLIMIT="+managerMemLimit)
	}
	procs[3].Env = append(os.Environ(), "KUBECONFIG="+apiKubeconfig)
	// Secrets stay off the command line, where every user can read them.
	procs[2].Env = append(os.Environ(), "HERALD_RECEIVER_SECRET="+strings.Join(sampleSecrets(), ","))
	for _, p := range procs {
		if err := p.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", p.Path, err)
		}
	}
	defer func() {
		for _, p := range procs {
			if p.Process != nil {
				_ = p.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, p := range procs {
			_ = p.Wait()
		}
		fmt.Println("stopped: manager, receiver, apiserver, nats-server, kube-apiserver, etcd")
	}()

	fmt.Printf(`
Herald is running: API server (kubeconfig %[1]s), NATS at %[2]s, demo receiver at http://%[3]s.
Next, in another terminal:

  kubectl --kubeconfig %[1]s apply -f config/samples/
  bin/herald send --nats-url %[2]s --nats-token-file %[5]s --type subscription.updated --key sub_123 --version 1 --data '{"plan":"pro"}'
  kubectl --kubeconfig %[1]s get webhookendpoints -A
  kubectl --kubeconfig %[1]s get webhookdeliveries -A

%[5]s is a token of the ServiceAccount default/herald-dev, which may
publish and read in namespace default; NATS lets nothing else in.

Break the CRM receiver on purpose and watch it retry (the control token is in %[4]s):

  curl -X PUT -H "Authorization: Bearer $(cat %[4]s)" 'http://%[3]s/_herald/behaviour?path=/crm&status=500'

Ctrl-C stops everything.
`, kcPath, natsURL, receiverAddr, tokenPath, heraldToken)

	errc := make(chan error, len(procs))
	for _, p := range procs {
		go func() { errc <- fmt.Errorf("%s exited: %w", filepath.Base(p.Path), p.Wait()) }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// writeNATSConfig writes a nats-server configuration for dev: loopback,
// JetStream in jsDir, and Herald's auth from new keys (herald nats-keys
// makes the same files for a cluster).
func writeNATSConfig(devDir string, port int, jsDir string) (conf, keysDir string, err error) {
	keysDir = filepath.Join(devDir, "nats")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return "", "", err
	}
	keys, err := natsauth.NewKeys()
	if err != nil {
		return "", "", err
	}
	if err := keys.Write(keysDir); err != nil {
		return "", "", err
	}
	// The accounts of the namespaces start empty with the rest.
	accounts := filepath.Join(devDir, "accounts")
	if err := os.RemoveAll(accounts); err != nil {
		return "", "", err
	}
	auth, err := keys.ServerConfig(accounts)
	if err != nil {
		return "", "", err
	}
	conf = filepath.Join(keysDir, "nats.conf")
	js := fmt.Sprintf("store_dir: %q", jsDir)
	if maxFileStore != "" {
		js += ", max_file_store: " + maxFileStore
	}
	// Go's profiler on loopback, next to the manager's (8082): nats-server
	// binds prof_port to the listen host.
	text := fmt.Sprintf("listen: \"127.0.0.1:%d\"\nprof_port: %d\njetstream { %s }\n%s", port, natsProfPort, js, auth)
	return conf, keysDir, os.WriteFile(conf, []byte(text), 0o600)
}

// writeHeraldToken creates the ServiceAccount default/herald-dev, lets it
// publish (the shipped herald-producer ClusterRole) and read endpoints
// (webhooks-viewer-role) in default, and writes a day-long token for NATS's
// audience to path: what `herald send` and `herald status` present.
func writeHeraldToken(ctx context.Context, env *envtest.Environment, path string) error {
	c, err := client.New(env.Config, client.Options{})
	if err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "herald-dev", Namespace: "default"}}
	if err := c.Create(ctx, sa); err != nil {
		return fmt.Errorf("creating ServiceAccount default/herald-dev: %w", err)
	}
	for _, file := range []string{"producer_role.yaml", "webhooks_viewer_role.yaml"} {
		b, err := os.ReadFile(filepath.Join("config", "rbac", file))
		if err != nil {
			return err
		}
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal(b, &role); err != nil {
			return fmt.Errorf("reading %s: %w", file, err)
		}
		if err := c.Create(ctx, &role); err != nil {
			return fmt.Errorf("creating ClusterRole %s: %w", role.Name, err)
		}
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "herald-dev-" + role.Name, Namespace: "default"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}},
		}
		if err := c.Create(ctx, rb); err != nil {
			return fmt.Errorf("binding ClusterRole %s: %w", role.Name, err)
		}
	}
	return writeNATSToken(ctx, c, sa, path)
}

// writeNATSToken writes a day-long token of sa for NATS's audience.
func writeNATSToken(ctx context.Context, c client.Client, sa *corev1.ServiceAccount, path string) error {
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{natsauth.DefaultAudience}, ExpirationSeconds: ptr.To(int64(24 * 3600)),
	}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		return fmt.Errorf("requesting a token for %s/%s: %w", sa.Namespace, sa.Name, err)
	}
	_ = os.Remove(path)
	return os.WriteFile(path, []byte(tr.Status.Token), 0o600)
}

// installDeliveryAPI installs the delivery API's RBAC and APIService from
// config/default, as a cluster gets them, points the APIService at
// 127.0.0.1:port, fills the built-in view role (envtest runs no
// controller manager to aggregate it), and writes the apiserver's
// kubeconfig and NATS token.
func installDeliveryAPI(ctx context.Context, env *envtest.Environment, devDir string, port int) (kubeconfig, token string, err error) {
	c, err := client.New(env.Config, client.Options{})
	if err != nil {
		return "", "", err
	}
	if err := testenv.Install(ctx, c, func(u *unstructured.Unstructured) bool {
		switch u.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "APIService":
			return strings.Contains(u.GetName(), "apiserver") || strings.Contains(u.GetName(), "delivery") || u.GetKind() == "Namespace"
		}
		return false
	}); err != nil {
		return "", "", err
	}
	if err := testenv.ServeLocal(ctx, c, "v1alpha1.delivery.herald.dev", port); err != nil {
		return "", "", err
	}
	if err := testenv.AggregateClusterRoles(ctx, c); err != nil {
		return "", "", err
	}
	user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:herald-system:herald-apiserver"}, nil)
	if err != nil {
		return "", "", err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", "", err
	}
	kubeconfig, token = filepath.Join(devDir, "apiserver.kubeconfig"), filepath.Join(devDir, "apiserver-token")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return "", "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "herald-apiserver", Namespace: "herald-system"}}
	return kubeconfig, token, writeNATSToken(ctx, c, sa, token)
}

// writeToken writes a new random bearer token for the demo receiver's
// control endpoints to path, readable by this user only.
func writeToken(path string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("making the receiver's control token: %w", err)
	}
	_ = os.Remove(path) // a file from an older run may have looser permissions
	if err := os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing the receiver's control token: %w", err)
	}
	return nil
}

// command runs a child with its output prefixed, so one terminal shows all.
func command(name, path string, args ...string) *exec.Cmd {
	c := exec.Command(path, args...)
	c.Stdout = prefixed(name)
	c.Stderr = c.Stdout
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	return c
}

func prefixed(name string) *os.File {
	r, w, err := os.Pipe()
	if err != nil {
		return os.Stdout
	}
	go func() {
		s := bufio.NewScanner(r)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			fmt.Printf("%-8s | %s\n", name, s.Text())
		}
	}()
	return w
}

// sampleSecrets are the signing secrets in config/samples, so the demo
// receiver verifies what the sample endpoints are signed with.
func sampleSecrets() []string {
	var out []string
	files, _ := filepath.Glob(filepath.Join("config", "samples", "*.yaml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var s corev1.Secret
			if yaml.Unmarshal(doc, &s) != nil || s.Kind != "Secret" {
				continue
			}
			for _, v := range s.StringData {
				out = append(out, strings.TrimSpace(v))
			}
			for _, v := range s.Data {
				out = append(out, strings.TrimSpace(string(v)))
			}
		}
	}
	if len(out) == 0 {
		fmt.Fprintln(os.Stderr, errors.New("no Secret in config/samples: the demo receiver will not verify signatures"))
	}
	return out
}
