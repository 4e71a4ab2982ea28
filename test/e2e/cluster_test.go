//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"
)

// kubectl runs kubectl against the suite's cluster and fails the spec on error.
func kubectl(args ...string) string {
	GinkgoHelper()
	out, err := tryKubectl(args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s:\n%s", strings.Join(args, " "), out)
	return out
}

func tryKubectl(args ...string) (string, error) {
	return kubectlIn("", args...)
}

func kubectlIn(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, envOr("KUBECTL", "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// apply is `kubectl apply -f -`: the suite configures Herald as a user does.
// One error is retried: the API server's Service IP allocator can hand out
// an address it still holds (a CI run failed on it, "provided IP is
// already allocated"), and a second apply gets another.
func apply(manifest string) {
	GinkgoHelper()
	var out string
	Eventually(func() error {
		var err error
		out, err = kubectlIn(manifest, "apply", "-f", "-")
		if err != nil && !strings.Contains(out, "provided IP is already allocated") {
			return StopTrying("kubectl apply failed").Wrap(err)
		}
		return err
	}).WithTimeout(30*time.Second).WithPolling(time.Second).Should(Succeed(), func() string { return fmt.Sprintf("kubectl apply:\n%s\n%s", out, manifest) })
}

// natsDataDir is where the NATS pod keeps its store, on the node. A fresh
// directory per run, so no run sees another's streams.
var natsDataDir string

func natsManifest() string {
	natsDataDir = envOr("E2E_NATS_DATA", filepath.Join(repoRoot, "bin", "cluster", "volumes", "nats-"+runID))
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: nats
---
apiVersion: v1
kind: Service
metadata:
  name: nats
  namespace: nats
spec:
  selector: {app: nats}
  ports:
  - {name: client, port: 4222, targetPort: 4222}
---
# A StatefulSet, as NATS's own chart runs it: a deleted pod's replacement
# starts only once the old server has exited. A Deployment starts it at
# once, and two servers on one store (nats-server takes no lock on it)
# lose what the old one wrote last.
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: nats
  namespace: nats
spec:
  replicas: 1
  serviceName: nats
  selector:
    matchLabels: {app: nats}
  template:
    metadata:
      labels: {app: nats}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nats
        # Root, to write the hostPath store the node creates for it.
        securityContext: {runAsUser: 0}
        image: %s
        imagePullPolicy: IfNotPresent
        # TLS, JetStream and Herald's auth callout (nats_test.go).
        args: ["-c", "/etc/nats/nats.conf"]
        ports:
        - {containerPort: 4222}
        - {containerPort: 8222}
        readinessProbe:
          httpGet: {path: /healthz, port: 8222}
          periodSeconds: 2
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: config, mountPath: /etc/nats, readOnly: true}
      volumes:
      - name: data
        hostPath: {path: %q, type: DirectoryOrCreate}
      - name: config
        secret:
          secretName: nats-config
          items:
          - {key: nats.conf, path: nats.conf}
          - {key: tls.crt, path: tls/tls.crt}
          - {key: tls.key, path: tls/tls.key}
`, envOr("E2E_NATS_IMAGE", "nats:e2e"), natsDataDir)
}

// installHerald renders dist/install.yaml the way the README says and
// applies it with the settings a one-node NATS needs: the image under test
// (for the dispatchers too) and streams with one replica.
// The e2e cluster's pod subnet (hack/cluster/lib.sh: POD_CIDR), and the
// ClusterIPs the tenants' receiver Services get, two addresses of
// SERVICE_CIDR (10.215.0.0/24): the install opens the pod range and these
// two only, so the rest of the Service range (NATS, the API server's
// ClusterIP) stays refused, as in production.
const (
	podCIDR     = "10.214.0.0/24"
	receiverIPs = "10.215.0.250/31"
	egressAllow = podCIDR + "," + receiverIPs
)

// receiverIP is the ClusterIP of a tenant's receiver Service.
func receiverIP(ns string) string {
	if ns == tenantB.ns {
		return "10.215.0.251"
	}
	return "10.215.0.250"
}

func installHerald() {
	GinkgoHelper()
	cmd := exec.Command("make", "-C", repoRoot, "build-installer")
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "make build-installer:\n%s", out)
	raw, err := os.ReadFile(filepath.Join(repoRoot, "dist", "install.yaml"))
	Expect(err).NotTo(HaveOccurred())

	var docs []string
	found := false
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var obj map[string]any
		Expect(yaml.Unmarshal([]byte(doc), &obj)).To(Succeed())
		if obj["kind"] == "Deployment" && dig(obj, "metadata")["name"] == "herald-apiserver" {
			c := dig(obj, "spec", "template", "spec")["containers"].([]any)[0].(map[string]any)
			c["image"] = image
			c["imagePullPolicy"] = "IfNotPresent"
			c["args"] = append(c["args"].([]any), "--nats-ca-file=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "--nats-server-name="+natsServerName)
			b, err := yaml.Marshal(obj)
			Expect(err).NotTo(HaveOccurred())
			doc = string(b)
		} else if obj["kind"] == "Deployment" {
			found = true
			containers := dig(obj, "spec", "template", "spec")["containers"].([]any)
			c := containers[0].(map[string]any)
			c["image"] = image
			c["imagePullPolicy"] = "IfNotPresent"
			var args []any
			for _, a := range c["args"].([]any) {
				s := a.(string)
				switch {
				case strings.HasPrefix(s, "--stream-replicas="):
					s = "--stream-replicas=1"
				case strings.HasPrefix(s, "--dispatcher-image="):
					s = "--dispatcher-image=" + image
				}
				args = append(args, s)
			}
			// The receivers are pods behind Services: open the pod range
			// and the receivers' ClusterIPs to the egress guard, which
			// refuses private ranges by default.
			args = append(args, "--egress-allow="+egressAllow)
			// NATS's certificate is from the cluster's CA, which every
			// pod's ServiceAccount mount carries; the manager passes it on
			// to the dispatchers.
			args = append(args, "--nats-ca-file=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "--nats-server-name="+natsServerName)
			c["args"] = args
			b, err := yaml.Marshal(obj)
			Expect(err).NotTo(HaveOccurred())
			doc = string(b)
		}
		docs = append(docs, doc)
	}
	Expect(found).To(BeTrue(), "dist/install.yaml has no manager Deployment")
	apply(strings.Join(docs, "\n---\n"))
}

func dig(obj map[string]any, path ...string) map[string]any {
	for _, p := range path {
		obj = obj[p].(map[string]any)
	}
	return obj
}

// forward is a `kubectl port-forward` to a Service that comes back when
// its pod is replaced (a port-forward ends with the pod it picked), on the
// same local port, so clients reconnect to the same address.
type forward struct {
	addr string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func startForward(ns, target string, port int) *forward {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	addr := l.Addr().String()
	_ = l.Close()
	f := &forward{addr: addr, done: make(chan struct{})}
	local := addr[strings.LastIndex(addr, ":")+1:]
	go func() {
		for {
			cmd := exec.Command(envOr("KUBECTL", "kubectl"), "--kubeconfig", kubeconfig, "-n", ns,
				"port-forward", "--address=127.0.0.1", target, fmt.Sprintf("%s:%d", local, port))
			stdout, _ := cmd.StdoutPipe()
			f.mu.Lock()
			err := cmd.Start()
			f.cmd = cmd
			f.mu.Unlock()
			if err == nil {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
				}
				_ = cmd.Wait()
			}
			select {
			case <-f.done:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	Eventually(func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}).Should(Succeed(), "port-forward to %s/%s", ns, target)
	fwds = append(fwds, f)
	return f
}

func (f *forward) stop() {
	close(f.done)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cmd != nil && f.cmd.Process != nil {
		_ = f.cmd.Process.Kill()
	}
}
