// Package apiservertest runs Herald's delivery API server for tests, behind
// envtest's aggregation layer. It is apart from testenv so that packages
// which controller-gen reads (it builds without generated code, such as
// the API server's OpenAPI definitions) never import the API server.
package apiservertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/herald-dev/herald/internal/apiserver"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/testenv"
)

// The delivery API's APIService and the identity its server runs as, as
// config/default ships them.
const (
	APIService = "v1alpha1.delivery.herald.dev"
	User       = "system:serviceaccount:herald-system:herald-apiserver"
)

// Start runs Herald's delivery API server in this process, as its
// ServiceAccount, behind env's aggregation layer (ConfigureAggregation
// before env.Start), reading the delivery log in js. It installs the
// shipped RBAC and APIService first, and returns once the APIService is
// Available, with the server's own address (for requests that skip
// kube-apiserver) and a stop that waits for it. One per process:
// genericapiserver keeps global state.
func Start(ctx context.Context, env *envtest.Environment, c client.Client, js jetstream.JetStream, dir string) (addr string, stop func(), err error) {
	err = testenv.Install(ctx, c, func(u *unstructured.Unstructured) bool {
		switch u.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "APIService":
			return true
		}
		return false
	})
	if err != nil {
		return "", nil, err
	}
	if err := testenv.AggregateClusterRoles(ctx, c); err != nil {
		return "", nil, err
	}

	user, err := env.AddUser(envtest.User{Name: User}, env.Config)
	if err != nil {
		return "", nil, fmt.Errorf("adding the delivery API's user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return "", nil, err
	}
	kubeconfigFile := filepath.Join(dir, "herald-apiserver.kubeconfig")
	if err := os.WriteFile(kubeconfigFile, kubeconfig, 0o600); err != nil {
		return "", nil, err
	}
	tls := apiserver.ServingTLS{Namespace: "herald-system", Secret: "herald-apiserver-tls", Service: "herald-apiserver", APIService: APIService}
	if tls.Core, err = kubernetes.NewForConfig(user.Config()); err != nil {
		return "", nil, err
	}
	if tls.Dynamic, err = dynamic.NewForConfig(user.Config()); err != nil {
		return "", nil, err
	}
	cert, key, err := tls.Ensure(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("serving certificate: %w", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	o := apiserver.NewOptions()
	o.SecureServing.Listener = ln
	o.SecureServing.BindAddress = net.ParseIP("127.0.0.1")
	o.SecureServing.BindPort = port
	if err := o.UseCertificate(cert, key); err != nil {
		return "", nil, err
	}
	o.Authentication.RemoteKubeConfigFile = kubeconfigFile
	o.Authorization.RemoteKubeConfigFile = kubeconfigFile
	// A refusal is cached for 10 s by default; tests bind and check.
	o.Authorization.DenyCacheTTL = time.Millisecond
	if err := o.Validate(); err != nil {
		return "", nil, err
	}
	srv, err := apiserver.New(o, &deliverylog.Reader{JS: js})
	if err != nil {
		return "", nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.PrepareRun().RunWithContext(runCtx) }()
	stop = func() { cancel(); <-done }

	if err := testenv.ServeLocal(ctx, c, APIService, port); err != nil {
		stop()
		return "", nil, err
	}
	var why string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		ok, w, err := testenv.APIServiceAvailable(ctx, c, APIService)
		why = w
		return ok, err
	})
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("the delivery API did not become Available (%s): %w", why, err)
	}
	return ln.Addr().String(), stop, nil
}

// Env is a test cluster with the delivery API in it: kube-apiserver and
// etcd with the aggregation layer on, a NATS server, and the delivery API
// server reading it.
type Env struct {
	Env        *envtest.Environment
	Config     *rest.Config // system:masters
	Client     client.Client
	JS         jetstream.JetStream
	FrontProxy *testenv.FrontProxy
	// Addr is the delivery API server's own address.
	Addr string
}

// StartEnv starts an Env with its files in dir; stop ends all of it.
func StartEnv(ctx context.Context, dir string) (e *Env, stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	e = &Env{}
	if e.Env, err = testenv.ControlPlane(); err != nil {
		return nil, stop, err
	}
	if e.FrontProxy, err = testenv.ConfigureAggregation(e.Env, dir); err != nil {
		return nil, stop, err
	}
	if e.Config, err = e.Env.Start(); err != nil {
		return nil, stop, fmt.Errorf("starting the control plane: %w", err)
	}
	stops = append(stops, func() { _ = e.Env.Stop() })
	if e.Client, err = client.New(e.Config, client.Options{Scheme: testenv.Scheme()}); err != nil {
		return nil, stop, err
	}
	ns, err := testenv.NATS(filepath.Join(dir, "nats"))
	if err != nil {
		return nil, stop, err
	}
	stops = append(stops, ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, stop, err
	}
	stops = append(stops, nc.Close)
	if e.JS, err = jetstream.New(nc); err != nil {
		return nil, stop, err
	}
	addr, stopAPI, err := Start(ctx, e.Env, e.Client, e.JS, dir)
	if err != nil {
		return nil, stop, err
	}
	stops = append(stops, stopAPI)
	e.Addr = addr
	return e, stop, nil
}
