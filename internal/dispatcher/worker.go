package dispatcher

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
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
	fetchWait = 2 * time.Second
	// heldPerSlot bounds events held in memory (in flight plus waiting in a
	// key's lane) to this many per request slot.
	heldPerSlot = 4
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

	cancel context.CancelFunc
	done   chan struct{}

	slots chan struct{} // one per concurrent request
	held  chan struct{} // one per event held in memory

	metrics endpointMetrics

	mu    sync.Mutex
	lanes map[string][]event // key -> events waiting behind the one in flight
	inUse map[uint64]bool    // stream sequences held, to drop a redelivered copy
	wg    sync.WaitGroup     // event goroutines
}

func newWorker(d *Dispatcher, ep Endpoint) *worker {
	w := &worker{
		d:     d,
		log:   d.opts.log.WithValues("webhookEndpoint", ep.ID()),
		fixed: ep,
		vers:  newVersionStore(d.versions, ep.Namespace, ep.Name),
		done:  make(chan struct{}),
		slots: make(chan struct{}, ep.MaxInFlight),
		held:  make(chan struct{}, ep.MaxInFlight*heldPerSlot),
		lanes: map[string][]event{},
		inUse: map[uint64]bool{},
	}
	w.ep.Store(&ep)
	w.limiter = rate.NewLimiter(rate.Inf, 0)
	w.setRate(ep)
	w.health = newTracker(d, ep.Namespace, ep.Name)
	w.metrics = newEndpointMetrics(ep.Namespace, ep.Name)
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: ep.Timeout, KeepAlive: 30 * time.Second}).DialContext,
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
	if f.MaxInFlight != ep.MaxInFlight || f.Timeout != ep.Timeout || f.PerKey != ep.PerKey {
		return false
	}
	w.ep.Store(&ep)
	w.setRate(ep)
	return true
}

// stop ends the worker and waits for it to hand everything back.
func (w *worker) stop() {
	w.cancel()
	<-w.done
}

// run is the fetch loop. It pulls as many events as it has room for and
// hands each to a key lane or straight to a request. While the endpoint
// keeps failing it probes instead: one event at a time, at the earliest
// scheduled retry, so new events wait in the stream.
func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	defer w.shutdown()
	go w.health.run(ctx)
	go w.keepAlive(ctx)

	ep := w.ep.Load()
	var cons jetstream.Consumer
	for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
		var err error
		cons, err = w.d.js.Consumer(ctx, events.StreamName, streams.ConsumerName(ep.Namespace, ep.Name))
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		w.log.V(1).Info("waiting for the endpoint's consumer", "error", err.Error())
		if !sleep(ctx, backoff) {
			return
		}
	}

	for ctx.Err() == nil {
		if w.health.probing() {
			if !w.waitForProbe(ctx) || !acquire(ctx, w.held) {
				return
			}
			w.fetch(ctx, cons, 1)
			w.health.probed(time.Now())
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
		w.fetch(ctx, cons, n)
	}
}

// fetch pulls up to n events, for which n held slots are already taken.
func (w *worker) fetch(ctx context.Context, cons jetstream.Consumer, n int) {
	got := 0
	defer func() { release(w.held, n-got) }()
	fctx, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	batch, err := cons.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error(err, "fetching events")
			sleep(ctx, time.Second)
		}
		return
	}
	for msg := range batch.Messages() {
		got++
		w.accept(ctx, msg)
	}
	if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		w.log.V(1).Info("fetch ended", "error", err.Error())
	}
}

// event is a pulled message with its metadata, parsed once.
type event struct {
	msg jetstream.Msg
	md  *jetstream.MsgMetadata
}

