// Command bench-deliveryapi measures the delivery API behind a real
// kube-apiserver: envtest with the aggregation layer, an in-process NATS
// with JetStream, and `herald apiserver` as its own process (so its memory
// is its own), over a delivery log of a given size. It prints, per log
// size, the median time of a get, of a list of one event's deliveries and
// of the first page of a namespace's retrying deliveries, each next to a
// baseline in the same run (a get of a ConfigMap through the same
// kube-apiserver, and the same read straight from NATS), and the server's
// peak memory.
//
//	go run ./hack/bench-deliveryapi --herald bin/herald --attempts 10000,100000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/delivery"
)

func main() {
	herald := flag.String("herald", "bin/herald", "the herald binary")
	sizes := flag.String("attempts", "10000,100000", "delivery-log sizes to measure, comma-separated (each in a namespace of its own)")
	endpoints := flag.Int("endpoints", 100, "endpoints the attempts are spread over")
	runs := flag.Int("runs", 15, "requests per measurement (the median is reported)")
	flag.Parse()
	if err := run(*herald, *sizes, *endpoints, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench-deliveryapi:", err)
		os.Exit(1)
	}
}

func run(herald, sizes string, endpoints, runs int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bench-deliveryapi")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	env, err := testenv.ControlPlane()
	if err != nil {
		return err
	}
	if _, err := testenv.ConfigureAggregation(env, dir); err != nil {
		return err
	}
	cfg, err := env.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	k8s, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	if err := testenv.Install(ctx, k8s, func(u *unstructured.Unstructured) bool {
		return slices.Contains([]string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "APIService"}, u.GetKind())
	}); err != nil {
		return err
	}
	ns, err := testenv.NATS(filepath.Join(dir, "nats"))
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:herald-system:herald-apiserver"}, cfg)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kcFile := filepath.Join(dir, "apiserver.kubeconfig")
	if err := os.WriteFile(kcFile, kc, 0o600); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	srv := exec.Command(herald, "apiserver", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--authentication-kubeconfig="+kcFile, "--authorization-kubeconfig="+kcFile,
		"--tls-secret=herald-apiserver-tls", "--namespace=herald-system", "--nats-url="+ns.ClientURL())
	srv.Env = append(os.Environ(), "KUBECONFIG="+kcFile)
	srv.Stderr = nil
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	if err := testenv.ServeLocal(ctx, k8s, "v1alpha1.delivery.herald.dev", port); err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Minute); ; {
		ok, why, err := testenv.APIServiceAvailable(ctx, k8s, "v1alpha1.delivery.herald.dev")
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the APIService is not Available: %s %v", why, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	admin, err := delivery.NewForConfig(cfg)
	if err != nil {
		return err
	}
	reader := &deliverylog.Reader{JS: js}

	fmt.Printf("%d endpoints; medians of %d requests through kube-apiserver; NATS in-process, herald apiserver its own process\n\n", endpoints, runs)
	fmt.Println("| log entries | deliveries | get by name | ConfigMap get (baseline) | eventID list | page of 500 Retrying (of n) | page of 500, no selector | every latest entry read from NATS in-process | apiserver peak RSS |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--attempts: %w", err)
		}
		namespace := fmt.Sprintf("bench-%d", n)
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
			return err
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "baseline", Namespace: namespace}}
		if err := k8s.Create(ctx, cm); err != nil {
			return err
		}
		deliveries, retrying, err := fill(ctx, js, namespace, n, endpoints)
		if err != nil {
			return err
		}
		probe := "evt_" + strconv.Itoa(deliveries/endpoints/2) // in the middle of the log
		get := median(runs, func() error {
			_, err := admin.Delivery(ctx, namespace, probe, "ep-7")
			return err
		})
		base := median(runs, func() error { return k8s.Get(ctx, client.ObjectKeyFromObject(cm), &corev1.ConfigMap{}) })
		byEvent := median(runs, func() error {
			_, err := admin.EventStatus(ctx, namespace, probe)
			return err
		})
		page := median(runs, func() error {
			l, err := admin.Deliveries(ctx, namespace, metav1.ListOptions{FieldSelector: "phase=Retrying", Limit: 500})
			if err == nil && len(l.Items) != min(500, retrying) {
				err = fmt.Errorf("got %d retrying, want %d", len(l.Items), min(500, retrying))
			}
			return err
		})
		all := median(runs, func() error {
			_, err := admin.Deliveries(ctx, namespace, metav1.ListOptions{Limit: 500})
			return err
		})
		direct := median(runs, func() error {
			return reader.Deliveries(ctx, namespace, deliverylog.Selector{}, func(*v1.WebhookDelivery) {})
		})
		fmt.Printf("| %d | %d | %s | %s | %s | %s (%d) | %s | %s | %s |\n", n, deliveries, ms(get), ms(base), ms(byEvent), ms(page), retrying, ms(all), ms(direct), peakRSS(srv.Process.Pid))
	}
	return nil
}

