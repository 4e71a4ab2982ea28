package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
)

func init() {
	register("dispatcher", "deliver the webhooks of one namespace (run by the operator as a Deployment)", server(runDispatcher))
}

func runDispatcher(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("herald dispatcher", flag.ContinueOnError)
	namespace := fs.String("namespace", os.Getenv("POD_NAMESPACE"), "the namespace whose endpoints this dispatcher delivers")
	conn := natsFlags(fs)
	metricsAddr := fs.String("metrics-bind-address", ":8080", "metrics address (plain http, scraped inside the cluster), 0 to disable")
	probeAddr := fs.String("health-probe-bind-address", ":8081", "health and readiness probe address")
	egressCfg := egressFlags(fs)
	resync := fs.Duration("resync-interval", controller.DefaultDispatchResync, "how often each endpoint's Secret is re-read (rotation latency)")
	cacheBytes := int64(dispatcher.DefaultVersionCacheBytes)
	fs.Var(bytesFlag{&cacheBytes}, "version-cache-bytes", "memory the delivered-version caches take, all endpoints together")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *namespace == "" {
		return fmt.Errorf("--namespace is required")
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("dispatcher").WithValues("namespace", *namespace)

	nc, js, err := conn.connect("herald-dispatcher-"+*namespace, *namespace)
	if err != nil {
		return err
	}
	defer nc.Close()
	// The operator creates the buckets; wait for them rather than crash.
	guard := egress.New(*egressCfg)
	var d *dispatcher.Dispatcher
	for {
		d, err = dispatcher.New(ctx, js, dispatcher.WithLogger(log), dispatcher.WithEgressGuard(guard), dispatcher.WithVersionCacheBytes(cacheBytes))
		if err == nil {
			break
		}
		log.Error(err, "opening Herald's NATS buckets; retrying in 5s")
		select {
		case <-ctx.Done():
			return fmt.Errorf("creating dispatcher: %w", err)
		case <-time.After(5 * time.Second):
		}
	}

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	mgr, err := newDispatcherManager(restCfg, *metricsAddr, *probeAddr, cache.Options{DefaultNamespaces: map[string]cache.Config{*namespace: {}}})
	if err != nil {
		return err
	}
	if err := addChecks(mgr, nc); err != nil {
		return err
	}
	if err := controller.SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(d.Run)); err != nil {
		return fmt.Errorf("adding dispatcher: %w", err)
	}
	// The Role allows only `get` on the named Secrets: no Secret watch,
	// rotations arrive with the periodic resync.
	if err := (&controller.DispatchReconciler{Client: mgr.GetClient(), Dispatcher: d, WatchSecrets: false, Resync: *resync, Egress: guard}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up dispatch controller: %w", err)
	}
	log.Info("starting dispatcher", "natsURL", redactURLs(conn.url))
	return mgr.Start(ctx)
}

// newDispatcherManager is the manager of a process that delivers (a
// namespace's dispatcher, the shared pool): one replica with the Recreate
// strategy, since two would pull the same consumers, so no leader
// election and no Lease rights.
func newDispatcherManager(restCfg *rest.Config, metricsAddr, probeAddr string, c cache.Options) (manager.Manager, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, fmt.Errorf("building scheme: %w", err)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         false,
		Cache:                  c,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	return mgr, nil
}