// accept takes one fetched event (holding one held slot) and runs it, or
// queues it behind the event of the same key that is in flight.
func (w *worker) accept(ctx context.Context, msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		w.log.Error(err, "event without JetStream metadata")
		release(w.held, 1)
		return
	}
	key := ""
	if w.fixed.PerKey {
		key = msg.Headers().Get(events.HeaderKey)
	}
	w.mu.Lock()
	if w.inUse[md.Sequence.Stream] {
		// A redelivered copy of an event we still hold (its ack wait ran
		// out while it waited its turn): the copy we hold will answer.
		w.mu.Unlock()
		release(w.held, 1)
		return
	}
	w.inUse[md.Sequence.Stream] = true
	e := event{msg: msg, md: md}
	if key != "" {
		if q, busy := w.lanes[key]; busy {
			w.lanes[key] = append(q, e)
			w.mu.Unlock()
			return
		}
		w.lanes[key] = nil
	}
	w.mu.Unlock()
	w.wg.Add(1)
	go w.lane(ctx, key, e)
}

// lane delivers msg and then, for a key, every event that queued behind
// it, one at a time in stream order.
func (w *worker) lane(ctx context.Context, key string, e event) {
	defer w.wg.Done()
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
		var waiting []event
		for _, q := range w.lanes {
			waiting = append(waiting, q...)
		}
		w.mu.Unlock()
		for _, e := range waiting {
			_ = e.msg.InProgress()
		}
	}
}

// keepAliveEvery is how often an event held back is marked in progress:
// three times per ack wait, so one lost message does not cost a redelivery.
func (w *worker) keepAliveEvery() time.Duration {
	return streams.AckWait(w.fixed.Timeout) / 3
}

