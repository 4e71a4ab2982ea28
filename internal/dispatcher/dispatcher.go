// Package dispatcher delivers events from JetStream to webhook endpoints:
// at least once, in order per key, signed, with retries on the endpoint's
// schedule, dead letters, a delivery log and a health record per endpoint.
//
// Each endpoint has its own worker: its own fetch loop on its durable
// consumer, its own HTTP client and connection limit, its own concurrency
// and timers, so a slow or dead endpoint costs the others nothing.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
)

// ErrInvalidOption is wrapped by every error from an Option.
var ErrInvalidOption = errors.New("invalid option")

type options struct {
	log             logr.Logger
	maxResponseBody int
	healthInterval  time.Duration
	drainTimeout    time.Duration
	probeAfter      int
	userAgent       string
	// Set only by the cost benchmark (export_test.go), to show what the
	// durable writes cost; Herald itself never turns them off.
	noVersionRecords bool
	noDeliveryLog    bool
}

// Option configures a Dispatcher.
type Option func(*options) error

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option {
	return func(o *options) error { o.log = l; return nil }
}

// WithMaxResponseBody caps how much of a response body the delivery log
// keeps (default 4 KiB).
func WithMaxResponseBody(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("%w: max response body must not be negative", ErrInvalidOption)
		}
		o.maxResponseBody = n
		return nil
	}
}

// WithHealthInterval sets how often, at most, an endpoint's health record
// is written when nothing but counters changed (default 1s).
func WithHealthInterval(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: health interval must be positive", ErrInvalidOption)
		}
		o.healthInterval = d
		return nil
	}
}

// WithDrainTimeout bounds how long shutdown waits for requests in flight
// (default 30s).
func WithDrainTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: drain timeout must be positive", ErrInvalidOption)
		}
		o.drainTimeout = d
		return nil
	}
}

// WithProbeAfter sets after how many consecutive failures an endpoint
// stops taking new events and only its scheduled retries probe it
// (default 5).
func WithProbeAfter(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("%w: probe threshold must be at least 1", ErrInvalidOption)
		}
		o.probeAfter = n
		return nil
	}
}

// WithUserAgent sets the user-agent header (default "Herald-Webhooks/<version>").
func WithUserAgent(ua string) Option {
	return func(o *options) error { o.userAgent = ua; return nil }
}

// Version is stamped by the build.
var Version = "dev"

// Dispatcher runs one worker per endpoint.
type Dispatcher struct {
	js       jetstream.JetStream
	opts     options
	versions jetstream.KeyValue
	health   jetstream.KeyValue
	attempts jetstream.Stream // the delivery log, read back for dead letters

	mu sync.Mutex
	// ctx is set by Run; workers live under it. Endpoints upserted before
	// Run wait in pending.
	ctx     context.Context
	workers map[string]*worker
	pending map[string]Endpoint
	wg      sync.WaitGroup
}

// New returns a Dispatcher that reads from js. Herald's streams and buckets
// must exist (the operator ensures them; see streams.Ensure).
func New(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Dispatcher, error) {
	o := options{
		log:             logr.Discard(),
		maxResponseBody: 4 << 10,
		healthInterval:  time.Second,
		drainTimeout:    30 * time.Second,
		probeAfter:      5,
		userAgent:       "Herald-Webhooks/" + Version,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	versions, err := js.KeyValue(ctx, streams.VersionsBucket)
	if err != nil {
		return nil, fmt.Errorf("opening key-value bucket %s: %w", streams.VersionsBucket, err)
	}
	health, err := js.KeyValue(ctx, streams.HealthBucket)
	if err != nil {
		return nil, fmt.Errorf("opening key-value bucket %s: %w", streams.HealthBucket, err)
	}
	attempts, err := js.Stream(ctx, streams.AttemptsStream)
	if err != nil {
		return nil, fmt.Errorf("opening stream %s: %w", streams.AttemptsStream, err)
	}
	return &Dispatcher{js: js, opts: o, versions: versions, health: health, attempts: attempts,
		workers: map[string]*worker{}, pending: map[string]Endpoint{}}, nil
}

// Run starts the workers of every upserted endpoint and blocks until ctx
// is done. Then it stops pulling, lets requests in flight finish (bounded
// by the drain timeout) and hands every event it still held back to
// JetStream for prompt redelivery.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.ctx != nil {
		d.mu.Unlock()
		return errors.New("dispatcher is already running")
	}
	d.ctx = ctx
	for id, ep := range d.pending {
		d.startLocked(ep)
		delete(d.pending, id)
	}
	d.mu.Unlock()

	<-ctx.Done()
	d.mu.Lock()
	// ctx is done, so every worker is already stopping; wait for them all.
	for id := range d.workers {
		delete(d.workers, id)
	}
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}

// Upsert starts delivering to ep, or applies a changed configuration. A
// new URL, secret, header set, rate limit or retry policy takes effect on
// the next attempt; a change of concurrency, timeout or ordering restarts
// the endpoint's worker, which hands its held events back first. Suspend
// stops the worker: events keep waiting in the stream.
func (d *Dispatcher) Upsert(ep Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := ep.ID()
	if d.ctx == nil {
		d.pending[id] = ep
		return
	}
	if w, ok := d.workers[id]; ok {
		if !ep.Suspend && w.reconfigure(ep) {
			return
		}
		w.stop()
		delete(d.workers, id)
	}
	if !ep.Suspend {
		d.startLocked(ep)
	}
}

// Remove stops delivering to an endpoint.
func (d *Dispatcher) Remove(namespace, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := namespace + "/" + name
	delete(d.pending, id)
	if w, ok := d.workers[id]; ok {
		w.stop()
		delete(d.workers, id)
	}
}

func (d *Dispatcher) startLocked(ep Endpoint) {
	w := newWorker(d, ep)
	// The cancel exists before the goroutine does, so a stop that comes
	// at once still reaches it.
	ctx, cancel := context.WithCancel(d.ctx)
	w.cancel = cancel
	d.workers[ep.ID()] = w
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		w.run(ctx)
	}()
}
