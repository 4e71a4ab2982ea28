package dispatcher

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

const (
	// fetchWait is how long a pull waits for events when there are none.
	// An idle consumer costs NATS a pull, its expiry and a heartbeat or
	// two per fetchWait. Events arrive on the open pull as soon as they
	// are stored, so a long wait delays nothing. A reconnect to another
	// server (a restart) cancels it (connection), and missing heartbeats
	// end it if the server forgot it without the client noticing.
	fetchWait = 2 * time.Minute
	// replayWait is the replay consumer's: replays are rarer still.
	replayWait = 5 * time.Minute
	// probeWait is the pull's wait while probing (nothing may come for the
	// due retry, and the sweep must not wait behind it), while failing and
	// while busy: short enough to need no heartbeat.
	probeWait = 2 * time.Second
	// heldPerSlot bounds events held in memory (in flight plus waiting in a
	// key's lane) to this many per request slot.
	heldPerSlot = 4
	// laneDepth is how many events of one key wait in memory behind the
	// one in flight: enough that the next starts the moment it ends. The
	// rest go back to the stream, so one busy key never takes the room
	// other keys need.
	laneDepth = 2
	// sweepBatch is how many events one expiry sweep fetches at a time.
	sweepBatch = 100
)

// worker delivers to one endpoint. Its fields that a live reconfiguration
// may change are behind ep (an atomic pointer) and limiter (which is safe
// to retune); everything else is fixed for its life.
type worker struct {
	d       *Dispatcher
	log     logr.Logger
	ep      atomic.Pointer[Endpoint]
	fixed   Endpoint // the fields whose change needs a new worker
	client  *http.Client
	limiter *rate.Limiter
	vers    *versionStore
	health  *tracker

	ctx    context.Context // the worker's life: pulling, waiting, retrying bookkeeping
	cancel context.CancelFunc
	// reqCtx outlives ctx by the drain: a request in flight at a stop
	// finishes and is acked, instead of being cut off and sent again.
	reqCtx    context.Context
	reqCancel context.CancelFunc
	done      chan struct{}

	adapt *adaptive     // request slots: maxInFlight, held to the adaptive window
	held  chan struct{} // one per event held in memory

	metrics endpointMetrics
	// latency is a moving average of request time (ns), to tell an event
	// handed back when its turn will come.
	latency atomic.Int64

	mu    sync.Mutex
	lanes map[string][]event // key -> events waiting behind the one in flight, by stream sequence
	inUse map[uint64]bool    // stream sequences held, to drop a redelivered copy
	// out holds, per key, the events handed back to the stream and until
	// when to wait for them: none of the key's later events may start
	// before they are back, so the hand-back never reorders a key.
	out map[string]map[uint64]handedBack
	// progress is what this worker knows of events not finished yet, by
	// stream sequence: HTTP attempts made, bookkeeping failures. Without
	// an entry a redelivered event's history is read from the delivery log.
	progress map[uint64]progress
	// settling holds the events whose outcome is decided and whose
	// bookkeeping settle retries: kept alive, and a redelivered copy is
	// dropped, so the decision is never taken again.
	settling map[uint64]jetstream.Msg
	// heldBack wakes keepAlive when an event starts waiting in a lane or
	// settling: with none waiting it sleeps, so an idle worker costs no
	// timer.
	heldBack chan struct{}
	// sending holds the ordered keys with a request in flight, live or
	// replayed; the channel closes when it ends.
	sending    map[string]chan struct{}
	wg         sync.WaitGroup // event goroutines
	settlingWG sync.WaitGroup // bookkeeping retries (see settle)
}

// progress is how far one event has come at this endpoint.
type progress struct {
	sent      int // HTTP attempts
	readFails int // failed reads of the delivered version
}

