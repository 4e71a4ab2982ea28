// Command bench-operator measures the operator at scale on what `make dev`
// runs (kube-apiserver and etcd from envtest, nats-server with Herald's
// auth, the manager in in-process mode): it creates namespaces, each with
// a signing Secret and endpoints pointing at a local receiver, and
// reports the time until every endpoint is Ready, then what the manager
// and nats-server cost while they sit idle: CPU, memory and status writes.
//
//	make build nats-server envtest && go build -o bin/herald-dev ./hack/dev
//	KUBEBUILDER_ASSETS=bin/k8s/<version> go run ./hack/bench-operator --namespaces 1000 --per-namespace 10
//
// (`make bench-operator` does both.) It reads /proc, so the figures are
// the processes' own.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/natsauth"
)

func main() {
	bin := flag.String("bin", "bin", "directory with herald, herald-dev and nats-server")
	namespaces := flag.Int("namespaces", 1000, "namespaces")
	perNS := flag.Int("per-namespace", 10, "endpoints per namespace")
	idle := flag.Duration("idle", 5*time.Minute, "how long to measure the manager's and nats-server's idle cost once all are Ready: the manager's slowest periodic pass (--ensure-interval) runs every 5 minutes, so a shorter window may or may not hold one")
	podIdle := flag.Duration("pod-idle", time.Minute, "how long to measure one namespace's dispatcher, and the shared pool, idle")
	busyEvery := flag.Duration("busy-every", 10*time.Second, "after the idle phase, every endpoint gets an event this often while status writes and status age are measured; 0 skips it")
	busyFor := flag.Duration("busy", 2*time.Minute, "how long the busy phase is measured, after a warm-up of two periods")
	readyWithin := flag.Duration("ready-within", 15*time.Minute, "give up waiting for Ready after this")
	memLimit := flag.String("manager-memory-limit", "922MiB", "the manager's GOMEMLIMIT: what it sets itself in a container with a 1 GiB memory limit (90% of it); empty for none")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *namespaces, *perNS, *idle, *readyWithin, *memLimit, *podIdle, *busyEvery, *busyFor); err != nil {
		fmt.Fprintln(os.Stderr, "bench-operator:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, namespaces, perNS int, idle, readyWithin time.Duration, memLimit string, podIdle, busyEvery, busyFor time.Duration) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	outDir := filepath.Join(bin, "bench-operator")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(outDir, "dev.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	kubeconfig := filepath.Join(bin, "dev", "kubeconfig")
	_ = os.Remove(kubeconfig)

	receiver, received := startReceiver()
	defer receiver.Close()

	natsPort := freePort()
	dev := exec.Command(filepath.Join(bin, "herald-dev"), "--bin", bin,
		"--nats-port", strconv.Itoa(natsPort), "--receiver", fmt.Sprintf("127.0.0.1:%d", freePort()),
		"--apiserver-port", strconv.Itoa(freePort()),
		// Each namespace reserves 2.31 GiB of stream budgets by default:
		// 1,000 of them need the store set above the disk on purpose.
		"--nats-max-file-store", "4T", "--manager-memory-limit", memLimit)
	dev.Stdout, dev.Stderr = logFile, logFile
	if err := dev.Start(); err != nil {
		return fmt.Errorf("starting herald-dev: %w", err)
	}
	defer func() {
		_ = dev.Process.Signal(syscall.SIGTERM)
		_ = dev.Wait()
	}()

	fmt.Printf("waiting for make dev's processes (log: %s) ...\n", logFile.Name())
	c, err := waitForDev(ctx, kubeconfig)
	if err != nil {
		return err
	}
	manager, nats, err := devProcesses(dev.Process.Pid)
	if err != nil {
		return err
	}
	base, err := sample(manager, nats)
	if err != nil {
		return err
	}

	total := namespaces * perNS
	fmt.Printf("creating %d namespaces with %d endpoints each ...\n", namespaces, perNS)
	// The manager's CPU profile over the first minute of the way to Ready
	// (make dev serves Go's profiler on 127.0.0.1:8082).
	profiled := profile(ctx, "profile?seconds=60", filepath.Join(outDir, "ready.cpu.pprof"))
	t0 := time.Now()
	if err := create(ctx, c, namespaces, perNS, receiver.URL); err != nil {
		return err
	}
	created := time.Since(t0)
	fmt.Printf("created in %s; waiting for Ready ...\n", created.Round(time.Millisecond))
	ready, err := waitReady(ctx, c, total, readyWithin)
	if err != nil {
		return err
	}
	toReady := time.Since(t0)
	atReady, err := sample(manager, nats)
	if err != nil {
		return err
	}
	if err := <-profiled; err != nil {
		fmt.Println("no CPU profile:", err)
	}

	// Let the last status writes of the start-up settle, then measure.
	if !sleep(ctx, 20*time.Second) {
		return ctx.Err()
	}
	idleStart, err := sample(manager, nats)
	if err != nil {
		return err
	}
	idleSeconds := fmt.Sprintf("profile?seconds=%d", int(idle.Seconds()*2/3))
	idleProfile := profile(ctx, idleSeconds, filepath.Join(outDir, "idle.cpu.pprof"))
	natsProfile := profileFrom(ctx, natsPprof, idleSeconds, filepath.Join(outDir, "idle.nats.cpu.pprof"))
	if !sleep(ctx, idle) {
		return ctx.Err()
	}
	if err := <-idleProfile; err != nil {
		fmt.Println("no idle CPU profile:", err)
	}
	if err := <-natsProfile; err != nil {
		fmt.Println("no idle CPU profile of nats-server:", err)
	}
	idleEnd, err := sample(manager, nats)
	if err != nil {
		return err
	}
	if err := <-profile(ctx, "heap", filepath.Join(outDir, "idle.heap.pprof")); err != nil {
		fmt.Println("no heap profile:", err)
	}
	per1000 := func(cpu float64) float64 { return cpu / float64(total) * 1000 }
	mgrCPU := idleEnd.managerCPU.Seconds() - idleStart.managerCPU.Seconds()
	natsCPU := idleEnd.natsCPU.Seconds() - idleStart.natsCPU.Seconds()
	secs := idleEnd.at.Sub(idleStart.at).Seconds()
	fmt.Printf(`
endpoints                      %d in %d namespaces (%d Ready)
create (API calls)             %s
apply to all Ready             %s
manager RSS                    %.0f MiB before, %.0f MiB at Ready, %.0f MiB idle
manager Go heap in use         %.0f MiB idle
nats-server RSS                %.0f MiB before, %.0f MiB idle
idle CPU, manager              %.2f%% of a core (%.3f%% per 1,000 endpoints)
idle CPU, nats-server          %.2f%% of a core (%.3f%% per 1,000 endpoints)
idle CPU, both per 1,000       %.3f%% of a core
status writes while idle       %.2f/s (%.0f in %.0f s)
status writes until Ready      %.0f
requests at the receiver       %d
`, total, namespaces, ready, created.Round(time.Millisecond), toReady.Round(time.Millisecond),
		base.managerRSS, atReady.managerRSS, idleEnd.managerRSS, idleEnd.managerHeap,
		base.natsRSS, idleEnd.natsRSS,
		100*mgrCPU/secs, per1000(100*mgrCPU/secs), 100*natsCPU/secs, per1000(100*natsCPU/secs),
		per1000(100*(mgrCPU+natsCPU)/secs),
		(idleEnd.statusWrites-idleStart.statusWrites)/secs, idleEnd.statusWrites-idleStart.statusWrites, secs,
		atReady.statusWrites-base.statusWrites, received.Load())

	if busyEvery > 0 {
		b, err := busy(ctx, c, fmt.Sprintf("nats://127.0.0.1:%d", natsPort), namespaces, busyEvery, busyFor, manager, nats, received)
		if err != nil {
			return fmt.Errorf("busy phase: %w", err)
		}
		fmt.Printf(`busy: an event every %s to each endpoint (%.0f deliveries/s wanted)
  delivered                    %.0f/s at the receiver over %.0f s (%d published, %d refused)
  status writes                %.1f/s
  lastSuccessTime age          p50 %s, p99 %s, max %s (%d endpoints never delivered)
  delivery log                 %.0f entries lost, %.0f waited for NATS (since the manager started)
`, busyEvery, float64(total)/busyEvery.Seconds(), b.deliveries, b.secs, b.published, b.failed,
			b.writesPerSec, b.age(0.5), b.age(0.99), b.age(1), b.neverDelivered, b.logLost, b.logWaits)
	}

	// Deployment mode's unit: one namespace's dispatcher, as its pod runs
	// it (its own ServiceAccount's NATS identity), idle.
	pod, err := dispatcherPod(ctx, c, bin, outDir, fmt.Sprintf("nats://127.0.0.1:%d", natsPort), "tenant-0000", podIdle)
	if err != nil {
		return err
	}
	fmt.Printf(`dispatcher of one namespace     %d endpoints, RSS %.0f MiB, idle CPU %.2f%% of a core, %d NATS connection(s)
`, perNS, pod.rss, pod.cpu, pod.conns)

	// The shared mode: every namespace in one `herald dispatcher-pool`,
	// each as its own dispatcher identity.
	pool, err := poolCost(ctx, c, bin, outDir, fmt.Sprintf("nats://127.0.0.1:%d", natsPort), namespaces, podIdle)
	if err != nil {
		return err
	}
	n := float64(namespaces)
	fmt.Printf(`shared pool, %d namespaces       all connected in %s; RSS %.0f MiB (%.2f MiB a namespace), idle CPU %.2f%% of a core (%.3f%% a namespace), %d NATS connections
dedicated vs pool per namespace  RSS %.0f : %.2f MiB (%.0fx); 1,000 namespaces: %.1f GiB in 1,000 pods vs %.2f GiB in one
`, namespaces, pool.connected.Round(time.Second), pool.rss, pool.rss/n, pool.cpu, pool.cpu/n, pool.conns,
		pod.rss, pool.rss/n, pod.rss/(pool.rss/n), pod.rss*1000/1024, pool.rss/n*1000/1024)
	return nil
}

type poolStats struct {
	podCost
	connected time.Duration
}

// poolCost labels every namespace shared, gives each its dispatcher
// ServiceAccount (the operator's part), runs `herald dispatcher-pool` and
// measures it once every namespace is connected and it has been idle a
// while. make dev's manager dispatches in-process and serves the same
// endpoints; with no events flowing, that changes nothing measured here.
func poolCost(ctx context.Context, c client.Client, bin, dir, natsURL string, namespaces int, idle time.Duration) (poolStats, error) {
	for i := range namespaces {
		ns := fmt.Sprintf("tenant-%04d", i)
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: natsauth.DispatcherServiceAccount, Namespace: ns}}
		if err := c.Create(ctx, sa); client.IgnoreAlreadyExists(err) != nil {
			return poolStats{}, fmt.Errorf("creating the dispatcher ServiceAccount of %s: %w", ns, err)
		}
		patch := []byte(`{"metadata":{"labels":{"` + v1.DispatcherLabel + `":"` + v1.DispatcherShared + `"}}}`)
		if err := c.Patch(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return poolStats{}, fmt.Errorf("labelling %s shared: %w", ns, err)
		}
	}
	log, err := os.Create(filepath.Join(dir, "dispatcher-pool.log"))
	if err != nil {
		return poolStats{}, err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(bin, "herald"), "dispatcher-pool",
		"--nats-url", natsURL, "--egress-allow", "127.0.0.0/8",
		"--metrics-bind-address", "0", "--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort()))
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(bin, "dev", "kubeconfig"))
	cmd.Stdout, cmd.Stderr = log, log
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return poolStats{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	fmt.Printf("waiting for the pool to connect %d namespaces (log: %s) ...\n", namespaces, log.Name())
	for tcpConnections(cmd.Process.Pid, natsURL) < namespaces {
		if time.Since(t0) > 10*time.Minute {
			return poolStats{}, fmt.Errorf("the pool connected %d of %d namespaces in 10 minutes (see %s)",
				tcpConnections(cmd.Process.Pid, natsURL), namespaces, log.Name())
		}
		if !sleep(ctx, time.Second) {
			return poolStats{}, ctx.Err()
		}
	}
	st := poolStats{connected: time.Since(t0)}
	st.podCost, err = idleCost(ctx, cmd.Process.Pid, "the pool", log.Name(), natsURL, idle)
	if err != nil {
		return poolStats{}, err
	}
	return st, nil
}