// shutdown waits (bounded) for requests in flight and hands every waiting
// event back to JetStream for prompt redelivery.
func (w *worker) shutdown() {
	finished := make(chan struct{})
	go func() { w.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(w.d.opts.drainTimeout):
		w.log.Info("requests still in flight after the drain timeout; JetStream will redeliver them")
	}
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
// due; while events are held, they take the probe turns themselves.
func (w *worker) waitForProbe(ctx context.Context) bool {
	for {
		w.mu.Lock()
		idle := len(w.inUse) == 0
		w.mu.Unlock()
		at := w.health.nextProbe(w.ep.Load().Policy.Schedule[0])
		if idle && !time.Now().Before(at) {
			return true
		}
		wait := time.Until(at)
		if !idle || wait <= 0 {
			wait = 50 * time.Millisecond
		}
		if !sleep(ctx, min(wait, time.Second)) {
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
func (w *worker) awaitTurn(ctx context.Context, msg jetstream.Msg) bool {
	var keepAlive <-chan time.Time // made on the first wait: a healthy endpoint never waits
	for {
		ok, at, changed := w.health.takeTurn(time.Now(), w.ep.Load().Policy.Schedule[0])
		if ok {
			return true
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
			return false
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
	if tryAcquire(w.slots) {
		return true
	}
	t := time.NewTicker(w.keepAliveEvery())
	defer t.Stop()
	for {
		select {
		case w.slots <- struct{}{}:
			return true
		case <-ctx.Done():
			return false
		case <-t.C:
			_ = msg.InProgress()
		}
	}
}

// endTurn ends an attempt started by awaitTurn.
func (w *worker) endTurn() { w.health.endTurn(time.Now()) }

// handle runs one event to its outcome for this attempt: delivered,
// superseded, retrying or dead. Every path acks, naks or dead-letters it.
func (w *worker) handle(ctx context.Context, e event) {
	ep := w.ep.Load()
	msg, md := e.msg, e.md
	ev, err := events.ParseMeta(msg.Subject(), msg.Headers().Get)
	if ev.Time.IsZero() {
		ev.Time = md.Timestamp
	}
	a := &Attempt{
		EventID: ev.ID, Namespace: ep.Namespace, Endpoint: ep.Name, Type: ev.Type,
		Key: ev.Key, Version: ev.Version, Sequence: md.Sequence.Stream, Attempt: int(md.NumDelivered),
	}
	if err != nil {
		// Not an event Herald can deliver; keep it whole for a person.
		if a.EventID == "" {
			a.EventID = "seq-" + itoa(md.Sequence.Stream)
		}
		a.Time, a.Outcome, a.Reason, a.Error, a.Why = time.Now(), OutcomeDead, ReasonMalformed, err.Error(), "malformed event"
		w.deadLetter(ctx, msg, a)
		return
	}
	m := mark{version: ev.Version, seq: md.Sequence.Stream}
	keyed := ev.Key != ""
	if keyed {
		last, err := w.vers.delivered(ctx, ev.Key)
		if err != nil {
			w.log.Error(err, "reading delivered version; retrying shortly", "eventID", ev.ID)
			_ = msg.NakWithDelay(time.Second)
			return
		}
		if last.seq == m.seq {
			// Delivered before a stop that came ahead of the ack (and maybe
			// of its log entry): not sent again, and logged so the log
			// says delivered whatever the stop lost.
			a.Time, a.Outcome, a.Why = time.Now(), OutcomeDelivered, "delivered before a restart; not sent again"
			w.d.logAttempt(a)
			_ = msg.Ack()
			return
		}
		if !m.newer(last) {
			a.Time, a.Outcome, a.Why = time.Now(), OutcomeSuperseded, "a newer version of the key was delivered"
			// The log entry goes first: on one connection it reaches NATS
			// before the ack, so an acked event always has its entry.
			w.d.logAttempt(a)
			_ = msg.Ack()
			w.health.superseded()
			w.metrics.outcome(OutcomeSuperseded)
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
	if !w.awaitTurn(ctx, msg) {
		release(w.slots, 1)
		_ = msg.Nak()
		return
	}
	defer w.endTurn()
	if err := w.limiter.Wait(ctx); err != nil {
		release(w.slots, 1)
		_ = msg.Nak()
		return
	}
	status, respBody, hdr, latency, herr := w.send(ctx, ep, ev.ID, msg.Data())
	release(w.slots, 1)
	if ctx.Err() != nil && herr != nil {
		// Shutting down mid-request: not the endpoint's fault.
		_ = msg.Nak()
		return
	}
	now := time.Now()
	a.Time, a.StatusCode, a.LatencyMS, a.Response = now, status, float64(latency.Microseconds())/1000, respBody
	w.metrics.latency.Observe(latency.Seconds())
	v := classify(&ep.Policy, status, herr)
	if herr != nil {
		a.Error = errorMessage(herr)
	}
	a.Reason = v.reason

	if v.delivered {
		if keyed && !w.d.opts.noVersionRecords {
			if err := w.vers.record(ctx, ev.Key, m); err != nil {
				// Delivered but not recorded: leave it unacked so the
				// redelivery records it (the receiver may see it twice).
				w.log.Error(err, "recording delivered version", "eventID", ev.ID)
				_ = msg.NakWithDelay(time.Second)
				return
			}
		}
		a.Outcome = OutcomeDelivered
		w.d.logAttempt(a)
		_ = msg.Ack()
		w.health.success(now)
		w.metrics.outcome(OutcomeDelivered)
		return
	}

	fail := Failure{Time: now, StatusCode: status, Reason: v.reason, Message: failureMessage(status, a.Error), EventID: ev.ID}
	plan := retryPlan{dead: true, why: "terminal response"}
	if v.retryable {
		ra, hasRA := retryAfter(hdr, now)
		plan = planRetry(&ep.Policy, a.Attempt, now, ev.Time, ra, hasRA, jitterRand)
	}
	if plan.dead {
		a.Outcome, a.Why = OutcomeDead, plan.why
		w.health.failure(fail, nil)
		w.deadLetter(ctx, msg, a)
		return
	}
	next := now.Add(plan.delay)
	a.Outcome, a.NextAttempt = OutcomeRetrying, &next
	w.d.logAttempt(a)
	_ = msg.NakWithDelay(plan.delay)
	w.health.failure(fail, &next)
	w.metrics.outcome(OutcomeRetrying)
}

// send makes one signed POST. The signature's timestamp is the attempt's,
// as Standard Webhooks verifiers expect.
func (w *worker) send(ctx context.Context, ep *Endpoint, id string, body []byte) (int, string, http.Header, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return 0, "", nil, 0, err
	}
	for k, v := range ep.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", w.d.opts.userAgent)
	start := time.Now()
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