func newWorker(d *Dispatcher, ep Endpoint) *worker {
	w := &worker{
		d:        d,
		log:      d.opts.log.WithValues("webhookEndpoint", ep.ID()),
		fixed:    ep,
		done:     make(chan struct{}),
		adapt:    newAdaptive(ep.MaxInFlight, d.opts.fixedLimits),
		held:     make(chan struct{}, ep.MaxInFlight*heldPerSlot),
		lanes:    map[string][]event{},
		inUse:    map[uint64]bool{},
		out:      map[string]map[uint64]handedBack{},
		progress: map[uint64]progress{},
		settling: map[uint64]jetstream.Msg{},
		heldBack: make(chan struct{}, 1),
		sending:  map[string]chan struct{}{},
	}
	w.ep.Store(&ep)
	w.ctx, w.cancel = context.WithCancel(d.ctx)
	w.reqCtx, w.reqCancel = context.WithCancel(context.WithoutCancel(d.ctx))
	w.limiter = rate.NewLimiter(rate.Inf, 0)
	w.setRate(ep)
	w.health = newTracker(d, ep.Namespace, ep.Name)
	w.health.limits = w.adapt.limits
	w.metrics = newEndpointMetrics(ep.Namespace, ep.Name)
	window, _ := w.adapt.limits()
	w.metrics.concurrencyLimit.Set(float64(window))
	tr := &http.Transport{
		// A proxy from the environment is dialled with the same dialer,
		// so the egress guard checks its address too.
		Proxy: http.ProxyFromEnvironment,
		// Control checks the address actually dialled, after DNS.
		DialContext:           (&net.Dialer{Timeout: ep.Timeout, KeepAlive: 30 * time.Second, Control: d.opts.egress.Control}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          ep.MaxInFlight,
		MaxIdleConnsPerHost:   ep.MaxInFlight,
		MaxConnsPerHost:       ep.MaxInFlight,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   ep.Timeout,
		ResponseHeaderTimeout: ep.Timeout,
	}
	w.client = &http.Client{
		Transport: tr,
		Timeout:   ep.Timeout,
		// Redirects are failures, never followed: a receiver that moved
		// must be reconfigured, not chased.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return w
}

func (w *worker) setRate(ep Endpoint) {
	if ep.RateLimit > 0 {
		w.limiter.SetLimit(ep.RateLimit)
		w.limiter.SetBurst(max(ep.Burst, 1))
	} else {
		w.limiter.SetLimit(rate.Inf)
	}
}

// reconfigure applies ep in place when only live fields changed.
func (w *worker) reconfigure(ep Endpoint) bool {
	f := w.fixed
	if f.MaxInFlight != ep.MaxInFlight || f.Timeout != ep.Timeout || f.PerKey != ep.PerKey || f.Suspend != ep.Suspend {
		return false
	}
	w.ep.Store(&ep)
	w.setRate(ep)
	return true
}

// stop ends the worker and waits for it to hand everything back. It may
// be called before run starts, and more than once.
func (w *worker) stop() {
	w.cancel()
	<-w.done
}

// run is the fetch loop. It pulls as many events as it has room for and
// hands each to a key lane or straight to a request. While the endpoint
// keeps failing it probes instead: one event at a time, at the earliest
// scheduled retry, so new events wait in the stream. A suspended endpoint
// only sweeps: its events wait, and those whose window ends are
// dead-lettered as Expired before the stream's retention could drop them.
func (w *worker) run() {
	ctx := w.ctx
	defer close(w.done)
	b := w.buckets(ctx)
	if b == nil {
		return
	}
	w.vers = newVersionStore(b.versions, w.d.versionCache, w.fixed.Namespace, w.fixed.Name)
	defer w.vers.close() // after shutdown, which still settles events
	w.health.kv = b.health
	w.health.load(ctx)
	defer w.shutdown()
	go w.health.run(ctx)

	cons := w.consumer(ctx)
	if cons == nil {
		return
	}
	go w.keepAlive(ctx)
	if !w.fixed.Suspend {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.replays(ctx) }()
	}
	if w.fixed.Suspend {
		for {
			w.sweep(ctx, cons)
			if !sleep(ctx, w.d.opts.sweepInterval) {
				return
			}
		}
	}
	nextSweep := time.Now().Add(w.d.opts.sweepInterval)
	busy := false // the last pull came back full
	for ctx.Err() == nil {
		if w.health.probing() {
			if !time.Now().Before(nextSweep) {
				w.sweep(ctx, cons)
				nextSweep = time.Now().Add(w.d.opts.sweepInterval)
			}
			ready := w.waitForProbe(ctx, nextSweep)
			if ctx.Err() != nil {
				return
			}
			if !ready {
				continue
			}
			if !acquire(ctx, w.held) {
				return
			}
			if w.fetch(ctx, cons, 1, probeWait) == 0 {
				// Nothing came for the due retry: forget it, or the next
				// probe would be due at once. An event that came takes
				// the turn, and its end forgets it.
				w.health.probed(time.Now())
			}
			continue
		}
		// Wait for room for at least one event, then take all the room there is.
		if !acquire(ctx, w.held) {
			return
		}
		n := 1
		for n < cap(w.held) && tryAcquire(w.held) {
			n++
		}
		// A long pull only while there is nothing to pull and nothing
		// failing: a busy endpoint's pulls come back full at once, and
		// nats.go keeps a long pull's heartbeat timer for two heartbeats
		// after it ends, one per pull; a failing endpoint must notice
		// within seconds that it has started probing.
		wait := fetchWait
		if busy || w.health.failing() {
			wait = probeWait
		}
		busy = w.fetch(ctx, cons, n, wait) == n
	}
}

// buckets opens the namespace's buckets, and consumer the endpoint's
// consumer, waiting for the operator to create them; nil when ctx ends
// first.
func (w *worker) buckets(ctx context.Context) *buckets {
	return waitFor(ctx, w, "the namespace's buckets", func() (*buckets, error) {
		return w.d.bucketsOf(ctx, w.fixed.Namespace)
	})
}

func (w *worker) consumer(ctx context.Context) jetstream.Consumer {
	ep := w.ep.Load()
	return waitFor(ctx, w, "the endpoint's consumer", func() (jetstream.Consumer, error) {
		return w.d.js.Consumer(ctx, events.StreamName(ep.Namespace), streams.ConsumerName(ep.Namespace, ep.Name))
	})
}

// waitFor retries open with a growing backoff until it succeeds, or ctx
// ends (then the zero value).
func waitFor[T any](ctx context.Context, w *worker, what string, open func() (T, error)) T {
	var zero T
	for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
		v, err := open()
		if err == nil {
			return v
		}
		if ctx.Err() != nil {
			return zero
		}
		w.log.V(1).Info("waiting for "+what, "error", err.Error())
		if !sleep(ctx, backoff) {
			return zero
		}
	}
}

