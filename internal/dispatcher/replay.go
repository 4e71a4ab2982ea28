package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// A replay is a copy of each selected event on the namespace's replay
// stream, which only the operator writes (streams.ReplaySubject). The
// endpoint's worker pulls its replay consumer next to its events
// consumer and sends each copy as the event it copies: same webhook-id,
// body and type, signed afresh, through the same request slots, rate
// limit, probe turns and egress guard, retried on the endpoint's
// schedule. What differs:
//
//   - Its position in its key is the original's (version, original stream
//     sequence), so newest-version-wins applies unchanged: a strictly
//     newer delivered version supersedes it. An equal one does not: the
//     events consumer acks an event equal to the delivered mark unsent
//     (it was delivered before a crash), but a replay of the newest
//     delivered event is meant to be sent.
//   - Its retry window starts when the copy was made, not at the event's
//     time, which for a dead letter has long passed.
//   - Its decision is durable before its ack, in this order: the log
//     entry, the bookkeeping (version, dead letter), then its outcome on
//     streams.ReplayOutcomeSubject. A redelivered copy whose outcome is
//     final is acked unsent, and one whose decision is logged finishes
//     the bookkeeping unsent. So the replay machinery sends an event at
//     most once per replay, whatever restarts; the one window left is
//     between the receiver's answer and the log write (a crash, or NATS
//     refusing the write), where it is sent again: at least once wins.

// ReplayOutcome is what became of one replayed event; the last one on its
// subject is its state.
type ReplayOutcome struct {
	EventID string `json:"eventID"`
	// Sequence is the original event's stream sequence.
	Sequence uint64 `json:"streamSequence"`
	// Outcome is retrying, delivered, superseded or dead.
	Outcome    string    `json:"outcome"`
	StatusCode int       `json:"statusCode,omitempty"`
	Attempts   int       `json:"attempts"`
	Reason     string    `json:"reason,omitempty"`
	Time       time.Time `json:"time"`
}

// Final reports whether nothing more happens to the event in its replay.
func (o ReplayOutcome) Final() bool { return o.Outcome != OutcomeRetrying }

// replayed is what a replayed copy says of its replay and its original.
type replayed struct {
	name, uid string
	rate      float64
	subject   string      // the original's
	seq       uint64      // the original's stream sequence
	headers   nats.Header // the original's, as published
}

// replays delivers the endpoint's replayed copies until ctx ends. A batch
// is what the consumer has ready; its events of one key go one at a time
// in stream order (the order the replay selected them in), and the next
// batch starts when this one has been decided, sent back to retry or
// superseded.
func (w *worker) replays(ctx context.Context) {
	ns, name := w.fixed.Namespace, w.fixed.Name
	cons := waitFor(ctx, w, "the endpoint's replay consumer", func() (jetstream.Consumer, error) {
		return w.d.js.Consumer(ctx, streams.ReplayStream(ns), streams.ConsumerName(ns, name))
	})
	if cons == nil {
		return
	}
	stream := waitFor(ctx, w, "the namespace's replay stream", func() (jetstream.Stream, error) {
		return w.d.js.Stream(ctx, streams.ReplayStream(ns))
	})
	if stream == nil {
		return
	}
	limiters := map[string]*rate.Limiter{}
	n := w.fixed.MaxInFlight * heldPerSlot
	wait := replayWait
	for ctx.Err() == nil {
		// One long pull for the first copy, then whatever else is ready;
		// short pulls while a replay runs (see run on heartbeat timers).
		first, cancel, err := w.pull(ctx, cons, 1, wait)
		var evs []event
		if err == nil {
			evs = w.collectReplays(first, evs)
			if berr := first.Error(); berr != nil && !errors.Is(berr, nats.ErrTimeout) && !errors.Is(berr, context.DeadlineExceeded) {
				err = berr
			}
		}
		cancel()
		if errors.Is(err, context.Canceled) || errors.Is(err, jetstream.ErrNoHeartbeat) {
			err = nil // a pull redone after a reconnect or a lost heartbeat
		}
		if err != nil && ctx.Err() == nil && len(evs) == 0 {
			// A pull refused at once (a missing consumer, a leader
			// change) must not turn into a busy loop.
			w.log.Error(err, "fetching replayed events")
			sleep(ctx, time.Second)
		}
		if len(evs) == 0 {
			wait = replayWait
			continue
		}
		wait = probeWait
		if more, err := cons.FetchNoWait(n - 1); err == nil {
			evs = w.collectReplays(more, evs)
		}
		w.replayBatch(ctx, stream, evs, limiters)
	}
}

