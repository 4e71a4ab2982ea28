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
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/singleflight"

	"github.com/herald-dev/herald/internal/egress"
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
	sweepInterval   time.Duration
	egress          *egress.Guard
	// versionCacheBytes bounds every endpoint's version cache together,
	// unless versionCache is shared with other Dispatchers.
	versionCacheBytes int64
	versionCache      *cacheBudget
	// Set only by the cost benchmark (export_test.go), to show what the
	// durable writes cost; Herald itself never turns them off.
	noVersionRecords bool
	fixedLimits      bool // adaptive limits off, for BenchmarkRecovery's baseline
	noDeliveryLog    bool
	// The delivery log's publisher: unconfirmed entries at most, how long
	// one waits for its confirmation, and failed entries queued for a
	// retry. Tests make them small.
	logMaxPending int
	logAckTimeout time.Duration
	logRetries    int
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

// WithVersionCacheBytes bounds the memory the delivered-version caches of
// all endpoints take together (DefaultVersionCacheBytes by default).
func WithVersionCacheBytes(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: version cache bytes must be positive, got %d", ErrInvalidOption, n)
		}
		o.versionCacheBytes = n
		return nil
	}
}

// VersionCache is a byte budget for delivered-version caches that several
// Dispatchers share: the shared pool runs one Dispatcher per namespace,
// and its memory is bounded per process, not per namespace.
type VersionCache struct{ budget *cacheBudget }

// NewVersionCache returns a shared budget of n bytes.
func NewVersionCache(n int64) (*VersionCache, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: version cache bytes must be positive, got %d", ErrInvalidOption, n)
	}
	return &VersionCache{budget: newCacheBudget(n)}, nil
}

// WithVersionCache makes the Dispatcher take its version caches from c,
// shared with every other Dispatcher given c (instead of a budget of its
// own, WithVersionCacheBytes).
func WithVersionCache(c *VersionCache) Option {
	return func(o *options) error {
		o.versionCache = c.budget
		return nil
	}
}

// WithSweepInterval sets how often a suspended or probing endpoint's
// waiting events are checked for the end of their retry window (default
// 1m); it must stay well below the margin between the longest window and
// the events stream's retention.
func WithSweepInterval(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: sweep interval must be positive", ErrInvalidOption)
		}
		o.sweepInterval = d
		return nil
	}
}

// WithUserAgent sets the user-agent header (default "Herald-Webhooks/<version>").
func WithUserAgent(ua string) Option {
	return func(o *options) error { o.userAgent = ua; return nil }
}

// WithEgressGuard sets the guard every webhook connection (and a proxy's)
// is checked by. Without it the dispatcher refuses the default denied set
// of egress.New: the guard is on unless an administrator opens ranges.
func WithEgressGuard(g *egress.Guard) Option {
	return func(o *options) error {
		if g == nil {
			return fmt.Errorf("%w: egress guard must not be nil", ErrInvalidOption)
		}
		o.egress = g
		return nil
	}
}

// Version is stamped by the build.
var Version = "dev"

// Dispatcher runs one worker per endpoint.
type Dispatcher struct {
	js jetstream.JetStream
	// logJS publishes the delivery log asynchronously, with its own error
	// handler, on the same connection (so an entry reaches NATS before
	// the ack that follows it).
	logJS    jetstream.JetStream
	logRetry chan *nats.Msg
	// logStopped is set once retryLog has returned: an entry failing after
	// it is counted lost at once.
	logStopped atomic.Bool
	opts       options
	buckets    sync.Map           // namespace -> *buckets: its versions and health records, opened once
	opening    singleflight.Group // namespace -> the one open of its buckets under way
	logs       sync.Map           // namespace -> jetstream.Stream: delivery logs, read back for dead letters and redeliveries
	dlqs       sync.Map           // namespace -> jetstream.Stream: dead letters, marked when a replay delivers one

	mu sync.Mutex
	// ctx is set by Run; workers live under it. Endpoints upserted before
	// Run wait in pending.
	ctx     context.Context
	workers map[string]*worker // the current worker per endpoint
	// newest is the newest worker per endpoint, current or still
	// stopping: its successor starts only once it has stopped, so two
	// workers never pull one consumer.
	newest  map[string]*worker
	pending map[string]Endpoint
	wg      sync.WaitGroup

	versionCache *cacheBudget

	// conn is cancelled when the NATS connection reconnects and then
	// replaced: a long pull waiting on the old connection's server may
	// have been forgotten by a restarted one, so every pull is redone.
	connMu sync.Mutex
	conn   context.Context
	connX  context.CancelFunc
}

