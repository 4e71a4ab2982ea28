package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/natsauth/natsauthtest"
	"github.com/herald-dev/herald/internal/pool"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

// TestDispatcherPool runs the shared pool as `herald dispatcher-pool`
// builds it, against a real API server (which mints and reviews the
// tokens) and a real NATS with Herald's auth callout: every namespace
// connects as its own dispatcher, a namespace whose identity cannot be
// minted delays no other, and a namespace that leaves and comes back is
// served again.
func TestDispatcherPool(t *testing.T) {
	env, err := testenv.ControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting the API server: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k8s, err := client.New(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := natsauthtest.Start(t.TempDir(), k8s, nil, testr.New(t))
	if err != nil {
		t.Fatalf("starting NATS with the callout: %v", err)
	}
	t.Cleanup(srv.Close)

	// One receiver; each namespace's endpoint posts to its own path.
	var mu sync.Mutex
	got := map[string][]string{} // namespace -> event ids
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env events.Envelope
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &env)
		mu.Lock()
		got[strings.TrimPrefix(r.URL.Path, "/")] = append(got[strings.TrimPrefix(r.URL.Path, "/")], env.ID)
		mu.Unlock()
	}))
	t.Cleanup(rcv.Close)
	received := func(ns, id string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(got[ns], id)
	}

	key, err := signing.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := events.NewPublisher(srv.AdminJS)
	if err != nil {
		t.Fatal(err)
	}
	// a and b are shared tenants as the operator leaves them; c lacks its
	// dispatcher ServiceAccount, so no token can be minted for it.
	endpoints := map[string]dispatcher.Endpoint{}
	for _, ns := range []string{"pool-a", "pool-b", "pool-c"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		if ns != "pool-c" {
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: natsauth.DispatcherServiceAccount, Namespace: ns}}
			if err := k8s.Create(ctx, sa); err != nil {
				t.Fatal(err)
			}
		}
		if err := streams.EnsureNamespace(ctx, srv.AdminJS, streams.DefaultLimits(), ns); err != nil {
			t.Fatal(err)
		}
		spec := v1.WebhookEndpointSpec{Timeout: &metav1.Duration{Duration: 2 * time.Second}, MaxInFlight: 4}
		cc, err := streams.ConsumerConfig(ns, "crm", &spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := srv.AdminJS.CreateOrUpdateConsumer(ctx, events.StreamName(ns), cc); err != nil {
			t.Fatal(err)
		}
		policy := dispatcher.DefaultPolicy()
		policy.Schedule = []time.Duration{200 * time.Millisecond}
		endpoints[ns] = dispatcher.Endpoint{Namespace: ns, Name: "crm", URL: rcv.URL + "/" + ns, Keys: []signing.Key{key},
			Timeout: 2 * time.Second, PerKey: true, MaxInFlight: 4, Policy: policy}
	}

	versions, err := dispatcher.NewVersionCache(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	loopback := egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	connect := func(ns string, closed func()) (*nats.Conn, error) {
		tokens := &mintedToken{kube: kube, namespace: ns, audience: natsauth.DefaultAudience, log: testr.New(t)}
		return connectAsDispatcher(natsConn{url: srv.URL}, ns, tokens.get, closed)
	}
	newDispatcher := func(ctx context.Context, ns string, js jetstream.JetStream) (*dispatcher.Dispatcher, error) {
		return dispatcher.New(ctx, js, dispatcher.WithEgressGuard(egress.New(loopback)), dispatcher.WithVersionCache(versions),
			dispatcher.WithDrainTimeout(2*time.Second))
	}
	p := pool.New(connect, newDispatcher, testr.New(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for _, ep := range endpoints {
		p.Upsert(ep)
	}

	publish := func(ns, id string) {
		t.Helper()
		if _, err := pub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "customer.updated", Key: "cus_1",
			Data: json.RawMessage(`{"plan":"pro"}`)}); err != nil {
			t.Fatalf("publishing to %s: %v", ns, err)
		}
	}
	g := gomega.NewWithT(t)
	eventually := func(what string, cond func() bool) {
		t.Helper()
		g.Eventually(cond).WithTimeout(30*time.Second).WithPolling(50*time.Millisecond).Should(gomega.BeTrue(), what)
	}

	publish("pool-a", "evt_a1")
	publish("pool-b", "evt_b1")
	publish("pool-c", "evt_c1")
	eventually("pool-a and pool-b delivered", func() bool { return received("pool-a", "evt_a1") && received("pool-b", "evt_b1") })
	if received("pool-c", "evt_c1") {
		t.Fatal("pool-c was delivered without an identity of its own")
	}

	// pool-a leaves (its last endpoint goes) and comes back: the second
	// Dispatcher starts only after the first stopped, and delivers.
	p.Remove("pool-a", "crm")
	if slices.Contains(p.Namespaces(), "pool-a") {
		t.Fatal("pool-a still served after its last endpoint went")
	}
	p.Upsert(endpoints["pool-a"])
	publish("pool-a", "evt_a2")
	eventually("pool-a delivered again", func() bool { return received("pool-a", "evt_a2") })

	// pool-c gets its ServiceAccount: the next reconnect mints a token and
	// its waiting event is delivered.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: natsauth.DispatcherServiceAccount, Namespace: "pool-c"}}
	if err := k8s.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	eventually("pool-c delivered once it has an identity", func() bool { return received("pool-c", "evt_c1") })
}