func (w *worker) collectReplays(b jetstream.MessageBatch, evs []event) []event {
	for msg := range b.Messages() {
		if e, ok := w.parseReplay(msg); ok {
			evs = append(evs, e)
		}
	}
	return evs
}

func (w *worker) replayBatch(ctx context.Context, stream jetstream.Stream, evs []event, limiters map[string]*rate.Limiter) {
	var lanes [][]event
	byKey := map[string]int{}
	for _, e := range evs {
		if i, ok := byKey[e.lane]; ok && e.lane != "" {
			lanes[i] = append(lanes[i], e)
			continue
		}
		byKey[e.lane] = len(lanes)
		lanes = append(lanes, []event{e})
	}
	if len(limiters) > 100 {
		clear(limiters) // finished replays'; a running one gets a fresh bucket
	}
	// Each replay's limiter is looked up before the lanes run, so the map
	// is never touched concurrently.
	for _, e := range evs {
		replayLimiter(limiters, e.replay)
	}
	// Copies waiting in a lane behind the replay's rate are kept alive, so
	// their ack wait does not run out before their turn.
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(w.keepAliveEvery())
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, e := range evs {
					_ = e.msg.InProgress()
				}
			}
		}
	}()
	defer close(done)
	var wg sync.WaitGroup
	for _, lane := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, e := range lane {
				w.handleReplay(ctx, stream, e, limiters[e.replay.uid])
			}
		}()
	}
	wg.Wait()
}

// parseReplay reads a replayed copy. A copy without its replay's headers
// is not Herald's making and is dropped (Term): sending it could resend
// anything.
func (w *worker) parseReplay(msg jetstream.Msg) (event, bool) {
	md, err := msg.Metadata()
	if err != nil {
		w.log.Error(err, "replayed event without JetStream metadata")
		return event{}, false
	}
	h := msg.Headers()
	r := &replayed{name: h.Get(streams.HeaderReplay), uid: h.Get(streams.HeaderReplayUID), subject: h.Get(streams.HeaderOriginalSubject)}
	r.seq, _ = strconv.ParseUint(h.Get(streams.HeaderOriginalSeq), 10, 64)
	r.rate, _ = strconv.ParseFloat(h.Get(streams.HeaderReplayRate), 64)
	if r.name == "" || r.uid == "" || r.subject == "" || r.seq == 0 {
		w.log.Error(nil, "dropping a replayed copy without its replay's headers", "subject", msg.Subject())
		_ = msg.Term()
		return event{}, false
	}
	r.headers = nats.Header{}
	for k, v := range h {
		if !strings.HasPrefix(k, "Nats-") && !strings.HasPrefix(k, "Herald-Replay") && !strings.HasPrefix(k, "Herald-Original") {
			r.headers[k] = v
		}
	}
	if id := h.Get(streams.HeaderOriginalMsgID); id != "" {
		r.headers.Set(events.HeaderID, id)
	}
	e := event{msg: msg, md: md, replay: r}
	e.meta, e.bad = events.ParseMeta(r.subject, r.headers, msg.Data())
	if e.bad == nil && e.meta.Key != "" && (w.fixed.PerKey || e.meta.Version > 0) {
		e.lane = e.meta.Key
	}
	return e, true
}

// replayLimiter makes the replay's own rate limiter once; a replay
// without a rate gets none beyond the endpoint's.
func replayLimiter(limiters map[string]*rate.Limiter, r *replayed) {
	if _, ok := limiters[r.uid]; !ok && r.rate > 0 {
		limiters[r.uid] = rate.NewLimiter(rate.Limit(r.rate), 1)
	}
}