// fetch pulls up to n events, waiting up to wait for them, for which n
// held slots are already taken, and says how many came.
func (w *worker) fetch(ctx context.Context, cons jetstream.Consumer, n int, wait time.Duration) (got int) {
	defer func() { release(w.held, n-got) }()
	batch, cancel, err := w.pull(ctx, cons, n, wait)
	defer cancel()
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error(err, "fetching events")
			sleep(ctx, time.Second)
		}
		return got
	}
	for msg := range batch.Messages() {
		got++
		w.accept(ctx, msg)
	}
	if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		w.log.V(1).Info("fetch ended", "error", err.Error())
	}
	return got
}

// pull asks for up to n events, waiting up to wait for them. The pull
// ends with the worker or with the NATS connection it was sent on; a long
// one has heartbeats, at the longest interval nats.go allows.
func (w *worker) pull(ctx context.Context, cons jetstream.Consumer, n int, wait time.Duration) (jetstream.MessageBatch, context.CancelFunc, error) {
	fctx, cancel := context.WithTimeout(ctx, wait)
	stop := context.AfterFunc(w.d.connection(), cancel)
	opts := []jetstream.FetchOpt{jetstream.FetchContext(fctx)}
	if wait >= 10*time.Second {
		opts = append(opts, jetstream.FetchHeartbeat(wait*2/5))
	}
	batch, err := cons.Fetch(n, opts...)
	return batch, func() { stop(); cancel() }, err
}

// event is a pulled message with its metadata, parsed and checked once.
type event struct {
	msg  jetstream.Msg
	md   *jetstream.MsgMetadata
	meta events.Meta
	bad  error // the producer contract rule it breaks, if any
	lane string
	// replay is set on a replayed copy (replay.go): its replay, and the
	// original's subject, sequence and headers.
	replay *replayed
}

// seq is the event's sequence in the events stream.
func (e event) seq() uint64 {
	if e.replay != nil {
		return e.replay.seq
	}
	return e.md.Sequence.Stream
}

// subject and headers are the event's as published.
func (e event) subject() string {
	if e.replay != nil {
		return e.replay.subject
	}
	return e.msg.Subject()
}

func (e event) headers() nats.Header {
	if e.replay != nil {
		return e.replay.headers
	}
	return e.msg.Headers()
}

func (w *worker) parse(msg jetstream.Msg) (event, bool) {
	md, err := msg.Metadata()
	if err != nil {
		w.log.Error(err, "event without JetStream metadata")
		return event{}, false
	}
	e := event{msg: msg, md: md}
	e.meta, e.bad = events.ParseMeta(msg.Subject(), msg.Headers(), msg.Data())
	// Per-key order is the ordering policy's to choose; newest-version-wins
	// is not: versioned events of a key always go one at a time.
	if e.bad == nil && e.meta.Key != "" && (w.fixed.PerKey || e.meta.Version > 0) {
		e.lane = e.meta.Key
	}
	return e, true
}

// accept takes one fetched event (holding one held slot) and runs it,
// queues it behind the event of the same key that is in flight, or, when
// that key already has its lane's worth waiting, hands it back.
func (w *worker) accept(ctx context.Context, msg jetstream.Msg) {
	e, ok := w.parse(msg)
	if !ok {
		release(w.held, 1)
		return
	}
	seq, key := e.md.Sequence.Stream, e.lane
	now := time.Now()
	w.mu.Lock()
	if w.inUse[seq] || w.settling[seq] != nil {
		// A redelivered copy of an event we still hold (its ack wait ran
		// out while it waited its turn, or its bookkeeping is retried):
		// the copy we hold will answer.
		w.mu.Unlock()
		release(w.held, 1)
		return
	}
	if key != "" {
		q, busy := w.lanes[key]
		ahead := w.aheadLocked(key, seq, now)
		if ahead > 0 || (busy && len(q) >= laneDepth) {
			w.handBackLocked(e, ahead+len(q)+1, now)
			w.mu.Unlock()
			release(w.held, 1)
			return
		}
		w.inUse[seq] = true
		if busy {
			i, _ := slices.BinarySearchFunc(q, seq, func(x event, s uint64) int { return cmp.Compare(x.md.Sequence.Stream, s) })
			w.lanes[key] = slices.Insert(q, i, e)
			w.mu.Unlock()
			w.wakeKeepAlive()
			return
		}
		w.lanes[key] = nil
	} else {
		w.inUse[seq] = true
	}
	w.mu.Unlock()
	w.wg.Add(1)
	go w.lane(ctx, e)
}