type podCost struct {
	rss, cpu float64
	conns    int
}

// dispatcherPod runs `herald dispatcher` for namespace as the operator's
// Deployment does, and measures it once it has been up for a while.
func dispatcherPod(ctx context.Context, c client.Client, bin, dir, natsURL, namespace string, idle time.Duration) (podCost, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: natsauth.DispatcherServiceAccount, Namespace: namespace}}
	if err := c.Create(ctx, sa); err != nil {
		return podCost{}, fmt.Errorf("creating the dispatcher's ServiceAccount: %w", err)
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{natsauth.DefaultAudience}, ExpirationSeconds: ptr.To(int64(3600))}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		return podCost{}, fmt.Errorf("requesting the dispatcher's token: %w", err)
	}
	token := filepath.Join(dir, "dispatcher-token")
	if err := os.WriteFile(token, []byte(tr.Status.Token), 0o600); err != nil {
		return podCost{}, err
	}
	log, err := os.Create(filepath.Join(dir, "dispatcher.log"))
	if err != nil {
		return podCost{}, err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(bin, "herald"), "dispatcher", "--namespace", namespace,
		"--nats-url", natsURL, "--nats-token-file", token, "--egress-allow", "127.0.0.0/8",
		"--metrics-bind-address", "0", "--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort()))
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(bin, "dev", "kubeconfig"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return podCost{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	return idleCost(ctx, cmd.Process.Pid, "the dispatcher", log.Name(), natsURL, idle)
}

// idleCost lets process pid settle for 20 s, then measures its CPU over
// idle, its RSS and its connections to NATS.
func idleCost(ctx context.Context, pid int, what, logName, natsURL string, idle time.Duration) (podCost, error) {
	if !sleep(ctx, 20*time.Second) {
		return podCost{}, ctx.Err()
	}
	cpu0, _, err := procStat(pid)
	if err != nil {
		return podCost{}, fmt.Errorf("%s exited (see %s): %w", what, logName, err)
	}
	t0 := time.Now()
	if !sleep(ctx, idle) {
		return podCost{}, ctx.Err()
	}
	cpu1, rss, err := procStat(pid)
	if err != nil {
		return podCost{}, fmt.Errorf("%s exited (see %s): %w", what, logName, err)
	}
	return podCost{rss: rss, cpu: 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds(), conns: tcpConnections(pid, natsURL)}, nil
}

// tcpConnections counts pid's open TCP connections to natsURL's port.
func tcpConnections(pid int, natsURL string) int {
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(natsURL, "nats://"))
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		// remote address is f[2], the inode f[9]
		if len(f) > 9 && strings.HasSuffix(f[2], want) && inodes[f[9]] {
			n++
		}
	}
	return n
}