// handleReplay runs one replayed copy to its outcome for this attempt.
func (w *worker) handleReplay(ctx context.Context, stream jetstream.Stream, e event, lim *rate.Limiter) {
	ep := w.ep.Load()
	msg, ev, r := e.msg, e.meta, e.replay
	a := w.newAttempt(e)
	a.Replay, a.ReplayUID = r.name, r.uid
	if o, err := replayOutcome(ctx, stream, ep.Namespace, r); err != nil {
		w.replayLater(e, "replayOutcome", err)
		return
	} else if o != nil && o.Final() {
		_ = msg.Ack() // decided and recorded before a restart
		return
	}
	if e.bad != nil {
		w.finishReplay(e, a, true)
		return
	}
	// The retry window opens at the copy's first attempt: copies wait
	// their turn behind the replay's rate, which must not use it up.
	start := time.Now()
	if e.md.NumDelivered > 1 {
		sent, first, decided := w.replayPrior(ctx, e)
		if decided != nil {
			w.finishReplay(e, decided, false)
			return
		}
		a.Attempt = sent
		if sent > 0 {
			start = first
		}
	}
	now := time.Now()
	if a.Attempt > 0 && now.After(start.Add(ep.Policy.Window+streams.AckWait(w.fixed.Timeout))) {
		a.Time, a.Outcome, a.DeadReason, a.Why = now, OutcomeDead, DeadWindow, "replay "+r.name+": retry window exhausted"
		w.finishReplay(e, a, true)
		return
	}
	keyed := ev.Key != ""
	m := mark{version: ev.Version, seq: r.seq}
	superseded := func() bool {
		if !keyed {
			return false
		}
		last, err := w.vers.delivered(ctx, ev.Key)
		if err != nil {
			w.replayLater(e, "versionRead", err)
			return true
		}
		if last.newer(m) {
			a.Time, a.Outcome, a.Why = time.Now(), OutcomeSuperseded, "a newer version of the key was delivered"
			w.finishReplay(e, a, true)
			return true
		}
		return false
	}
	if superseded() {
		return
	}
	// The replay's own rate comes before the request slot: a slow replay
	// must not hold slots that live events need while it waits.
	if lim != nil && !w.waitLimiter(ctx, msg, lim) {
		_ = msg.Nak()
		return
	}
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
	if !w.waitRate(ctx, msg) || ctx.Err() != nil {
		w.adapt.release()
		_ = msg.Nak()
		return
	}
	if e.lane != "" {
		// One request of a key at a time across live and replayed
		// events, and the last look at the delivered version under it.
		if !w.lockKey(ctx, msg, e.lane) {
			w.adapt.release()
			_ = msg.Nak()
			return
		}
		defer w.unlockKey(e.lane)
	}
	if superseded() {
		w.adapt.release()
		return
	}
	status, respBody, hdr, latency, herr := w.send(ep, ev.ID, msg.Data())
	if w.reqCtx.Err() != nil && herr != nil {
		w.adapt.release()
		_ = msg.Nak()
		return
	}
	w.observeLatency(latency)
	w.observeLimits(status, herr, latency)
	now = time.Now()
	a.Attempt++
	a.Time, a.StatusCode, a.LatencyMS, a.Response = now, status, float64(latency.Microseconds())/1000, respBody
	w.metrics.attempted(status, latency)
	v := classify(&ep.Policy, status, herr)
	if herr != nil {
		a.Error = errorMessage(herr)
	}
	a.Reason = v.reason
	if v.delivered {
		a.Outcome = OutcomeDelivered
		w.health.success(now)
		w.adapt.release()
		w.finishReplay(e, a, true)
		return
	}
	fail := Failure{Time: now, StatusCode: status, Reason: v.reason, Message: failureMessage(status, a.Error), EventID: ev.ID}
	plan := retryPlan{dead: true, reason: DeadTerminal, why: "terminal response"}
	if v.why != "" {
		plan.why = v.why
	}
	if v.retryable {
		ra, hasRA := retryAfter(hdr, now)
		plan = planRetry(&ep.Policy, a.Attempt, now, start, ra, hasRA, jitterRand)
	}
	if plan.dead {
		a.Outcome, a.DeadReason, a.Why = OutcomeDead, plan.reason, "replay "+r.name+": "+plan.why
		w.health.failure(fail, nil, v.retryable)
		w.adapt.release()
		w.finishReplay(e, a, true)
		return
	}
	next := now.Add(plan.delay)
	a.Outcome, a.NextAttempt = OutcomeRetrying, &next
	w.health.failure(fail, &next, true)
	w.adapt.release()
	w.d.logAttempt(a)
	// The outcome says it was sent; losing this one only delays that.
	if err := w.publishReplayOutcome(w.reqCtx, e, a); err != nil {
		w.log.V(1).Info("recording a replayed event's retry", "eventID", a.EventID, "error", err.Error())
	}
	_ = msg.NakWithDelay(plan.delay)
	w.metrics.outcome(OutcomeRetrying)
}