// aheadLocked forgets seq as handed back (it is here now) and counts the
// key's earlier events still out; one that has not come back in time
// (removed from the stream meanwhile) stops counting.
func (w *worker) aheadLocked(key string, seq uint64, now time.Time) int {
	out := w.out[key]
	delete(out, seq)
	n := 0
	var reconnects uint64
	if len(out) > 0 {
		reconnects = w.reconnects()
	}
	for s, h := range out {
		if now.After(h.until) && h.reconnects != reconnects {
			// NATS came back since: a restarted server redelivers what was
			// pending an ack wait after it starts, not when the hand-back
			// asked, so the event gets that long again before a later one
			// of its key may overtake it.
			h = handedBack{until: now.Add(streams.AckWait(w.fixed.Timeout)), reconnects: reconnects}
			out[s] = h
		}
		switch {
		case now.After(h.until):
			delete(out, s)
		case s < seq:
			n++
		}
	}
	if len(out) == 0 {
		delete(w.out, key)
	}
	return n
}

// handedBack is an event returned to the stream: until when its key's
// later events wait for it, and how often the connection had reconnected
// then.
type handedBack struct {
	until      time.Time
	reconnects uint64
}

func (w *worker) reconnects() uint64 { return w.d.js.Conn().Stats().Reconnects }

// handBackLocked returns e to the stream, to come back about when its
// turn in the key will be: pos requests from now. It is not an attempt.
func (w *worker) handBackLocked(e event, pos int, now time.Time) {
	seq := e.md.Sequence.Stream
	lat := time.Duration(w.latency.Load())
	if lat <= 0 {
		lat = 50 * time.Millisecond
	}
	delay := min(max(time.Duration(pos)*lat, 20*time.Millisecond), streams.AckWait(w.fixed.Timeout))
	if w.out[e.lane] == nil {
		w.out[e.lane] = map[uint64]handedBack{}
	}
	w.out[e.lane][seq] = handedBack{until: now.Add(delay + streams.AckWait(w.fixed.Timeout)), reconnects: w.reconnects()}
	if _, known := w.progress[seq]; !known && e.md.NumDelivered == 1 && len(w.progress) < maxProgress {
		w.progress[seq] = progress{} // so its return reads no history
	}
	_ = e.msg.NakWithDelay(delay)
}

// lane delivers e and then, for a key, every event that queued behind
// it, one at a time in stream order.
func (w *worker) lane(ctx context.Context, e event) {
	defer w.wg.Done()
	key := e.lane
	for more := true; more; {
		w.handle(ctx, e)
		w.mu.Lock()
		delete(w.inUse, e.md.Sequence.Stream)
		more = false
		if key != "" {
			if q := w.lanes[key]; len(q) > 0 && ctx.Err() == nil {
				e, w.lanes[key], more = q[0], q[1:], true
			} else if ctx.Err() == nil {
				delete(w.lanes, key)
			}
		}
		w.mu.Unlock()
		release(w.held, 1)
	}
}

// keepAlive tells JetStream that events waiting in a lane are still being
// worked on, so their ack wait does not run out behind a slow request.
func (w *worker) keepAlive(ctx context.Context) {
	t := time.NewTicker(w.keepAliveEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		var waiting []jetstream.Msg
		for _, q := range w.lanes {
			for _, e := range q {
				waiting = append(waiting, e.msg)
			}
		}
		for _, m := range w.settling {
			waiting = append(waiting, m)
		}
		w.mu.Unlock()
		for _, m := range waiting {
			_ = m.InProgress()
		}
		if len(waiting) == 0 {
			t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-w.heldBack:
			}
			t.Reset(w.keepAliveEvery())
		}
	}
}

func (w *worker) wakeKeepAlive() {
	select {
	case w.heldBack <- struct{}{}:
	default:
	}
}

// keepAliveEvery is how often an event held back is marked in progress:
// three times per ack wait, so one lost message does not cost a redelivery.
func (w *worker) keepAliveEvery() time.Duration {
	return streams.AckWait(w.fixed.Timeout) / 3
}

// shutdown lets requests in flight finish (bounded by the drain timeout,
// on their own context) and hands every waiting event back to JetStream
// for prompt redelivery.
func (w *worker) shutdown() {
	finished := make(chan struct{})
	go func() { w.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(w.d.opts.drainTimeout):
		w.log.Info("requests still in flight after the drain timeout; JetStream will redeliver them")
	}
	w.reqCancel()
	<-finished
	w.settlingWG.Wait()
	w.mu.Lock()
	for key, q := range w.lanes {
		for _, e := range q {
			_ = e.msg.Nak()
		}
		delete(w.lanes, key)
	}
	w.mu.Unlock()
	w.health.flush()
}

