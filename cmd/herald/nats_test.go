package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/testenv"
)

// checks records what addChecks registers, as a manager would.
type checks struct{ healthz, readyz map[string]healthz.Checker }

func (c *checks) AddHealthzCheck(name string, check healthz.Checker) error {
	c.healthz[name] = check
	return nil
}

func (c *checks) AddReadyzCheck(name string, check healthz.Checker) error {
	c.readyz[name] = check
	return nil
}

// liveness runs every registered liveness check, as /healthz does.
func (c *checks) liveness() error {
	var errs []error
	for _, check := range c.healthz {
		errs = append(errs, check(&http.Request{}))
	}
	return errors.Join(errs...)
}

// TestNATSClosedByServer: a server -ERR that nats.go treats as fatal
// ('Maximum Control Line Exceeded', from a subject over the server's 4 KiB
// control line) closes the connection for good, reconnects or not. The
// process must then fail its liveness check and its root context must end
// with a cause, so herald exits non-zero and the kubelet restarts it.
func TestNATSClosedByServer(t *testing.T) {
	const token = "s3cret-token"
	srv, err := testenv.NATSWith(t.TempDir(), func(o *natsserver.Options) { o.Authorization = token })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	logs := captureLogs(t)
	ctx := rootContext(t)
	// The token must not reach the log or the exit error.
	tokenFile := writeFile(t, t.TempDir(), "token", token)
	nc, _, err := connectNATS(natsConn{url: srv.ClientURL(), tokenFile: tokenFile}, "herald-test", "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	waitFor(t, "connected", nc.IsConnected)
	c := &checks{healthz: map[string]healthz.Checker{}, readyz: map[string]healthz.Checker{}}
	if err := addChecks(c, nc); err != nil {
		t.Fatal(err)
	}
	if err := c.liveness(); err != nil {
		t.Fatalf("liveness before the closure: %v", err)
	}

	if err := nc.Publish("herald."+strings.Repeat("x", 5000), []byte("{}")); err != nil {
		t.Fatalf("publishing: %v", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("root context not cancelled after the server closed the connection (status %v, last error %v)", nc.Status(), nc.LastError())
	}
	if nc.Status() != nats.CLOSED {
		t.Fatalf("connection status %v, want CLOSED for good", nc.Status())
	}
	cause := context.Cause(ctx)
	if !errors.Is(cause, errNATSClosed) || !strings.Contains(cause.Error(), "maximum control line exceeded") {
		t.Fatalf("cause %v: want errNATSClosed with the server's error", cause)
	}
	if err := c.liveness(); err == nil {
		t.Fatal("liveness check passes on a connection closed for good")
	}
	logged := logs.String()
	if !strings.Contains(logged, "NATS connection closed for good") || !strings.Contains(logged, "maximum control line exceeded") {
		t.Errorf("closure not logged with its error; log:\n%s", logged)
	}
	for _, s := range []string{logged, cause.Error()} {
		if strings.Contains(s, token) {
			t.Errorf("NATS token leaked: %s", s)
		}
	}
	if err := c.readyz["nats"](&http.Request{}); err == nil {
		t.Fatal("readiness check passes on a connection closed for good")
	}
}

func TestRedactURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":               "nats://127.0.0.1:4222",
		"nats://u:p@a:4222, tls://tok@b:4222": "nats://a:4222,tls://b:4222",
		"127.0.0.1:4222":                      "127.0.0.1:4222",
		"u:p@host:4222":                       "nats://host:4222",
		"nats://u:p%zz@host":                  "(unparsable URL)",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNATSClosedByUs: closing the connection ourselves, on the way out,
// is not a failure: no cancelled context, no failed liveness.
func TestNATSClosedByUs(t *testing.T) {
	srv, err := testenv.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	ctx := rootContext(t)
	nc, _, err := connectNATS(natsConn{url: srv.ClientURL()}, "herald-test", "")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected", nc.IsConnected)
	c := &checks{healthz: map[string]healthz.Checker{}, readyz: map[string]healthz.Checker{}}
	if err := addChecks(c, nc); err != nil {
		t.Fatal(err)
	}
	// With NoCallbacksAfterClientClose our own Close runs no handler at
	// all, so there is nothing to wait for.
	nc.Close()
	if err := c.liveness(); err != nil {
		t.Fatalf("liveness after our own Close: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("root context cancelled by our own Close: %v", context.Cause(ctx))
	}
}

// logBuffer collects what ctrl.Log writes, from any goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	testLogs     = &logBuffer{}
	testLogsOnce sync.Once
)

// captureLogs points ctrl.Log at a buffer, the same for every test:
// controller-runtime's logger is set once per process. A test looks for
// its own lines in it, and a secret must appear in none.
func captureLogs(t *testing.T) *logBuffer {
	t.Helper()
	testLogsOnce.Do(func() {
		ctrl.SetLogger(funcr.New(func(prefix, args string) {
			testLogs.mu.Lock()
			defer testLogs.mu.Unlock()
			fmt.Fprintf(&testLogs.buf, "%s %s\n", prefix, args)
		}, funcr.Options{}))
	})
	return testLogs
}

// rootContext makes the context herald's main would, with abort wired to
// it, and restores abort afterwards.
func rootContext(t *testing.T) context.Context {
	t.Helper()
	ctx, stop := newRootContext(t.Context())
	t.Cleanup(stop)
	return ctx
}

// waitFor polls cond until it holds, for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExitError: an aborted process exits with the abort's cause, even
// when the subcommand returned nil as a stopped manager does.
func TestExitError(t *testing.T) {
	ctx := rootContext(t)
	if err := exitError(ctx, nil); err != nil {
		t.Fatalf("exitError before abort = %v", err)
	}
	boom := errors.New("boom")
	abort(boom)
	<-ctx.Done()
	if err := exitError(ctx, nil); !errors.Is(err, boom) {
		t.Fatalf("exitError(nil) after abort = %v, want boom", err)
	}
	if err := exitError(ctx, context.Canceled); !errors.Is(err, boom) {
		t.Fatalf("exitError(context.Canceled) after abort = %v, want boom", err)
	}
}

// writeFile writes content to dir/name the way the kubelet updates a
// projected volume: whole, through a rename, so a reader never sees half
// of it.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// testCA issues the certificates of the TLS tests (testenv.CA, failing
// the test on error).
type testCA struct{ *testenv.CA }

func newTestCA(t *testing.T) testCA {
	t.Helper()
	ca, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return testCA{ca}
}

func (ca testCA) issue(t *testing.T, usage x509.ExtKeyUsage, dns []string, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(usage, time.Hour, dns, ips...)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// tlsNATS starts a NATS server that requires TLS with the given
// certificate, and client certificates from clientCAs when not nil.
func tlsNATS(t *testing.T, certPEM, keyPEM []byte, clientCAs *x509.CertPool) *natsserver.Server {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	srv, err := testenv.NATSWith(t.TempDir(), func(o *natsserver.Options) {
		o.TLSConfig, o.TLSVerify = cfg, clientCAs != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// connectOnce is connectNATS with a single attempt, so a connection the
// server or the client refuses comes back as an error.
func connectOnce(t *testing.T, c natsConn) error {
	t.Helper()
	nc, _, err := connectNATS(c, "herald-test", "", nats.RetryOnFailedConnect(false), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	if !nc.IsConnected() {
		return fmt.Errorf("not connected: %v", nc.Status())
	}
	return nil
}

// TestNATSTLS: --nats-ca-file verifies the server, --nats-server-name
// names it when the URL holds an address its certificate does not, and a
// client certificate combines with both.
func TestNATSTLS(t *testing.T) {
	rootContext(t)
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := writeFile(t, dir, "ca.crt", string(ca.PEM))
	const name = "nats.herald.test"

	certPEM, keyPEM := ca.issue(t, x509.ExtKeyUsageServerAuth, []string{name}, net.ParseIP("127.0.0.1"))
	both := tlsNATS(t, certPEM, keyPEM, nil)
	if err := connectOnce(t, natsConn{url: both.ClientURL(), caFile: caFile}); err != nil {
		t.Errorf("with --nats-ca-file: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := connectOnce(t, natsConn{url: both.ClientURL()}); !errors.As(err, &unknown) {
		t.Errorf("without --nats-ca-file: %v, want an unknown authority", err)
	}

	// Dialled at 127.0.0.1, which its certificate does not name.
	certPEM, keyPEM = ca.issue(t, x509.ExtKeyUsageServerAuth, []string{name})
	dnsOnly := tlsNATS(t, certPEM, keyPEM, nil)
	var wrongHost x509.HostnameError
	if err := connectOnce(t, natsConn{url: dnsOnly.ClientURL(), caFile: caFile}); !errors.As(err, &wrongHost) {
		t.Errorf("a DNS-only certificate at an address: %v, want a hostname error", err)
	}
	if err := connectOnce(t, natsConn{url: dnsOnly.ClientURL(), caFile: caFile, serverName: name}); err != nil {
		t.Errorf("with --nats-server-name=%s: %v", name, err)
	}

	mtls := tlsNATS(t, certPEM, keyPEM, ca.Pool())
	certPEM, keyPEM = ca.issue(t, x509.ExtKeyUsageClientAuth, []string{"herald-manager"})
	certFile, keyFile := writeFile(t, dir, "tls.crt", string(certPEM)), writeFile(t, dir, "tls.key", string(keyPEM))
	full := natsConn{url: mtls.ClientURL(), caFile: caFile, serverName: name, certFile: certFile, keyFile: keyFile}
	if err := connectOnce(t, full); err != nil {
		t.Errorf("with a client certificate, the CA and the server name: %v", err)
	}
	noCert := full
	noCert.certFile, noCert.keyFile = "", ""
	if err := connectOnce(t, noCert); err == nil {
		t.Error("a server that requires client certificates took a client without one")
	}
}

// TestNATSTLSRequired: any TLS flag refuses a server without TLS rather
// than talk to it in plain text.
func TestNATSTLSRequired(t *testing.T) {
	rootContext(t)
	srv, err := testenv.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	if err := connectOnce(t, natsConn{url: srv.ClientURL(), serverName: "nats.herald.test"}); !errors.Is(err, nats.ErrSecureConnWanted) {
		t.Errorf("--nats-server-name against a plain server: %v, want %v", err, nats.ErrSecureConnWanted)
	}
}

// TestNATSTokenFileReread: the token is read from its file at every
// connect, so a token the kubelet rotated in place works at the next
// reconnect. The second server takes only the rotated token, and refuses
// the old one several times first: a refusal under auth callout can be
// passing (the manager restarting, the API server slow), so the client
// keeps trying instead of closing after nats.go's default two.
func TestNATSTokenFileReread(t *testing.T) {
	rootContext(t)
	logs := captureLogs(t)
	srv1, err := testenv.NATSWith(t.TempDir(), func(o *natsserver.Options) { o.Authorization = "tok1" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv1.Shutdown)
	port := srv1.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	tokenFile := writeFile(t, dir, "token", "tok1\n") // the trailing newline is not part of it

	reconnected, refused := make(chan struct{}, 1), make(chan struct{}, 1)
	var refusals atomic.Int32
	signal := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	nc, _, err := connectNATS(natsConn{url: srv1.ClientURL(), tokenFile: tokenFile}, "herald-test", "tenant-a",
		nats.ReconnectHandler(func(*nats.Conn) { signal(reconnected) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrAuthorization) && refusals.Add(1) >= 4 {
				signal(refused)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if !nc.IsConnected() {
		t.Fatalf("not connected with the token from the file: %v", nc.LastError())
	}
	if got, want := nc.NewInbox(), natsauth.Inbox("tenant-a", "")+"."; !strings.HasPrefix(got, want) {
		t.Errorf("inbox %s, want one under %s", got, want)
	}

	writeFile(t, dir, "token", "wrong")
	srv1.Shutdown()
	srv2, err := testenv.NATSWith(t.TempDir(), func(o *natsserver.Options) { o.Port, o.Authorization = port, "tok2" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv2.Shutdown)
	select {
	case <-refused:
	case <-time.After(30 * time.Second):
		t.Fatalf("the wrong token was refused %d times, not 4 (status %v, last error %v)", refusals.Load(), nc.Status(), nc.LastError())
	}
	if nc.IsClosed() {
		t.Fatalf("the connection closed after %d refusals: %v", refusals.Load(), nc.LastError())
	}
	writeFile(t, dir, "token", "tok2\n")
	select {
	case <-reconnected:
	case <-time.After(20 * time.Second):
		t.Fatalf("no reconnect with the rotated token (status %v, last error %v)", nc.Status(), nc.LastError())
	}
	if nc.ConnectedUrl() != srv2.ClientURL() {
		t.Errorf("connected to %s, want %s", nc.ConnectedUrl(), srv2.ClientURL())
	}
	for _, tok := range []string{"tok1", "tok2", "wrong"} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("token %q in the log:\n%s", tok, logs.String())
		}
	}
}

// TestNATSTokenUnreadable: a token that cannot be read is no token. The
// log names the file, never a token.
func TestNATSTokenUnreadable(t *testing.T) {
	logs := captureLogs(t)
	dir := t.TempDir()
	path := writeFile(t, dir, "token", "  s3cret-token\n")
	read := tokenFromFile(path)
	if got := read(); got != "s3cret-token" {
		t.Errorf("token %q, want it trimmed", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "" {
		t.Errorf("token %q from a removed file", got)
	}
	logged := logs.String()
	if !strings.Contains(logged, "connecting without a NATS token") || !strings.Contains(logged, path) {
		t.Errorf("the failed read is not logged with its file; log:\n%s", logged)
	}
	if strings.Contains(logged, "s3cret-token") {
		t.Errorf("token in the log:\n%s", logged)
	}
}

// TestNATSNkeyFile: the manager's identity is an nkey seed from a file.
func TestNATSNkeyFile(t *testing.T) {
	rootContext(t)
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := testenv.NATSWith(t.TempDir(), func(o *natsserver.Options) { o.Nkeys = []*natsserver.NkeyUser{{Nkey: pub}} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	seedFile := writeFile(t, t.TempDir(), "seed", string(seed))
	if err := connectOnce(t, natsConn{url: srv.ClientURL(), nkeyFile: seedFile}); err != nil {
		t.Errorf("with --nats-nkey-file: %v", err)
	}
	if err := connectOnce(t, natsConn{url: srv.ClientURL()}); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("without it: %v, want %v", err, nats.ErrAuthorization)
	}
}

// TestNATSURLCredentialsRefused: credentials belong in files; a URL with
// them is refused, and the error does not repeat them.
func TestNATSURLCredentialsRefused(t *testing.T) {
	for url, want := range map[string]string{
		"nats://herald:s3cret@127.0.0.1:4222":           "--nats-url nats://127.0.0.1:4222 has credentials in it",
		"nats://127.0.0.1:4222, tls://s3cret@nats:4222": "--nats-url tls://nats:4222 has credentials in it",
		"herald:s3cret@127.0.0.1:4222":                  "--nats-token-file, --nats-nkey-file or --nats-creds instead",
		"nats://u:s3cret%zz@host:4222":                  "--nats-url entry 1 is not a valid URL",
	} {
		_, _, err := connectNATS(natsConn{url: url}, "herald-test", "")
		if err == nil {
			t.Errorf("%s: connected", url)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q, want it to say %q", url, err, want)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error repeats the secret: %v", url, err)
		}
	}
}

// TestNATSOptionsRefused: flag combinations that cannot work fail before
// any connection attempt.
func TestNATSOptionsRefused(t *testing.T) {
	dir := t.TempDir()
	token := writeFile(t, dir, "token", "tok")
	for _, tc := range []struct {
		name      string
		c         natsConn
		namespace string
		want      string
	}{
		{"token without a namespace", natsConn{tokenFile: token}, "", "a token identity needs a namespace"},
		{"two identities", natsConn{tokenFile: token, creds: filepath.Join(dir, "creds")}, "a", "at most one of"},
		{"a certificate without its key", natsConn{certFile: filepath.Join(dir, "tls.crt")}, "", "give both or neither"},
		{"a key without its certificate", natsConn{keyFile: filepath.Join(dir, "tls.key")}, "", "give both or neither"},
		{"a missing token file", natsConn{tokenFile: filepath.Join(dir, "none")}, "a", "reading --nats-token-file"},
		{"an empty token file", natsConn{tokenFile: writeFile(t, dir, "empty", "\n")}, "a", "is empty"},
		{"a missing seed", natsConn{nkeyFile: filepath.Join(dir, "none")}, "", "--nats-nkey-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.url = "nats://127.0.0.1:4222"
			_, err := natsOptions(tc.c, tc.namespace)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
