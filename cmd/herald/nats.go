package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	neturl "net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// errNATSClosed is the cause a process ends with when nats.go closed its
// connection for good.
var errNATSClosed = errors.New("NATS connection closed for good")

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
//
// nats.go still closes a connection for good on some server errors (-ERR
// 'Maximum Control Line Exceeded' after a too long subject or header line,
// repeated authorization failures while reconnecting). Every JetStream
// handle, consumer and KV watcher of the process hangs off this one
// connection, so rebuilding it in place would mean rebuilding the whole
// process; the process is restarted instead. Its closed handler logs the
// closure, makes the liveness check fail (natsAlive) and aborts the root
// context with errNATSClosed, so herald exits 1 and the kubelet starts the
// container again with a new connection. Our own Close runs no handler
// (NoCallbacksAfterClientClose), so a clean shutdown is not a failure.
func connectNATS(url, creds, name string) (*nats.Conn, jetstream.JetStream, error) {
	servers := redactURLs(url)
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
		nats.NoCallbacksAfterClientClose(),
		nats.ClosedHandler(func(nc *nats.Conn) { natsClosed(nc, name, servers) }),
	}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", servers, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("opening JetStream: %w", err)
	}
	return nc, js, nil
}

// lostConns holds the connections nats.go closed for good, with why.
var lostConns sync.Map // *nats.Conn -> error

// natsClosed runs when nats.go, not our code, closed nc for good.
func natsClosed(nc *nats.Conn, name, servers string) {
	why := nc.LastError()
	if why == nil {
		why = errors.New("no error given")
	}
	err := fmt.Errorf("%w (connection %s to %s): %w", errNATSClosed, name, servers, why)
	lostConns.Store(nc, err)
	ctrl.Log.WithName("nats").Error(why, "NATS connection closed for good; exiting so that the container restarts with a new one",
		"connection", name, "servers", servers)
	abort(err)
}

// natsAlive is a liveness check: it fails once nats.go has closed the
// connection for good, which only a restart repairs.
func natsAlive(nc *nats.Conn) func(*http.Request) error {
	return func(*http.Request) error {
		if err, ok := lostConns.Load(nc); ok {
			return err.(error)
		}
		return nil
	}
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

// redactURLs is a comma-separated list of NATS URLs fit for logs and
// errors: without user information (user, password or token).
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		raw := p
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw // as nats.go reads a bare host:port
		}
		u, err := neturl.Parse(raw)
		switch {
		case err != nil:
			p = "(unparsable URL)"
		case u.User != nil:
			u.User = nil
			p = u.String()
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
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

// checkAdder is the part of a manager.Manager that addChecks uses.
type checkAdder interface {
	AddHealthzCheck(name string, check healthz.Checker) error
	AddReadyzCheck(name string, check healthz.Checker) error
}

// addChecks gives a manager a liveness check that fails once NATS closed
// its connection for good (restart it) and a readiness check that fails
// while NATS is unreachable (wait).
func addChecks(mgr checkAdder, nc *nats.Conn) error {
	if err := mgr.AddHealthzCheck("nats", natsAlive(nc)); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("nats", natsChecker(nc)); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}
	return nil
}
