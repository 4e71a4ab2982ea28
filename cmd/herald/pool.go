package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/pool"
)

func init() {
	register("dispatcher-pool", "deliver the webhooks of every namespace labelled "+
		heraldv1.DispatcherLabel+"="+heraldv1.DispatcherShared+", each as its own NATS identity (one Deployment beside the operator)", server(runDispatcherPool))
}

// poolTokenTTL is how long a minted dispatcher token lives; it is renewed
// at four fifths of that, as the kubelet renews a projected one.
const poolTokenTTL = time.Hour

func runDispatcherPool(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("herald dispatcher-pool", flag.ContinueOnError)
	conn := natsFlags(fs)
	audience := fs.String("nats-audience", natsauth.DefaultAudience, "audience of the dispatcher tokens the pool mints (the manager's --nats-audience)")
	metricsAddr := fs.String("metrics-bind-address", ":8080", "metrics address (plain http, scraped inside the cluster), 0 to disable")
	probeAddr := fs.String("health-probe-bind-address", ":8081", "health and readiness probe address")
	egressCfg := egressFlags(fs)
	resync := fs.Duration("resync-interval", controller.DefaultDispatchResync, "how often each endpoint's Secret is re-read (rotation latency)")
	cacheBytes := int64(dispatcher.DefaultVersionCacheBytes)
	fs.Var(bytesFlag{&cacheBytes}, "version-cache-bytes", "memory the delivered-version caches take, every namespace's endpoints together")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if conn.tokenFile != "" || conn.nkeyFile != "" || conn.creds != "" {
		return errors.New("the pool connects as each namespace's dispatcher, with tokens it mints; give it no --nats-token-file, --nats-nkey-file or --nats-creds")
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("dispatcher-pool")

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	// A restarted pool mints a token per namespace at once; client-go's
	// default 5 requests/s would take over three minutes for 1,000.
	tokenCfg := rest.CopyConfig(restCfg)
	tokenCfg.QPS, tokenCfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(tokenCfg)
	if err != nil {
		return fmt.Errorf("creating a Kubernetes client: %w", err)
	}
	versions, err := dispatcher.NewVersionCache(cacheBytes)
	if err != nil {
		return err
	}
	connect := func(namespace string, closed func()) (*nats.Conn, error) {
		tokens := &mintedToken{kube: kube, namespace: namespace, audience: *audience,
			log: log.WithValues("namespace", namespace)}
		return connectAsDispatcher(*conn, namespace, tokens.get, closed)
	}
	newDispatcher := func(ctx context.Context, namespace string, js jetstream.JetStream) (*dispatcher.Dispatcher, error) {
		// A guard per namespace: its resolver cache and its refusals are
		// the namespace's own.
		return dispatcher.New(ctx, js, dispatcher.WithLogger(log.WithValues("namespace", namespace)),
			dispatcher.WithEgressGuard(egress.New(*egressCfg)), dispatcher.WithVersionCache(versions))
	}
	p := pool.New(connect, newDispatcher, log)

	mgr, err := newDispatcherManager(restCfg, *metricsAddr, *probeAddr, cache.Options{})
	if err != nil {
		return err
	}
	// One namespace's NATS trouble must not restart the pool (it rebuilds
	// that namespace's connection), so the checks are the process's only.
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}
	if err := controller.SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(p.Run)); err != nil {
		return fmt.Errorf("adding the pool: %w", err)
	}
	// Its Role in each namespace allows only `get` on the named Secrets:
	// no Secret watch, rotations arrive with the periodic resync.
	if err := (&controller.DispatchReconciler{Client: mgr.GetClient(), Dispatcher: p, SharedOnly: true,
		WatchSecrets: false, Resync: *resync, Egress: egress.New(*egressCfg)}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up dispatch controller: %w", err)
	}
	log.Info("starting the shared dispatcher pool", "natsURL", redactURLs(conn.url))
	return mgr.Start(ctx)
}

// connectAsDispatcher connects as namespace's dispatcher ServiceAccount,
// with the token token returns at every connect and reconnect, the same
// TLS as every Herald client and reconnects forever; closed runs when
// nats.go closes the connection for good.
func connectAsDispatcher(c natsConn, namespace string, token func() string, closed func()) (*nats.Conn, error) {
	tlsOpts, err := natsOptions(c, namespace)
	if err != nil {
		return nil, err
	}
	opts := append([]nats.Option{
		nats.Name("herald-dispatcher-pool-" + namespace),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
		nats.NoCallbacksAfterClientClose(),
		nats.ClosedHandler(func(*nats.Conn) { closed() }),
		nats.TokenHandler(token),
		nats.CustomInboxPrefix(natsauth.Inbox(namespace, natsauth.DispatcherServiceAccount)),
		// As a dedicated dispatcher: the callout refuses while the
		// manager restarts, and the token is minted only once the
		// namespace's pod is gone (see controller.reconcileShared).
		nats.IgnoreAuthErrorAbort(),
	}, tlsOpts...)
	nc, err := nats.Connect(c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", redactURLs(c.url), err)
	}
	return nc, nil
}

// mintedToken is a namespace's dispatcher token, requested from the API
// server (TokenRequest) and renewed before it expires. A failed request
// sends no token: NATS refuses that, and nats.go tries again.
type mintedToken struct {
	kube      kubernetes.Interface
	namespace string
	audience  string
	log       logr.Logger

	mu      sync.Mutex
	token   string
	renewAt time.Time
}

func (m *mintedToken) get() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.token != "" && time.Now().Before(m.renewAt) {
		return m.token
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ttl := int64(poolTokenTTL / time.Second)
	tr, err := m.kube.CoreV1().ServiceAccounts(m.namespace).CreateToken(ctx, natsauth.DispatcherServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{m.audience}, ExpirationSeconds: &ttl}},
		metav1.CreateOptions{})
	if err != nil {
		// The error names the ServiceAccount, never a token.
		m.log.Error(err, "minting the namespace's dispatcher token; NATS will refuse until it can be minted")
		return ""
	}
	now := time.Now()
	m.token, m.renewAt = tr.Status.Token, now.Add(tr.Status.ExpirationTimestamp.Sub(now)*4/5)
	return m.token
}