// startReceiver answers every webhook 200 at once.
func startReceiver() (*httpServer, *atomic.Int64) {
	var n atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { n.Add(1) }), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(l) }()
	return &httpServer{s: s, URL: "http://" + l.Addr().String()}, &n
}

type httpServer struct {
	s   *http.Server
	URL string
}

func (h *httpServer) Close() { _ = h.s.Close() }

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitForDev(ctx context.Context, kubeconfig string) (client.WithWatch, error) {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(kubeconfig); err == nil {
			if c, err := newClient(kubeconfig); err == nil {
				var l v1.WebhookEndpointList
				if err := c.List(ctx, &l, client.Limit(1)); err == nil {
					if resp, err := http.Get("http://127.0.0.1:8080/metrics"); err == nil {
						resp.Body.Close()
						return c, nil
					}
				}
			}
		}
		if !sleep(ctx, 500*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	return nil, errors.New("make dev did not come up within 3 minutes")
}

func newClient(kubeconfig string) (client.WithWatch, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	// A bulk load, not a controller: the client-side limiter would
	// measure itself.
	cfg.QPS, cfg.Burst = 2000, 4000
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.NewWithWatch(cfg, client.Options{Scheme: scheme})
}

func create(ctx context.Context, c client.Client, namespaces, perNS int, url string) error {
	return forEach(ctx, namespaces, func(i int) error {
		return createNamespace(ctx, c, fmt.Sprintf("tenant-%04d", i), perNS, url)
	})
}

func createNamespace(ctx context.Context, c client.Client, ns string, perNS int, url string) error {
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "signing", Namespace: ns},
			StringData: map[string]string{"v1": "whsec_jzVW/ST1czrg1H5G644YXComqW659BD8ASMKqoZ0oag="}},
	}
	for j := range perNS {
		name := fmt.Sprintf("ep-%02d", j)
		objs = append(objs, &v1.WebhookEndpoint{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: v1.WebhookEndpointSpec{
				URL:              url + "/" + ns + "/" + name,
				SigningSecretRef: v1.LocalObjectReference{Name: "signing"},
			},
		})
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("creating %s/%s: %w", ns, o.GetName(), err)
		}
	}
	return nil
}