// fill writes n delivery-log entries to namespace as a dispatcher would:
// two attempts per delivery, spread over the endpoints; of the
// deliveries, one in ten ends retrying, one in fifty dead, the rest sent.
func fill(ctx context.Context, js jetstream.JetStream, namespace string, n, endpoints int) (deliveries, retrying int, err error) {
	if err := streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), namespace); err != nil {
		return 0, 0, err
	}
	start := time.Now().Add(-time.Hour)
	deliveries = n / 2
	for d := range deliveries {
		id, ep := "evt_"+strconv.Itoa(d/endpoints), "ep-"+strconv.Itoa(d%endpoints)
		final := dispatcher.OutcomeDelivered
		switch {
		case d%50 == 0:
			final = dispatcher.OutcomeDead
		case d%10 == 0:
			final = dispatcher.OutcomeRetrying
			retrying++
		}
		for attempt := 1; attempt <= 2; attempt++ {
			at := start.Add(time.Duration(d) * time.Millisecond)
			next := at.Add(time.Minute)
			a := dispatcher.Attempt{EventID: id, Namespace: namespace, Endpoint: ep, Type: "plan.changed", Key: "sub_" + strconv.Itoa(d%997),
				Version: int64(d), Sequence: uint64(d + 1), Attempt: attempt, Time: at, Outcome: dispatcher.OutcomeRetrying,
				StatusCode: 503, Reason: "HTTP503", Error: "HTTP 503", LatencyMS: 12.5, Response: `{"error":"busy"}`, NextAttempt: &next}
			if attempt == 2 {
				a.Outcome = final
				if final == dispatcher.OutcomeDelivered {
					a.StatusCode, a.Reason, a.Error, a.Response, a.NextAttempt = 200, "", "", "", nil
				}
			}
			b, err := json.Marshal(a)
			if err != nil {
				return 0, 0, err
			}
			if _, err := js.PublishAsync(streams.AttemptSubject(namespace, ep, id), b); err != nil {
				return 0, 0, err
			}
		}
		if d%1000 == 999 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				return 0, 0, fmt.Errorf("publishing the log timed out")
			}
		}
	}
	<-js.PublishAsyncComplete()
	return deliveries, retrying, nil
}

// median runs f runs times after one warm-up and returns the median time.
func median(runs int, f func() error) time.Duration {
	if err := f(); err != nil {
		return -1
	}
	ts := make([]time.Duration, runs)
	for i := range ts {
		t := time.Now()
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, "request failed:", err)
			return -1
		}
		ts[i] = time.Since(t)
	}
	slices.Sort(ts)
	return ts[runs/2]
}

func ms(d time.Duration) string {
	if d < 0 {
		return "failed"
	}
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

// peakRSS is a process's high-water resident set (VmHWM).
func peakRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return fmt.Sprintf("%d MiB", kb/1024)
		}
	}
	return "?"
}
