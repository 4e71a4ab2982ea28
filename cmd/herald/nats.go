package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	neturl "net/url"
	"os"
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
	"github.com/herald-dev/herald/internal/natsauth"
)

// errNATSClosed is the cause a process ends with when nats.go closed its
// connection for good.
var errNATSClosed = errors.New("NATS connection closed for good")

// natsConn is where a subcommand finds NATS and who it is there, from its
// --nats-* flags. Every credential is a file path: a token, seed or key in
// a flag value or a URL would show in the process list, in the Deployment
// the operator writes and in logs.
type natsConn struct {
	url, creds string
	// tokenFile holds an auth token (a ServiceAccount token the auth
	// callout validates); nkeyFile an nkey user seed (the manager's).
	tokenFile, nkeyFile string
	// Any of these requires TLS.
	caFile, certFile, keyFile, serverName string
}

func natsFlags(fs *flag.FlagSet) *natsConn {
	c := &natsConn{}
	fs.StringVar(&c.url, "nats-url", envOr("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated, without credentials (env NATS_URL)")
	fs.StringVar(&c.creds, "nats-creds", "", "NATS credentials file (optional)")
	natsAuthFlags(fs, c)
	return c
}

// natsAuthFlags adds the identity and TLS flags. The manager calls it
// beside its own --nats-url and --nats-creds.
func natsAuthFlags(fs *flag.FlagSet, c *natsConn) {
	const needsTLS = "; setting it requires TLS"
	fs.StringVar(&c.tokenFile, "nats-token-file", os.Getenv("NATS_TOKEN_FILE"),
		"file holding the NATS auth token, such as a projected ServiceAccount token; re-read at every connect and reconnect (env NATS_TOKEN_FILE)")
	fs.StringVar(&c.nkeyFile, "nats-nkey-file", os.Getenv("NATS_NKEY_FILE"),
		"file holding an nkey user seed to authenticate with, for a NATS that lists nkey users (Herald's own NATS takes ServiceAccount tokens; the manager uses --nats-keys-dir) (env NATS_NKEY_FILE)")
	fs.StringVar(&c.caFile, "nats-ca-file", os.Getenv("NATS_CA_FILE"),
		"PEM CA bundle that verifies the NATS server's certificate"+needsTLS+" (env NATS_CA_FILE)")
	fs.StringVar(&c.certFile, "nats-cert-file", os.Getenv("NATS_CERT_FILE"),
		"PEM client certificate for TLS to NATS, with --nats-key-file"+needsTLS+" (env NATS_CERT_FILE)")
	fs.StringVar(&c.keyFile, "nats-key-file", os.Getenv("NATS_KEY_FILE"),
		"PEM private key of --nats-cert-file"+needsTLS+" (env NATS_KEY_FILE)")
	fs.StringVar(&c.serverName, "nats-server-name", os.Getenv("NATS_SERVER_NAME"),
		"name the NATS server's certificate is verified against, when it differs from the URL's host"+needsTLS+" (env NATS_SERVER_NAME)")
}

// connect connects as a client acting for namespace ("" for the manager,
// which uses the default inbox).
func (c *natsConn) connect(name, namespace string) (*nats.Conn, jetstream.JetStream, error) {
	return connectNATS(*c, name, namespace)
}

// tlsRequired: any TLS flag means the client must not talk to NATS in
// plain text, rather than quietly ignoring the flag against a server
// without TLS.
func (c natsConn) tlsRequired() bool {
	return c.caFile != "" || c.certFile != "" || c.keyFile != "" || c.serverName != ""
}

// caBundle is the PEM of --nats-ca-file, nil without one: the manager
// copies it into the tenant namespaces for the dispatchers.
func (c natsConn) caBundle() ([]byte, error) {
	if c.caFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --nats-ca-file: %w", err)
	}
	return b, nil
}