// replayPrior reads this replay's earlier attempts at e from the delivery
// log: how many requests were made, when the first was, and, if one was
// decided, the decision.
func (w *worker) replayPrior(ctx context.Context, e event) (int, time.Time, *Attempt) {
	ep := w.ep.Load()
	hist, err := w.d.readLog(ctx, ep.Namespace, streams.AttemptSubject(ep.Namespace, ep.Name, e.meta.ID))
	if err != nil {
		w.log.Error(err, "reading a replayed event's history; counting its deliveries as attempts", "eventID", e.meta.ID)
		return int(e.md.NumDelivered) - 1, e.md.Timestamp, nil
	}
	sent, first := 0, time.Time{}
	var decided *Attempt
	for i := range hist {
		h := &hist[i]
		// The copy's own entries: this replay's (by UID: a name may be
		// used again), of this event.
		if h.ReplayUID != e.replay.uid || h.Sequence != e.replay.seq {
			continue
		}
		sent = max(sent, h.Attempt)
		if first.IsZero() && h.Attempt > 0 {
			// An attempt's entry is written when it ends: it began a
			// latency earlier, which the window can spare.
			first = h.Time
		}
		if h.Outcome != OutcomeRetrying && decided == nil {
			decided = h
		}
	}
	if first.IsZero() {
		first = e.md.Timestamp
	}
	return sent, first, decided
}

// finishReplay makes a's decision durable and acks the copy: the log
// entry (when fresh: a decision read back from the log is there), the
// version or the dead letter, then the outcome. Whatever fails is retried
// by a redelivery, which finds the decision and does not send again.
func (w *worker) finishReplay(e event, a *Attempt, fresh bool) {
	ctx := w.reqCtx
	if fresh {
		if err := w.d.logAttemptSync(ctx, a); err != nil {
			w.replayLater(e, "log", err)
			return
		}
	}
	switch a.Outcome {
	case OutcomeDelivered:
		if e.meta.Key != "" && !w.d.opts.noVersionRecords {
			if err := w.vers.record(ctx, e.meta.Key, mark{version: e.meta.Version, seq: e.replay.seq}); err != nil {
				w.replayLater(e, "version", err)
				return
			}
		}
		if err := w.markDeadLetterDelivered(ctx, e, a); err != nil {
			// The delivery stands; only the dead letter does not say so.
			w.metrics.bookkeepingFailed("deadLetter")
			w.log.Error(err, "marking a dead letter delivered by a replay", "eventID", a.EventID)
		}
	case OutcomeDead:
		if err := w.storeDeadLetter(ctx, e, a); err != nil {
			w.replayLater(e, "deadLetter", err)
			return
		}
	}
	if err := w.publishReplayOutcome(ctx, e, a); err != nil {
		w.replayLater(e, "replayOutcome", err)
		return
	}
	if fresh {
		w.metrics.outcome(a.Outcome)
		switch a.Outcome {
		case OutcomeSuperseded:
			w.health.superseded()
		case OutcomeDead:
			w.health.deadLettered()
		}
	}
	_ = e.msg.Ack()
}