// waitForProbe waits until nothing is held and the earliest retry is
// due (true), or until the endpoint stops probing (true) or until
// (false); while events are held, they take the probe turns themselves.
func (w *worker) waitForProbe(ctx context.Context, until time.Time) bool {
	for {
		w.mu.Lock()
		idle := len(w.inUse) == 0
		w.mu.Unlock()
		now := time.Now()
		at := w.health.nextProbe(w.ep.Load().Policy.Schedule[0])
		if idle && !now.Before(at) {
			return true
		}
		if !now.Before(until) {
			return false
		}
		wait := time.Until(at)
		if !idle || wait <= 0 {
			wait = 50 * time.Millisecond
		}
		if !sleep(ctx, min(wait, time.Second, time.Until(until)+time.Millisecond)) {
			return false
		}
		if !w.health.probing() {
			return true
		}
	}
}

// awaitTurn holds an event back while the endpoint is probing: events
// already pulled wait in memory (kept alive) instead of hitting a failing
// receiver, and only one of them at a time, at the earliest scheduled
// retry, goes as the probe. They sleep until the next probe is due or the
// endpoint's state changes, not on a poll. It returns false when ctx ends.
func (w *worker) awaitTurn(ctx context.Context, msg jetstream.Msg) (ok, probe bool) {
	var keepAlive <-chan time.Time // made on the first wait: a healthy endpoint never waits
	for {
		ok, probe, at, changed := w.health.takeTurn(time.Now(), w.ep.Load().Policy.Schedule[0])
		if ok {
			return true, probe
		}
		if keepAlive == nil {
			t := time.NewTicker(w.keepAliveEvery())
			defer t.Stop()
			keepAlive = t.C
		}
		due := time.NewTimer(max(time.Until(at), time.Millisecond))
		select {
		case <-ctx.Done():
			due.Stop()
			return false, false
		case <-keepAlive:
			_ = msg.InProgress()
		case <-changed:
		case <-due.C:
		}
		due.Stop()
	}
}

// acquireSlot waits for a request slot, keeping msg alive meanwhile: behind
// a full set of requests to a slow endpoint the wait can outlast the ack wait.
func (w *worker) acquireSlot(ctx context.Context, msg jetstream.Msg) bool {
	if tryAcquire(w.adapt.slots) {
		w.adapt.acquired()
		return true
	}
	t := time.NewTicker(w.keepAliveEvery())
	defer t.Stop()
	for {
		select {
		case w.adapt.slots <- struct{}{}:
			w.adapt.acquired()
			return true
		case <-ctx.Done():
			return false
		case <-t.C:
			_ = msg.InProgress()
		}
	}
}

// waitRate waits for the endpoint's rate limit and then its adaptive
// rate, keeping msg alive: behind a low limit the wait can outlast the
// ack wait.
func (w *worker) waitRate(ctx context.Context, msg jetstream.Msg) bool {
	if !w.waitLimiter(ctx, msg, w.limiter) {
		return false
	}
	w.adapt.noteWait(time.Now())
	return w.waitLimiter(ctx, msg, w.adapt.rate)
}

// waitLimiter waits for l, keeping msg alive.
func (w *worker) waitLimiter(ctx context.Context, msg jetstream.Msg, l *rate.Limiter) bool {
	r := l.Reserve()
	if d := r.Delay(); d > 0 {
		if !w.holdFor(ctx, msg, d) {
			r.Cancel()
			return false
		}
	}
	return true
}

// holdFor waits d, marking msg in progress meanwhile; false when ctx ends.
func (w *worker) holdFor(ctx context.Context, msg jetstream.Msg, d time.Duration) bool {
	due := time.NewTimer(d)
	defer due.Stop()
	t := time.NewTicker(w.keepAliveEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-due.C:
			return true
		case <-t.C:
			_ = msg.InProgress()
		}
	}
}

// endTurn ends the probe an attempt took in awaitTurn.
func (w *worker) endTurn() { w.health.endTurn(time.Now()) }

// prior is what is known of e from before this delivery: its progress and,
// when it was already finished before a restart, the last outcome the
// delivery log holds for it (delivered, superseded or dead).
func (w *worker) prior(ctx context.Context, e event) (progress, *Attempt) {
	seq := e.md.Sequence.Stream
	w.mu.Lock()
	p, ok := w.progress[seq]
	w.mu.Unlock()
	if ok || e.md.NumDelivered <= 1 {
		return p, nil
	}
	ep := w.ep.Load()
	hist, err := w.d.readLog(ctx, ep.Namespace, streams.AttemptSubject(ep.Namespace, ep.Name, e.meta.ID))
	if err != nil {
		// Counting deliveries over-counts hand-backs; it never under-counts.
		w.log.Error(err, "reading an event's history; counting its deliveries as attempts", "eventID", e.meta.ID)
		return progress{sent: int(e.md.NumDelivered) - 1}, nil
	}
	var decided *Attempt
	for i := range hist {
		if hist[i].Sequence != seq {
			continue // an earlier event that reused the id
		}
		p.sent = max(p.sent, hist[i].Attempt)
		// A decision wins over any retrying entry logged after it (a
		// retried log publish can land late).
		if hist[i].Outcome != OutcomeRetrying && decided == nil {
			decided = &hist[i]
		}
	}
	return p, decided
}