// natsOptions turns the flags into nats.go options: who the client is and
// how it secures the connection. It checks what can be checked before
// connecting, so a mistake fails at start with a clear error rather than
// as endless reconnects.
func natsOptions(c natsConn, namespace string) ([]nats.Option, error) {
	if err := refuseURLCredentials(c.url); err != nil {
		return nil, err
	}
	var opts []nats.Option
	ids := 0
	for _, f := range []string{c.tokenFile, c.nkeyFile, c.creds} {
		if f != "" {
			ids++
		}
	}
	if ids > 1 {
		return nil, errors.New("give at most one of --nats-token-file, --nats-nkey-file and --nats-creds: each is a whole identity")
	}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(c.nkeyFile)
		if err != nil {
			return nil, fmt.Errorf("reading the nkey seed in --nats-nkey-file %s: %w", c.nkeyFile, err)
		}
		opts = append(opts, o)
	}
	if c.tokenFile != "" {
		if namespace == "" {
			return nil, errors.New("a token identity needs a namespace: the auth callout lets it use only its namespace's inbox")
		}
		token, err := readToken(c.tokenFile)
		if err != nil {
			return nil, err
		}
		// A rotated token is of the same ServiceAccount, so the inbox
		// read from the first one stays right.
		opts = append(opts, nats.TokenHandler(tokenFromFile(c.tokenFile)), nats.CustomInboxPrefix(natsauth.TokenInbox(namespace, token)),
			// The callout refuses while the manager restarts or the API
			// server cannot review tokens; nats.go would give up after two
			// refusals and the pod would crash-loop with a growing
			// backoff. Retrying (logged each time) reconnects as soon as
			// the callout answers again.
			nats.IgnoreAuthErrorAbort())
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return nil, errors.New("--nats-cert-file and --nats-key-file go together: give both or neither")
	}
	if c.tlsRequired() {
		// Secure replaces Options.TLSConfig, so it comes first; RootCAs
		// and ClientCert keep theirs (a CA pool and a certificate, read
		// at every connect) apart and nats.go puts them into a copy of
		// this config per connection, next to the ServerName.
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.serverName}))
		if c.caFile != "" {
			opts = append(opts, nats.RootCAs(c.caFile))
		}
		if c.certFile != "" {
			opts = append(opts, nats.ClientCert(c.certFile, c.keyFile))
		}
	}
	return opts, nil
}

// refuseURLCredentials fails when a URL carries a user, password or token:
// they would reach the process list, the operator's Deployments and, in
// nats.go's errors, logs.
func refuseURLCredentials(urls string) error {
	for i, p := range strings.Split(urls, ",") {
		raw := strings.TrimSpace(p)
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw // as nats.go reads a bare host:port
		}
		u, err := neturl.Parse(raw)
		if err != nil {
			// Not wrapped: url.Error repeats the URL, secret and all.
			return fmt.Errorf("--nats-url entry %d is not a valid URL", i+1)
		}
		if u.User != nil {
			return fmt.Errorf("--nats-url %s has credentials in it; give them as a file with --nats-token-file, --nats-nkey-file or --nats-creds instead", redactURLs(p))
		}
	}
	return nil
}

// readToken reads a token file, trimmed. Errors name the file, never
// what is in it.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading --nats-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--nats-token-file %s is empty", path)
	}
	return tok, nil
}

// tokenFromFile reads the token at every connect and reconnect: the
// kubelet rewrites a projected ServiceAccount token in place before it
// expires, and a token read once would stop working within the hour. A
// failed read sends no token; the server refuses that and nats.go retries.
func tokenFromFile(path string) nats.AuthTokenHandler {
	return func() string {
		tok, err := readToken(path)
		if err != nil {
			ctrl.Log.WithName("nats").Error(err, "connecting without a NATS token", "file", path)
			return ""
		}
		return tok
	}
}

// connectNATS connects with reconnects forever: the operator and the
// dispatcher outlive NATS restarts, and start before NATS is up. namespace
// is the one the client acts for ("" for the manager). extra options come
// after Herald's; only tests give them.
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
func connectNATS(c natsConn, name, namespace string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	servers := redactURLs(c.url)
	auth, err := natsOptions(c, namespace)
	if err != nil {
		return nil, nil, err
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
		nats.NoCallbacksAfterClientClose(),
		nats.ClosedHandler(func(nc *nats.Conn) { natsClosed(nc, name, servers) }),
	}
	opts = append(append(opts, auth...), extra...)
	nc, err := nats.Connect(c.url, opts...)
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
