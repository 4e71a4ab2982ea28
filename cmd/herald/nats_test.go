package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/nats-io/nats.go"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

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
	srv, err := testenv.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	logs := captureLogs(t)
	ctx := rootContext(t)
	// A server without auth takes any user and password; they must not
	// reach the log or the exit error.
	u := strings.Replace(srv.ClientURL(), "nats://", "nats://herald:s3cret@", 1)
	nc, _, err := connectNATS(u, "", "herald-test")
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
		if strings.Contains(s, "s3cret") || strings.Contains(s, "herald:") {
			t.Errorf("URL user information leaked: %s", s)
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
	nc, _, err := connectNATS(srv.ClientURL(), "", "herald-test")
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

// captureLogs points ctrl.Log at a buffer. controller-runtime's logger is
// set once per process, so only one test calls this.
func captureLogs(t *testing.T) *logBuffer {
	t.Helper()
	b := &logBuffer{}
	ctrl.SetLogger(funcr.New(func(prefix, args string) {
		b.mu.Lock()
		defer b.mu.Unlock()
		fmt.Fprintf(&b.buf, "%s %s\n", prefix, args)
	}, funcr.Options{}))
	return b
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