func (w *worker) setProgress(seq uint64, p progress) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.progress) >= maxProgress {
		// Entries of events that never came back (aged out of the stream);
		// the rest fall back to the delivery log.
		clear(w.progress)
	}
	w.progress[seq] = p
}

func (w *worker) forget(seq uint64) {
	w.mu.Lock()
	delete(w.progress, seq)
	w.mu.Unlock()
}

// maxProgress bounds the progress map; the consumer's MaxAckPending bounds
// the events really unfinished far below it.
const maxProgress = 100_000

// windowStart is when an event's retry window opened: its time, but never
// later than when the stream stored it, so a producer cannot stretch the
// window past the stream's retention.
func windowStart(eventTime, stored time.Time) time.Time {
	if eventTime.IsZero() || eventTime.After(stored) {
		return stored
	}
	return eventTime
}

// newAttempt is the log entry of e at this endpoint, before anything is
// tried. An event Herald cannot deliver is dead already; its id may be
// anything, so the log and dead letter name it by its stream sequence.
func (w *worker) newAttempt(e event) *Attempt {
	ep := w.ep.Load()
	seq := e.seq()
	if e.bad != nil {
		return &Attempt{
			EventID: "seq-" + itoa(seq), Namespace: ep.Namespace, Endpoint: ep.Name, Sequence: seq,
			Time: time.Now(), Outcome: OutcomeDead, Error: e.bad.Error(), DeadReason: DeadMalformed, Why: "malformed event",
		}
	}
	return &Attempt{
		EventID: e.meta.ID, Namespace: ep.Namespace, Endpoint: ep.Name, Type: e.meta.Type,
		Key: e.meta.Key, Version: e.meta.Version, Sequence: seq,
	}
}

// pastWindow reports whether e's retry window has ended by now. A retry
// was scheduled inside the window, so it gets an ack wait of slack for
// coming back late (a busy server, a restart); an event never attempted
// gets none.
func (w *worker) pastWindow(e event, p progress, now time.Time) bool {
	end := windowStart(e.meta.Time, e.md.Timestamp).Add(w.ep.Load().Policy.Window)
	if p.sent > 0 {
		end = end.Add(streams.AckWait(w.fixed.Timeout))
	}
	return now.After(end)
}