// waitReady counts Ready endpoints from one list and then a watch: a list
// of 10,000 endpoints every few seconds would cost the API server more
// CPU than what it measures can spare.
func waitReady(ctx context.Context, c client.WithWatch, want int, within time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	ready := map[types.NamespacedName]bool{}
	n := 0
	count := func() int { return n }
	set := func(key types.NamespacedName, r bool) {
		if ready[key] {
			n--
		}
		if r {
			n++
		}
		ready[key] = r
	}
	note := func(ep *v1.WebhookEndpoint) {
		set(client.ObjectKeyFromObject(ep), apimeta.IsStatusConditionTrue(ep.Status.Conditions, v1.ReadyCondition))
	}
	last, lastAt := -1, time.Time{}
	report := func(n int) {
		if n != last && (n >= want || time.Since(lastAt) >= 5*time.Second) {
			fmt.Printf("  %s  %d of %d Ready\n", time.Now().Format("15:04:05"), n, want)
			last, lastAt = n, time.Now()
		}
	}
	for {
		// (Re)list, then watch from there; a closed watch lists again.
		var l v1.WebhookEndpointList
		if err := c.List(ctx, &l); err != nil {
			return count(), fmt.Errorf("listing endpoints (%d of %d Ready): %w", count(), want, err)
		}
		clear(ready)
		n = 0
		for i := range l.Items {
			note(&l.Items[i])
		}
		report(n)
		if n >= want {
			return n, nil
		}
		w, err := c.Watch(ctx, &v1.WebhookEndpointList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
		if err != nil {
			return count(), fmt.Errorf("watching endpoints: %w", err)
		}
		for ev := range w.ResultChan() {
			ep, ok := ev.Object.(*v1.WebhookEndpoint)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				set(client.ObjectKeyFromObject(ep), false)
			} else {
				note(ep)
			}
			report(n)
			if n >= want {
				w.Stop()
				return n, nil
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return count(), fmt.Errorf("only %d of %d endpoints Ready after %s", count(), want, within)
		}
	}
}

// devProcesses finds the manager and nats-server that herald-dev started.
func devProcesses(parent int) (manager, nats int, err error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(parent) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		switch {
		case len(args) > 1 && filepath.Base(args[0]) == "herald" && args[1] == "manager":
			manager = pid
		case filepath.Base(args[0]) == "nats-server":
			nats = pid
		}
	}
	if manager == 0 || nats == 0 {
		return 0, 0, fmt.Errorf("manager (%d) or nats-server (%d) not found under herald-dev %d", manager, nats, parent)
	}
	return manager, nats, nil
}

