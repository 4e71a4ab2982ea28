package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// natsConn is where a subcommand finds NATS, from its --nats-url and
// --nats-creds flags.
type natsConn struct{ url, creds string }

func natsFlags(fs *flag.FlagSet) *natsConn {
	c := &natsConn{}
	fs.StringVar(&c.url, "nats-url", envOr("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env NATS_URL)")
	fs.StringVar(&c.creds, "nats-creds", "", "NATS credentials file (optional)")
	return c
}

func (c *natsConn) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	return connectNATS(c.url, c.creds, name)
}

// connectNATS connects with reconnects forever: the operator and the
// dispatcher outlive NATS restarts, and start before NATS is up.
func connectNATS(url, creds, name string) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
	}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("opening JetStream: %w", err)
	}
	return nc, js, nil
}

// natsChecker is a readiness check: not ready while NATS is unreachable.
func natsChecker(nc *nats.Conn) func(*http.Request) error {
	return func(*http.Request) error {
		if !nc.IsConnected() {
			return errors.New("not connected to NATS")
		}
		return nil
	}
}

// newScheme knows the core Kubernetes types and Herald's API.
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := heraldv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// addChecks gives a manager its liveness check and a readiness check that
// fails while NATS is unreachable.
func addChecks(mgr manager.Manager, nc *nats.Conn) error {
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("nats", natsChecker(nc)); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}
	return nil
}