// handle runs one event to its outcome for this attempt: delivered,
// superseded, retrying or dead. Every path acks, naks or dead-letters it;
// once an outcome is decided, nothing that fails after it sends the event
// again (see settle).
func (w *worker) handle(ctx context.Context, e event) {
	ep := w.ep.Load()
	msg, md, ev := e.msg, e.md, e.meta
	seq := md.Sequence.Stream
	a := w.newAttempt(e)
	if e.bad != nil {
		w.deadLetter(e, a)
		return
	}
	start := windowStart(ev.Time, md.Timestamp)
	p, last := w.prior(ctx, e)
	a.Attempt = p.sent
	keyed := ev.Key != ""
	m := mark{version: ev.Version, seq: seq}
	if last != nil {
		// Finished before a restart that came ahead of its ack.
		switch last.Outcome {
		case OutcomeDead:
			a.Time, a.Outcome, a.DeadReason, a.Why = time.Now(), OutcomeDead, last.DeadReason, last.Why
			w.deadLetter(e, a)
			return
		case OutcomeDelivered:
			a.Time, a.Outcome, a.Why = time.Now(), OutcomeDelivered, "delivered before a restart; not sent again"
			w.finishDelivered(e, a, keyed, m)
			return
		}
	}
	if now := time.Now(); w.pastWindow(e, p, now) {
		a.Time, a.Outcome = now, OutcomeDead
		a.DeadReason, a.Why = DeadWindow, "retry window exhausted"
		if p.sent == 0 {
			a.DeadReason, a.Why = DeadExpired, "its retry window ended before it could be attempted"
		}
		w.deadLetter(e, a)
		return
	}
	if keyed {
		last, err := w.vers.delivered(ctx, ev.Key)
		if err != nil && ctx.Err() != nil {
			_ = msg.Nak() // stopping: not the bucket's fault
			return
		}
		if err != nil {
			w.bookkeepingFailed(e, a, p, start, err)
			return
		}
		if last.seq == m.seq {
			// Delivered before a stop that came ahead of the ack (and maybe
			// of its log entry): not sent again, and logged so the log
			// says delivered whatever the stop lost.
			a.Time, a.Outcome, a.Why = time.Now(), OutcomeDelivered, "delivered before a restart; not sent again"
			w.d.logAttempt(a)
			w.forget(seq)
			_ = msg.Ack()
			return
		}
		if !m.newer(last) {
			w.supersede(e, a)
			return
		}
	}

	// The request slot comes before the turn: an event that queued for a
	// slot while the endpoint was healthy must still ask for its turn once
	// it has one, or every event held when the endpoint started failing
	// would be sent to it anyway.
	if !w.acquireSlot(ctx, msg) {
		_ = msg.Nak()
		return
	}
	ok, probe := w.awaitTurn(ctx, msg)
	if !ok {
		w.adapt.release()
		_ = msg.Nak()
		return
	}
	if probe {
		defer w.endTurn()
	}
	// A stop may have come while it waited: nothing starts after it.
	if !w.waitRate(ctx, msg) || ctx.Err() != nil {
		w.adapt.release()
		_ = msg.Nak()
		return
	}
	if e.lane != "" {
		// One request of a key at a time, against a replay of it too.
		if !w.lockKey(ctx, msg, e.lane) {
			w.adapt.release()
			_ = msg.Nak()
			return
		}
		defer w.unlockKey(e.lane)
	}
	if keyed && (!ep.PerKey || e.lane != "") {
		// Check again at the last moment: the lane keeps versioned events
		// of a key in order, this catches what was delivered while the
		// event waited for its slot (on an unordered endpoint) or for a
		// replay of its key.
		if last, err := w.vers.delivered(ctx, ev.Key); err == nil && !m.newer(last) {
			w.adapt.release()
			w.supersede(e, a)
			return
		}
	}
	status, respBody, hdr, latency, herr := w.send(ep, ev.ID, msg.Data())
	// The slot is freed once the outcome is in the tracker, so an event
	// waiting for it sees a failure that starts probing before it sends.
	if w.reqCtx.Err() != nil && herr != nil {
		// Cut off at the end of the drain: not the endpoint's fault, and
		// not an attempt.
		w.adapt.release()
		_ = msg.Nak()
		return
	}
	w.observeLatency(latency)
	w.observeLimits(status, herr, latency)
	p.sent++
	now := time.Now()
	a.Attempt, a.Time, a.StatusCode, a.LatencyMS, a.Response = p.sent, now, status, float64(latency.Microseconds())/1000, respBody
	w.metrics.attempted(status, latency)
	v := classify(&ep.Policy, status, herr)
	if herr != nil {
		a.Error = errorMessage(herr)
	}
	a.Reason = v.reason

	if v.delivered {
		if ep.LatencyTarget > 0 && now.Sub(md.Timestamp) > ep.LatencyTarget {
			w.metrics.overTarget.Inc()
		}
		a.Outcome = OutcomeDelivered
		w.health.success(now)
		w.adapt.release()
		w.metrics.outcome(OutcomeDelivered)
		w.finishDelivered(e, a, keyed, m)
		return
	}

	fail := Failure{Time: now, StatusCode: status, Reason: v.reason, Message: failureMessage(status, a.Error), EventID: ev.ID}
	plan := retryPlan{dead: true, reason: DeadTerminal, why: "terminal response"}
	if v.why != "" {
		plan.why = v.why
	}
	if v.retryable {
		ra, hasRA := retryAfter(hdr, now)
		plan = planRetry(&ep.Policy, p.sent+p.readFails, now, start, ra, hasRA, jitterRand)
	}
	if plan.dead {
		a.Outcome, a.DeadReason, a.Why = OutcomeDead, plan.reason, plan.why
		w.health.failure(fail, nil, v.retryable)
		w.adapt.release()
		w.deadLetter(e, a)
		return
	}
	next := now.Add(plan.delay)
	a.Outcome, a.NextAttempt = OutcomeRetrying, &next
	w.health.failure(fail, &next, true)
	w.adapt.release()
	w.setProgress(seq, p)
	w.d.logAttempt(a)
	_ = msg.NakWithDelay(plan.delay)
	w.metrics.outcome(OutcomeRetrying)
}

// finishDelivered records a delivered event's version, logs it and acks
// it. When the version cannot be written the new mark is kept in memory
// (so no older version gets through) and the write is retried without
// sending the event again; the ack waits for the write.
func (w *worker) finishDelivered(e event, a *Attempt, keyed bool, m mark) {
	w.forget(m.seq)
	if keyed && !w.d.opts.noVersionRecords {
		if err := w.vers.record(w.reqCtx, e.meta.Key, m); err != nil {
			w.log.Error(err, "recording a delivered version; keeping it in memory and retrying the write", "eventID", a.EventID)
			w.metrics.bookkeepingFailed("version")
			w.d.logAttempt(a)
			w.settle(e.msg, "version", func(ctx context.Context) error { return w.vers.flush(ctx, e.meta.Key) })
			return
		}
	}
	w.d.logAttempt(a)
	_ = e.msg.Ack()
}

func (w *worker) supersede(e event, a *Attempt) {
	a.Time, a.Outcome, a.Why = time.Now(), OutcomeSuperseded, "a newer version of the key was delivered"
	// The log entry goes first: on one connection it reaches NATS before
	// the ack, so an acked event always has its entry.
	w.d.logAttempt(a)
	w.forget(a.Sequence)
	_ = e.msg.Ack()
	w.health.superseded()
	w.metrics.outcome(OutcomeSuperseded)
}

