package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/streams"
)

func init() {
	register("manager", "run the operator (reconcilers; --dispatch=in-process also delivers)", server(runManager))
}

type managerFlags struct {
	nats                       natsConn
	streamReplicas             int
	maxBodyBytes               int
	limits                     streams.Limits
	versionCacheBytes          int64
	dispatcherResources        corev1.ResourceRequirements
	dispatcherImagePullPolicy  string
	dispatch                   string
	dispatcherImage            string
	dispatcherNATSURL          string
	dispatcherPool             string
	pool                       types.NamespacedName // parsed --dispatcher-pool
	dispatcherNATSTokenAuth    bool
	dispatcherNetworkPolicy    bool
	natsKeysDir                string
	natsAudience               string
	watchNamespaces            string
	natsReaders                string
	leaderElect                bool
	metricsAddr, probeAddr     string
	pprofAddr                  string
	metricsSecure              bool
	ensureInterval             time.Duration
	resyncInterval, writeEvery time.Duration
	writeBudget, resyncBudget  float64
	egress                     *egress.Config
}

func runManager(ctx context.Context, args []string) error {
	var f managerFlags
	fs := flag.NewFlagSet("herald manager", flag.ContinueOnError)
	fs.StringVar(&f.nats.url, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated, without credentials")
	fs.StringVar(&f.nats.creds, "nats-creds", "", "NATS credentials file (optional)")
	natsAuthFlags(fs, &f.nats)
	fs.IntVar(&f.streamReplicas, "stream-replicas", 1, "replicas of Herald's streams and buckets: 1 for one server, 3 for a production cluster")
	fs.IntVar(&f.maxBodyBytes, "max-body-bytes", streams.DefaultLimits().MaxBodyBytes, "largest event envelope the events stream accepts")
	d := streams.DefaultLimits()
	fs.DurationVar(&f.limits.DuplicateWindow, "duplicate-window", d.DuplicateWindow, "how long a published event id is remembered, so a retried publish is stored once")
	fs.DurationVar(&f.limits.EventsMaxAge, "events-max-age", d.EventsMaxAge, "how long events stay in the events stream")
	fs.DurationVar(&f.limits.AttemptsMaxAge, "attempts-max-age", d.AttemptsMaxAge, "how long the delivery log keeps an attempt")
	fs.DurationVar(&f.limits.DeadLetterMaxAge, "dead-letter-max-age", d.DeadLetterMaxAge, "how long a dead letter is kept for replay")
	fs.DurationVar(&f.limits.VersionsMaxAge, "versions-max-age", d.VersionsMaxAge, "how long the newest delivered version of a key is remembered; must outlive replays")
	f.limits.EventsMaxBytes, f.limits.AttemptsMaxBytes, f.limits.DeadLetterMaxBytes = d.EventsMaxBytes, d.AttemptsMaxBytes, d.DeadLetterMaxBytes
	f.limits.VersionsMaxBytes, f.limits.HealthMaxBytes, f.limits.ReplayMaxBytes = d.VersionsMaxBytes, d.HealthMaxBytes, d.ReplayMaxBytes
	fs.Var(bytesFlag{&f.limits.EventsMaxBytes}, "events-max-bytes", "byte budget of the events stream; when full it refuses new publishes (producers get an error), never drops stored events")
	fs.Var(bytesFlag{&f.limits.AttemptsMaxBytes}, "attempts-max-bytes", "byte budget of the delivery log; when full it drops its oldest entries")
	fs.Var(bytesFlag{&f.limits.DeadLetterMaxBytes}, "dead-letter-max-bytes", "byte budget of the dead letters; when full new dead letters wait (their events are kept, not resent)")
	fs.Var(bytesFlag{&f.limits.VersionsMaxBytes}, "versions-max-bytes", "byte budget of the delivered-versions bucket")
	fs.Var(bytesFlag{&f.limits.HealthMaxBytes}, "health-max-bytes", "byte budget of the endpoint health bucket")
	f.versionCacheBytes = dispatcher.DefaultVersionCacheBytes
	fs.Var(bytesFlag{&f.versionCacheBytes}, "version-cache-bytes", "memory the in-process dispatcher's delivered-version caches take, all endpoints together")
	fs.Var(bytesFlag{&f.limits.ReplayMaxBytes}, "replay-max-bytes", "byte budget of the replays' copies and outcomes; when full new replays wait")
	fs.StringVar(&f.dispatch, "dispatch", string(controller.DispatchDeployment), "where deliveries run: deployment (one dispatcher Deployment per namespace) or in-process (inside this manager)")
	fs.StringVar(&f.dispatcherImage, "dispatcher-image", "", "image of the per-namespace dispatcher (this binary); required with --dispatch=deployment")
	def := controller.DefaultDispatcherResources()
	fs.Var(quantityFlag{def.Requests, corev1.ResourceCPU}, "dispatcher-cpu-request", "CPU request of each dispatcher pod")
	fs.Var(quantityFlag{def.Requests, corev1.ResourceMemory}, "dispatcher-memory-request", "memory request of each dispatcher pod")
	fs.Var(quantityFlag{def.Limits, corev1.ResourceCPU}, "dispatcher-cpu-limit", "CPU limit of each dispatcher pod")
	fs.Var(quantityFlag{def.Limits, corev1.ResourceMemory}, "dispatcher-memory-limit", "memory limit of each dispatcher pod")
	f.dispatcherResources = def
	fs.StringVar(&f.dispatcherImagePullPolicy, "dispatcher-image-pull-policy", string(corev1.PullIfNotPresent), "image pull policy of the dispatcher pods")
	fs.StringVar(&f.dispatcherPool, "dispatcher-pool", defaultPool(), "namespace/name of the shared dispatcher pool's Deployment and ServiceAccount, which delivers for the namespaces labelled "+heraldv1.DispatcherLabel+"="+heraldv1.DispatcherShared+" (default: herald-dispatcher-pool beside the manager, env POD_NAMESPACE)")
	fs.StringVar(&f.dispatcherNATSURL, "dispatcher-nats-url", "", "NATS URL the dispatcher pods use (default: --nats-url)")
	fs.BoolVar(&f.dispatcherNATSTokenAuth, "dispatcher-nats-token-auth", true, "give each dispatcher pod a projected ServiceAccount token (audience --nats-audience) as its NATS identity, which NATS's auth callout checks; a NATS without auth ignores it")
	fs.BoolVar(&f.dispatcherNetworkPolicy, "dispatcher-network-policy", true, "give the dispatcher pods a NetworkPolicy (DNS, NATS, the API server, the internet; no private ranges but --egress-allow) as a second layer behind the egress guard; it needs a CNI that enforces policies")
	fs.StringVar(&f.natsKeysDir, "nats-keys-dir", os.Getenv("NATS_KEYS_DIR"), "directory of Herald's NATS keys (herald nats-keys writes them): the manager connects as the auth callout's user, serves the callout, giving each ServiceAccount token a user of its namespace's own account, and pushes those accounts to NATS (env NATS_KEYS_DIR)")
	fs.StringVar(&f.natsReaders, "nats-readers", defaultReaders(), "comma-separated ServiceAccounts (namespace/name) that read every namespace's delivery log through NATS: the delivery API server's (default: herald-apiserver in the manager's namespace, env POD_NAMESPACE)")
	fs.StringVar(&f.natsAudience, "nats-audience", natsauth.DefaultAudience, "audience of the ServiceAccount tokens NATS accepts (and the dispatchers' projected tokens carry)")
	f.egress = egressFlags(fs)
	fs.StringVar(&f.watchNamespaces, "watch-namespaces", "", "comma-separated namespaces to reconcile; empty means all")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "elect a leader so only one replica reconciles and dispatches")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", "0", "metrics address (:8443 for https, :8080 for http, 0 to disable)")
	fs.BoolVar(&f.metricsSecure, "metrics-secure", true, "serve metrics over https behind Kubernetes authn/authz")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "health and readiness probe address")
	fs.StringVar(&f.pprofAddr, "pprof-bind-address", "", "address of Go's profiler (/debug/pprof), for measuring the manager: keep it on loopback; empty disables it")
	fs.DurationVar(&f.ensureInterval, "ensure-interval", 5*time.Minute, "how often streams and buckets are brought back to their configured limits, and the empty streams of namespaces without endpoints removed")
	fs.DurationVar(&f.resyncInterval, "resync-interval", controller.DefaultResyncInterval, "periodic pass per endpoint (consumer drift, backlog, lag)")
	fs.DurationVar(&f.writeEvery, "status-write-interval", controller.DefaultMinStatusWriteInterval, "least time between two status writes of one endpoint that change no condition")
	fs.Float64Var(&f.resyncBudget, "quiet-resync-budget", controller.DefaultQuietResyncBudget, "periodic passes a second over quiet endpoints (Ready, nothing waiting, no failures), all together; with more of them than that covers at --resync-interval, their interval stretches (health changes still wake them at once)")
	fs.Float64Var(&f.writeBudget, "status-write-budget", controller.DefaultStatusWriteBudget, "status writes a second that change no condition, all endpoints together; with more endpoints than that covers at --status-write-interval, each endpoint's interval stretches")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	mode := controller.DispatchMode(f.dispatch)
	switch mode {
	case controller.DispatchInProcess:
	case controller.DispatchDeployment:
		if f.dispatcherImage == "" {
			return fmt.Errorf("--dispatcher-image is required with --dispatch=deployment")
		}
	default:
		return fmt.Errorf("--dispatch must be in-process or deployment, not %q", f.dispatch)
	}
	if f.dispatcherNATSURL == "" {
		f.dispatcherNATSURL = f.nats.url
	}
	poolNS, poolName, ok := strings.Cut(f.dispatcherPool, "/")
	if !ok || poolNS == "" || poolName == "" {
		return fmt.Errorf("--dispatcher-pool must be namespace/name, not %q", f.dispatcherPool)
	}
	f.pool = types.NamespacedName{Namespace: poolNS, Name: poolName}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("manager")
	namespaces := splitList(f.watchNamespaces)

	var keys *natsauth.Keys
	var identity []nats.Option
	if f.natsKeysDir != "" {
		if f.nats.tokenFile != "" || f.nats.nkeyFile != "" || f.nats.creds != "" {
			return errors.New("--nats-keys-dir is the manager's whole NATS identity: give no --nats-token-file, --nats-nkey-file or --nats-creds with it")
		}
		k, err := natsauth.ReadKeys(f.natsKeysDir)
		if err != nil {
			return err
		}
		keys, identity = &k, []nats.Option{k.ManagerOption()}
	}
	nc, js, err := connectNATS(f.nats, "herald-manager", "", identity...)
	if err != nil {
		return err
	}
	defer nc.Close()
	limits := f.limits
	limits.Replicas = f.streamReplicas
	limits.MaxBodyBytes = f.maxBodyBytes

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	metricsOpts := metricsserver.Options{BindAddress: f.metricsAddr, SecureServing: f.metricsSecure}
	if f.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	cacheOpts := cache.Options{ByObject: controller.CacheByObject()}
	if len(namespaces) > 0 {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			cacheOpts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	scheme, err := newScheme()
	if err != nil {
		return fmt.Errorf("building scheme: %w", err)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        f.probeAddr,
		PprofBindAddress:              f.pprofAddr,
		LeaderElection:                f.leaderElect,
		LeaderElectionID:              "herald-manager.herald.dev",
		LeaderElectionReleaseOnCancel: true,
		Cache:                         cacheOpts,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if err := addChecks(mgr, nc); err != nil {
		return err
	}
	if keys != nil {
		// The system account's user pushes the namespaces' accounts.
		sysOpt, err := keys.SystemOption()
		if err != nil {
			return err
		}
		sys, _, err := connectNATS(f.nats, "herald-manager-system", "", sysOpt)
		if err != nil {
			return fmt.Errorf("connecting to NATS's system account: %w", err)
		}
		defer sys.Close()
		if err := mgr.Add(&natsauth.Callout{NC: nc, Accounts: &natsauth.Accounts{Keys: *keys, SYS: sys}, Client: mgr.GetClient(),
			Audience: f.natsAudience, Readers: splitList(f.natsReaders), Log: ctrl.Log.WithName("nats-callout")}); err != nil {
			return fmt.Errorf("adding NATS auth callout: %w", err)
		}
	}
	if err := mgr.Add(&controller.NamespaceStreams{Client: mgr.GetAPIReader(), JS: js, Limits: limits, Every: f.ensureInterval, Namespaces: namespaces}); err != nil {
		return fmt.Errorf("adding stream ensurer: %w", err)
	}
	if err := mgr.Add(&controller.StorageMetrics{JS: js}); err != nil {
		return fmt.Errorf("adding storage metrics: %w", err)
	}
	if err := setupControllers(ctx, mgr, js, mode, f, limits, namespaces); err != nil {
		return err
	}
	log.Info("starting manager", "dispatch", mode, "watchNamespaces", namespaces, "natsURL", redactURLs(f.nats.url))
	return mgr.Start(ctx)
}

func setupControllers(ctx context.Context, mgr ctrl.Manager, js jetstream.JetStream, mode controller.DispatchMode, f managerFlags, limits streams.Limits, namespaces []string) error {
	if err := controller.SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	guard := egress.New(*f.egress)
	hw := controller.NewHealthWatcher(js, f.writeEvery, namespaces)
	if err := mgr.Add(hw); err != nil {
		return fmt.Errorf("adding health watcher: %w", err)
	}
	if err := (&controller.WebhookEndpointReconciler{
		Client:                 mgr.GetClient(),
		JS:                     js,
		Recorder:               mgr.GetEventRecorder("herald-operator"),
		Mode:                   mode,
		Pool:                   f.pool,
		ResyncInterval:         f.resyncInterval,
		MinStatusWriteInterval: f.writeEvery,
		StatusWriteBudget:      f.writeBudget,
		QuietResyncBudget:      f.resyncBudget,
		HealthEvents:           hw.Events(),
		// Status measures the oldest waiting event and the retry window
		// against how long the events stream keeps events.
		EventsRetention: f.limits.EventsMaxAge,
		// Endpoints at an address the dispatchers would refuse are
		// Stalled (URLRefused) before any attempt.
		Egress: guard,
		// A namespace's first endpoint creates its streams.
		Streams: limits,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up webhookendpoint controller: %w", err)
	}
	if err := (&controller.RetryPolicyReconciler{Client: mgr.GetClient(), EventsRetention: f.limits.EventsMaxAge}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up retrypolicy controller: %w", err)
	}
	if err := (&controller.WebhookReplayReconciler{Client: mgr.GetClient(), JS: js, Recorder: mgr.GetEventRecorder("herald-replay")}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up webhookreplay controller: %w", err)
	}
	switch mode {
	case controller.DispatchDeployment:
		// The dispatchers verify NATS with this manager's CA bundle, read
		// once: a new bundle reaches them with a restart of the manager.
		ca, err := f.nats.caBundle()
		if err != nil {
			return err
		}
		natsNS, natsPort := natsServiceOf(f.dispatcherNATSURL)
		if err := (&controller.DispatcherDeploymentReconciler{
			Client: mgr.GetClient(),
			Config: controller.DispatcherConfig{Image: f.dispatcherImage, NATSURL: f.dispatcherNATSURL,
				ImagePullPolicy: corev1.PullPolicy(f.dispatcherImagePullPolicy), Resources: &f.dispatcherResources,
				EgressAllow: f.egress.Allow, EgressDeny: f.egress.Deny,
				NATSTokenAuth: f.dispatcherNATSTokenAuth, NATSAudience: f.natsAudience, NATSCA: ca, NATSServerName: f.nats.serverName,
				NetworkPolicy: f.dispatcherNetworkPolicy, NATSNamespace: natsNS, NATSPort: natsPort, Pool: f.pool},
		}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up dispatcher deployment controller: %w", err)
		}
	case controller.DispatchInProcess:
		d, err := dispatcher.New(ctx, js, dispatcher.WithLogger(ctrl.Log.WithName("dispatcher")),
			dispatcher.WithEgressGuard(guard), dispatcher.WithVersionCacheBytes(f.versionCacheBytes))
		if err != nil {
			return fmt.Errorf("creating dispatcher: %w", err)
		}
		// A RunnableFunc needs leader election: only the leader delivers.
		if err := mgr.Add(manager.RunnableFunc(d.Run)); err != nil {
			return fmt.Errorf("adding dispatcher: %w", err)
		}
		if err := (&controller.DispatchReconciler{Client: mgr.GetClient(), Dispatcher: d, WatchSecrets: true, Egress: guard}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up dispatch controller: %w", err)
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// quantityFlag sets one resource of a ResourceList from a flag such as
// --dispatcher-cpu-limit=2.
type quantityFlag struct {
	list corev1.ResourceList
	name corev1.ResourceName
}

func (q quantityFlag) String() string {
	if q.list == nil {
		return ""
	}
	v := q.list[q.name]
	return v.String()
}

func (q quantityFlag) Set(s string) error {
	v, err := resource.ParseQuantity(s)
	if err != nil {
		return fmt.Errorf("%s: %w", q.name, err)
	}
	q.list[q.name] = v
	return nil
}

// bytesFlag sets a byte count from a quantity such as 8Gi or 500Mi.
type bytesFlag struct{ p *int64 }

func (b bytesFlag) String() string {
	if b.p == nil {
		return ""
	}
	return resource.NewQuantity(*b.p, resource.BinarySI).String()
}

func (b bytesFlag) Set(s string) error {
	v, err := resource.ParseQuantity(s)
	if err != nil {
		return err
	}
	*b.p = v.Value()
	return nil
}

// natsServiceOf reads the namespace and port of NATS's Service from the
// dispatchers' NATS URL (nats://<service>.<namespace>.svc...:<port>), for
// their NetworkPolicy; "" (any namespace) when the host says nothing.
func natsServiceOf(urls string) (namespace string, port int32) {
	first, _, _ := strings.Cut(urls, ",")
	if !strings.Contains(first, "://") {
		first = "nats://" + first
	}
	u, err := neturl.Parse(strings.TrimSpace(first))
	if err != nil {
		return "", 0
	}
	if p, err := strconv.ParseInt(u.Port(), 10, 32); err == nil {
		port = int32(p)
	}
	labels := strings.Split(u.Hostname(), ".")
	if len(labels) == 2 || (len(labels) > 2 && labels[2] == "svc") {
		namespace = labels[1]
	}
	return namespace, port
}

// defaultPool is the shared dispatcher pool beside the manager.
func defaultPool() string {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = controller.DefaultPool().Namespace
	}
	return ns + "/" + controller.PoolName
}

// defaultReaders is the delivery API server's ServiceAccount beside the
// manager: in its own namespace, never in one a tenant could create.
func defaultReaders() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns + "/herald-apiserver"
	}
	return ""
}
