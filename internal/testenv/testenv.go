// Package testenv starts the real parts Herald's tests run against: an
// envtest control plane (kube-apiserver and etcd built by hack/) and an
// in-process NATS server with JetStream on file storage.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Scheme knows the core Kubernetes types and Herald's API.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := heraldv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// RepoRoot is the repository's root directory, found from this file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ControlPlane returns an envtest environment with Herald's CRDs. It needs
// KUBEBUILDER_ASSETS, which `make test` sets; without it the error says so.
func ControlPlane() (*envtest.Environment, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, which builds kube-apiserver and etcd into bin/k8s/")
	}
	return &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme(),
	}, nil
}

// NATS starts an in-process nats-server with JetStream on a random
// loopback port, storing in dir.
func NATS(dir string) (*natsserver.Server, error) { return NATSOn(dir, -1) }

// JetStream starts NATS for one test, as NATS does, and connects to it;
// both end with the test.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	srv, err := NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// NATSOn starts it on a given port: a restart is a new server on the old
// port and directory.
func NATSOn(dir string, port int) (*natsserver.Server, error) {
	return NATSWith(dir, func(o *natsserver.Options) { o.Port = port })
}

// NATSWith starts it with options a test changes (a smaller max payload,
// say) on top of the defaults.
func NATSWith(dir string, mutate func(*natsserver.Options)) (*natsserver.Server, error) {
	opts := &natsserver.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  dir,
		// JetStream reserves each stream's byte budget against this when
		// the stream is created; specs make a namespace each, so the test
		// server overcommits (writes are tiny) rather than run out.
		JetStreamMaxStore: 1 << 40,
		NoLog:             true,
		NoSigs:            true,
	}
	mutate(opts)
	s, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("creating nats server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats server not ready within 10s")
	}
	return s, nil
}

// NATSConfig starts an in-process nats-server from configuration text, as
// the nats-server binary would read it (accounts, authorization, auth
// callout), listening on a random loopback port with JetStream storing in
// dir.
func NATSConfig(dir, conf string) (*natsserver.Server, error) {
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("writing nats config: %w", err)
	}
	opts, err := natsserver.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading nats config: %w", err)
	}
	return NATSWith(dir, func(o *natsserver.Options) {
		host, port, maxStore := o.Host, o.Port, o.JetStreamMaxStore
		*o = *opts
		o.Host, o.Port, o.JetStream, o.StoreDir, o.JetStreamMaxStore = host, port, true, filepath.Join(dir, "js"), maxStore
		o.NoLog, o.NoSigs = true, true
	})
}