// bookkeepingFailed handles an event whose delivered version could not be
// read: not sent (it might be older than what was delivered), retried on
// the endpoint's schedule within its window, as a failed attempt would be.
func (w *worker) bookkeepingFailed(e event, a *Attempt, p progress, start time.Time, err error) {
	ep := w.ep.Load()
	now := time.Now()
	w.metrics.bookkeepingFailed("versionRead")
	p.readFails++
	a.Time, a.Reason, a.Error = now, ReasonVersionUnreadable, err.Error()
	plan := planRetry(&ep.Policy, p.sent+p.readFails, now, start, 0, false, jitterRand)
	if plan.dead {
		a.Outcome, a.DeadReason, a.Why = OutcomeDead, plan.reason, plan.why+" (its delivered version could not be read)"
		w.deadLetter(e, a)
		return
	}
	next := now.Add(plan.delay)
	a.Outcome, a.NextAttempt = OutcomeRetrying, &next
	w.log.Error(err, "reading the delivered version; retrying on the endpoint's schedule", "eventID", a.EventID, "retryIn", plan.delay.String())
	w.setProgress(a.Sequence, p)
	w.d.logAttempt(a)
	_ = e.msg.NakWithDelay(plan.delay)
}

// settle finishes an event whose outcome is decided but whose bookkeeping
// (a version record, a dead letter) failed: it retries fn with backoff,
// and acks msg once fn succeeds. Meanwhile keepAlive marks msg in progress
// and accept drops any redelivered copy, so the event is never sent again
// and the decision never taken twice. If the worker stops first, msg is
// left unacked: its redelivery finds the outcome in the delivery log.
func (w *worker) settle(msg jetstream.Msg, what string, fn func(context.Context) error) {
	md, err := msg.Metadata()
	if err != nil {
		return
	}
	seq := md.Sequence.Stream
	w.mu.Lock()
	w.settling[seq] = msg
	w.mu.Unlock()
	w.wakeKeepAlive()
	w.health.pendingWrites(1)
	w.metrics.pending.Inc()
	w.settlingWG.Add(1)
	go func() {
		defer w.settlingWG.Done()
		defer func() {
			w.mu.Lock()
			delete(w.settling, seq)
			w.mu.Unlock()
			w.metrics.pending.Dec()
			w.health.pendingWrites(-1)
		}()
		for backoff := 250 * time.Millisecond; ; backoff = min(backoff*2, 10*time.Second) {
			if !sleep(w.ctx, backoff) {
				return
			}
			ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
			err := fn(ctx)
			cancel()
			if err == nil {
				_ = msg.Ack()
				return
			}
			w.metrics.bookkeepingFailed(what)
			w.log.V(1).Info("bookkeeping still failing; the event is kept and not sent again", "what", what, "error", err.Error())
		}
	}()
}

// observeLatency folds one request's time into the moving average.
func (w *worker) observeLatency(d time.Duration) {
	old := w.latency.Load()
	if old == 0 {
		old = int64(d)
	}
	w.latency.Store(old - old/8 + int64(d)/8)
}

// observeLimits feeds one answer to the adaptive limits, before its
// request's slot is released.
func (w *worker) observeLimits(status int, err error, latency time.Duration) {
	window, rps := w.adapt.observe(signalOf(status, err), latency, time.Now())
	w.metrics.concurrencyLimit.Set(float64(window))
	w.metrics.adaptiveRate.Set(rps)
}

// send makes one signed POST on the request context, which a stop does
// not cut short. The signature's timestamp is the attempt's, as Standard
// Webhooks verifiers expect.
func (w *worker) send(ep *Endpoint, id string, body []byte) (int, string, http.Header, time.Duration, error) {
	req, err := http.NewRequestWithContext(w.reqCtx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return 0, "", nil, 0, err
	}
	for k, v := range ep.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", w.d.opts.userAgent)
	start := time.Now()
	w.adapt.sent(start)
	signing.SetHeaders(req.Header, ep.Keys, id, start, body)
	w.metrics.inFlight.Inc()
	w.health.inFlight.Add(1)
	resp, err := w.client.Do(req)
	w.health.inFlight.Add(-1)
	w.metrics.inFlight.Dec()
	if err != nil {
		return 0, "", nil, time.Since(start), err
	}
	defer resp.Body.Close()
	limit := int64(w.d.opts.maxResponseBody)
	kept, _ := io.ReadAll(io.LimitReader(resp.Body, limit))
	// Drain a little more so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(kept), resp.Header, time.Since(start), nil
}

func failureMessage(status int, errText string) string {
	if errText != "" {
		return errText
	}
	return "HTTP " + itoa(uint64(status)) + " " + http.StatusText(status)
}

// acquire takes one token from a semaphore channel, or gives up when ctx ends.
func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

func release(sem chan struct{}, n int) {
	for range n {
		<-sem
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