// replayLater sends a copy whose bookkeeping failed back, to come again
// after a backoff that grows with its deliveries.
func (w *worker) replayLater(e event, what string, err error) {
	if w.ctx.Err() != nil {
		_ = e.msg.Nak() // stopping: not the bookkeeping's fault
		return
	}
	w.metrics.bookkeepingFailed(what)
	w.log.Error(err, "replayed event's bookkeeping failed; it comes back and is not sent again if decided", "what", what, "eventID", e.meta.ID)
	d := min(time.Duration(e.md.NumDelivered)*500*time.Millisecond, 30*time.Second)
	_ = e.msg.NakWithDelay(d)
}

func (w *worker) publishReplayOutcome(ctx context.Context, e event, a *Attempt) error {
	o := ReplayOutcome{EventID: a.EventID, Sequence: e.replay.seq, Outcome: a.Outcome, StatusCode: a.StatusCode,
		Attempts: a.Attempt, Reason: a.Reason, Time: a.Time}
	if a.Outcome == OutcomeDead {
		o.Reason = a.DeadReason
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encoding replay outcome: %w", err)
	}
	if _, err := w.d.js.Publish(ctx, streams.ReplayOutcomeSubject(w.fixed.Namespace, e.replay.uid, e.replay.seq), b); err != nil {
		return fmt.Errorf("recording replay outcome: %w", err)
	}
	return nil
}

// replayOutcome reads the last outcome recorded for a copy, if any.
func replayOutcome(ctx context.Context, stream jetstream.Stream, namespace string, r *replayed) (*ReplayOutcome, error) {
	m, err := stream.GetLastMsgForSubject(ctx, streams.ReplayOutcomeSubject(namespace, r.uid, r.seq))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading replay outcome: %w", err)
	}
	var o ReplayOutcome
	if err := json.Unmarshal(m.Data, &o); err != nil {
		return nil, fmt.Errorf("decoding replay outcome: %w", err)
	}
	return &o, nil
}

// markDeadLetterDelivered rewrites the endpoint's dead letter of the
// replayed event, if it has one, to say which replay delivered it.
func (w *worker) markDeadLetterDelivered(ctx context.Context, e event, a *Attempt) error {
	ep := w.ep.Load()
	dlq, err := w.d.deadLetterStream(ctx, ep.Namespace)
	if err != nil {
		return err
	}
	subject := streams.DeadLetterSubject(ep.Namespace, ep.Name, a.EventID)
	m, err := dlq.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading dead letter: %w", err)
	}
	var dl DeadLetter
	if err := json.Unmarshal(m.Data, &dl); err != nil {
		return fmt.Errorf("decoding dead letter: %w", err)
	}
	if dl.Sequence != e.replay.seq || dl.DeliveredByReplay != "" {
		return nil // another event's (a reused id), or marked already
	}
	t := a.Time
	dl.DeliveredByReplay, dl.DeliveredTime = e.replay.name, &t
	b, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encoding dead letter: %w", err)
	}
	out := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: b}
	for k, v := range m.Header {
		out.Header[k] = v
	}
	out.Header.Set(nats.MsgIdHdr, ep.ID()+"/"+itoa(e.replay.seq)+"/delivered/"+e.replay.uid)
	if _, err := w.d.js.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("marking dead letter delivered: %w", err)
	}
	return nil
}

// lockKey waits until no other request of key is in flight at this
// endpoint and takes its turn, keeping msg alive; false when ctx ends.
func (w *worker) lockKey(ctx context.Context, msg jetstream.Msg, key string) bool {
	for {
		w.mu.Lock()
		busy, ok := w.sending[key]
		if !ok {
			w.sending[key] = make(chan struct{})
			w.mu.Unlock()
			return true
		}
		w.mu.Unlock()
		t := time.NewTimer(w.keepAliveEvery())
		select {
		case <-busy:
		case <-t.C:
			_ = msg.InProgress()
		case <-ctx.Done():
			t.Stop()
			return false
		}
		t.Stop()
	}
}

func (w *worker) unlockKey(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c, ok := w.sending[key]; ok {
		close(c)
		delete(w.sending, key)
	}
}