// New returns a Dispatcher that reads from js. Each endpoint's worker
// waits for its namespace's streams and buckets, which the operator
// ensures (streams.EnsureNamespace).
func New(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Dispatcher, error) {
	o := options{
		log:             logr.Discard(),
		maxResponseBody: 4 << 10,
		healthInterval:  time.Second,
		drainTimeout:    30 * time.Second,
		probeAfter:      5,
		userAgent:       "Herald-Webhooks/" + Version,
		sweepInterval:   time.Minute,
		egress:          egress.New(egress.Config{}),

		versionCacheBytes: DefaultVersionCacheBytes,

		logMaxPending: logMaxPending,
		logAckTimeout: logAckTimeout,
		logRetries:    logRetries,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	d := &Dispatcher{js: js, opts: o,
		logRetry: make(chan *nats.Msg, o.logRetries),
		workers:  map[string]*worker{}, newest: map[string]*worker{}, pending: map[string]Endpoint{},
		versionCache: o.versionCache}
	if d.versionCache == nil {
		d.versionCache = newCacheBudget(o.versionCacheBytes)
	}
	var err error
	d.logJS, err = jetstream.New(js.Conn(), jetstream.WithPublishAsyncErrHandler(d.logFailed),
		jetstream.WithPublishAsyncMaxPending(o.logMaxPending), jetstream.WithPublishAsyncTimeout(o.logAckTimeout))
	if err != nil {
		return nil, fmt.Errorf("opening JetStream for the delivery log: %w", err)
	}
	return d, nil
}

// buckets are a namespace's key-value buckets.
type buckets struct{ versions, health jetstream.KeyValue }

// bucketsOf opens a namespace's buckets, once. The workers of a new
// namespace all ask at the same time (and, until the operator has made
// the buckets, again and again): they share one open, which is two
// stream-info requests to NATS, instead of each making its own; at
// 10,000 new endpoints those opens were a fifth of the manager's CPU.
func (d *Dispatcher) bucketsOf(ctx context.Context, namespace string) (*buckets, error) {
	if b, ok := d.buckets.Load(namespace); ok {
		return b.(*buckets), nil
	}
	v, err, _ := d.opening.Do(namespace, func() (any, error) {
		if b, ok := d.buckets.Load(namespace); ok {
			return b, nil
		}
		var b buckets
		for _, kv := range []struct {
			name string
			to   *jetstream.KeyValue
		}{{streams.VersionsBucket(namespace), &b.versions}, {streams.HealthBucket(namespace), &b.health}} {
			var err error
			if *kv.to, err = d.js.KeyValue(ctx, kv.name); err != nil {
				return nil, fmt.Errorf("opening key-value bucket %s: %w", kv.name, err)
			}
		}
		d.buckets.Store(namespace, &b)
		return &b, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*buckets), nil
}

// logStream is a namespace's delivery-log stream, opened once.
func (d *Dispatcher) logStream(ctx context.Context, namespace string) (jetstream.Stream, error) {
	if s, ok := d.logs.Load(namespace); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := d.js.Stream(ctx, streams.AttemptsStream(namespace))
	if err != nil {
		return nil, fmt.Errorf("opening delivery log %s: %w", streams.AttemptsStream(namespace), err)
	}
	d.logs.Store(namespace, s)
	return s, nil
}

// deadLetterStream is a namespace's dead-letter stream, opened once.
func (d *Dispatcher) deadLetterStream(ctx context.Context, namespace string) (jetstream.Stream, error) {
	if s, ok := d.dlqs.Load(namespace); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := d.js.Stream(ctx, streams.DeadLetterStream(namespace))
	if err != nil {
		return nil, fmt.Errorf("opening dead letters %s: %w", streams.DeadLetterStream(namespace), err)
	}
	d.dlqs.Store(namespace, s)
	return s, nil
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
	// The log's retries outlive ctx: the workers' last entries, written
	// while they drain, are retried too, for at most logFlushTimeout
	// once the workers have stopped.
	logCtx, stopLog := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLog()
	flush := make(chan struct{})
	logDone := make(chan struct{})
	go func() { defer close(logDone); d.retryLog(logCtx, flush) }()
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.watchReconnects(ctx) }()

	<-ctx.Done()
	// ctx is done, so every worker is already stopping; wait for them all.
	d.wg.Wait()
	t := time.AfterFunc(logFlushTimeout, stopLog)
	defer t.Stop()
	close(flush)
	<-logDone
	return nil
}

// connection is a context that ends when the NATS connection next
// reconnects (or the dispatcher stops): long pulls wait on it.
func (d *Dispatcher) connection() context.Context {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn == nil {
		d.conn, d.connX = context.WithCancel(context.Background())
	}
	return d.conn
}

func (d *Dispatcher) watchReconnects(ctx context.Context) {
	nc := d.js.Conn()
	ch := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(ch)
	server := nc.ConnectedServerId()
	for {
		select {
		case <-ctx.Done():
			d.renewConnection()
			return
		case <-ch:
		}
		// Back on the same server, the pulls are still there and the
		// inbox is resubscribed: cancelling them would only drop what
		// they were sent. A new server (a restart makes a new id) has
		// forgotten them.
		if id := nc.ConnectedServerId(); id != server {
			server = id
			d.renewConnection()
		}
	}
}

// renewConnection ends the pulls of the connection until now.
func (d *Dispatcher) renewConnection() {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.connX != nil {
		d.connX()
	}
	d.conn = nil
}

// Upsert starts delivering to ep, or applies a changed configuration. A
// new URL, secret, header set, rate limit or retry policy takes effect on
// the next attempt; a change of concurrency, timeout, ordering or suspend
// replaces the endpoint's worker, which hands its held events back first.
// A suspended endpoint's worker only dead-letters events whose window
// ended; the others keep waiting in the stream. Upsert never waits for a
// worker to stop: the replacement starts once its predecessor is done.
func (d *Dispatcher) Upsert(ep Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx == nil {
		d.pending[ep.ID()] = ep
		return
	}
	if d.ctx.Err() != nil {
		return // stopped: Run is waiting for its workers, or returned
	}
	if w, ok := d.workers[ep.ID()]; ok && w.reconfigure(ep) {
		return
	}
	d.startLocked(ep)
}

// Remove stops delivering to an endpoint, without waiting for its worker
// to finish stopping.
func (d *Dispatcher) Remove(namespace, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := namespace + "/" + name
	delete(d.pending, id)
	w, ok := d.workers[id]
	if !ok || d.ctx.Err() != nil {
		return
	}
	delete(d.workers, id)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		w.stop()
		d.retired(id, w)
	}()
}

// startLocked makes ep's worker current and runs it once the previous one
// of the endpoint, if any, has stopped.
func (d *Dispatcher) startLocked(ep Endpoint) {
	id := ep.ID()
	prev := d.newest[id]
	w := newWorker(d, ep)
	d.workers[id], d.newest[id] = w, w
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if prev != nil {
			prev.stop()
		}
		w.run()
		d.retired(id, w)
	}()
}

// retired forgets w once it has stopped, unless a successor replaced it.
func (d *Dispatcher) retired(id string, w *worker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.newest[id] == w && d.workers[id] != w {
		delete(d.newest, id)
	}
}