type snapshot struct {
	at                  time.Time
	managerCPU, natsCPU time.Duration
	managerRSS, natsRSS float64 // MiB
	managerHeap         float64 // MiB
	statusWrites        float64
	// The delivery log's entries lost, and those that waited for NATS to
	// confirm earlier ones, since the manager started.
	logLost, logWaits float64
}

func sample(manager, nats int) (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if s.managerCPU, s.managerRSS, err = procStat(manager); err != nil {
		return s, err
	}
	if s.natsCPU, s.natsRSS, err = procStat(nats); err != nil {
		return s, err
	}
	m, err := scrape("http://127.0.0.1:8080/metrics")
	if err != nil {
		return s, err
	}
	s.statusWrites = m["herald_status_writes_total"]
	s.logLost, s.logWaits = m["herald_delivery_log_lost_total"], m["herald_delivery_log_publish_waits_total"]
	s.managerHeap = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
	return s, nil
}

// procStat is a process's CPU time (user and system) and resident memory.
func procStat(pid int) (time.Duration, float64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	// After the command: state is f[0], so utime and stime (fields 14
	// and 15 of proc(5)) are f[11] and f[12], in clock ticks of 1/100 s.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu := time.Duration(ut+st) * 10 * time.Millisecond
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	var rss float64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			rss = kb / 1024
		}
	}
	return cpu, rss, nil
}

// scrape reads unlabelled samples of a Prometheus text endpoint.
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scraping the manager's metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// profile fetches one of the manager's profiles into path, in the
// background; the channel says how it went.
func profile(ctx context.Context, which, path string) <-chan error {
	return profileFrom(ctx, managerPprof, which, path)
}

// make dev serves Go's profiler for the manager and nats-server here.
const (
	managerPprof = "http://127.0.0.1:8082/debug/pprof/"
	natsPprof    = "http://127.0.0.1:8083/debug/pprof/"
)

// profileFrom fetches profile which from the profiler at base into path.
func profileFrom(ctx context.Context, base, which, path string) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+which, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", which, resp.Status)
			}
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, resp.Body); err != nil {
				_ = f.Close()
				return err
			}
			fmt.Println("profile:", path)
			return f.Close()
		}()
	}()
	return done
}
