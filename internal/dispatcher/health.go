package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
)

// Failure is one failed attempt as the health record keeps it.
type Failure struct {
	Time       time.Time `json:"time"`
	StatusCode int       `json:"statusCode,omitempty"`
	// Reason is Timeout, ConnectionError, HTTPError or Redirect.
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	EventID string `json:"eventID,omitempty"`
}

// Health is an endpoint's delivery health, written by its dispatcher to the
// health bucket (key <namespace>.<endpoint>) at most once a second and on
// every change of state, and read by the operator into status.
type Health struct {
	LastSuccess         *time.Time `json:"lastSuccess,omitempty"`
	LastFailure         *Failure   `json:"lastFailure,omitempty"`
	ConsecutiveFailures int64      `json:"consecutiveFailures"`
	// NextRetry is the earliest retry this dispatcher has scheduled.
	NextRetry *time.Time `json:"nextRetry,omitempty"`
	InFlight  int64      `json:"inFlight"`
	// Probing is true while the endpoint keeps failing and only scheduled
	// retries reach it; new events wait in the stream.
	Probing        bool  `json:"probing,omitempty"`
	Delivered      int64 `json:"delivered"`
	FailedAttempts int64 `json:"failedAttempts"`
	DeadLettered   int64 `json:"deadLettered"`
	Superseded     int64 `json:"superseded"`
	// PendingWrites counts events delivered or dead-lettered whose
	// bookkeeping (version record, dead letter) is being retried: they are
	// not sent again, and acked once it is written.
	PendingWrites int64 `json:"pendingWrites,omitempty"`
	// ConcurrencyLimit is the adaptive concurrency limit, at most
	// maxInFlight; AdaptiveRate is the requests/s limit set after the
	// endpoint answered 429 or 503, 0 while none is in force.
	ConcurrencyLimit int64     `json:"concurrencyLimit,omitempty"`
	AdaptiveRate     float64   `json:"adaptiveRate,omitempty"`
	UpdatedAt        time.Time `json:"updatedAt"`
}

// ReadHealth returns an endpoint's health record, or nil when its
// dispatcher has not written one yet.
func ReadHealth(ctx context.Context, kv jetstream.KeyValue, namespace, endpoint string) (*Health, error) {
	e, err := kv.Get(ctx, streams.EndpointKey(namespace, endpoint))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading health of %s/%s: %w", namespace, endpoint, err)
	}
	var h Health
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return nil, fmt.Errorf("decoding health of %s/%s: %w", namespace, endpoint, err)
	}
	return &h, nil
}

// tracker keeps one endpoint's Health and writes it to the health bucket:
// at once when the endpoint's state changes (it starts or stops failing,
// starts probing), otherwise at most once per health interval.
type tracker struct {
	d        *Dispatcher
	kv       jetstream.KeyValue // the namespace's health bucket, set before run
	key      string
	inFlight atomic.Int64
	limits   func() (window int, rps float64) // the worker's adaptive limits

	mu      sync.Mutex
	h       Health
	retries []time.Time // scheduled retries, sorted
	probe   bool        // a probe attempt is in flight
	// streak counts consecutive failures a later retry may fix; terminal
	// answers (a 404 for one bad event) do not make an endpoint probe.
	streak  int64
	pending int64 // PendingWrites
	dirty   bool
	kick    chan struct{}
	// dirtied wakes run when the record becomes dirty: an idle
	// endpoint's tracker sleeps instead of ticking.
	dirtied chan struct{}
	// changed is closed, and replaced, whenever who may take a turn
	// changes: a probe ends, the endpoint recovers, a retry is scheduled.
	changed chan struct{}
}

const maxTrackedRetries = 10_000

func newTracker(d *Dispatcher, namespace, name string) *tracker {
	return &tracker{d: d, key: streams.EndpointKey(namespace, name), kick: make(chan struct{}, 1), dirtied: make(chan struct{}, 1), changed: make(chan struct{})}
}

// load takes the totals over from the record a previous worker wrote; a
// lost read only resets counters. It runs in the worker's goroutine, so no
// configuration change waits for it.
func (t *tracker) load(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := t.kv.Get(ctx, t.key)
	if err != nil {
		return
	}
	var h Health
	if json.Unmarshal(e.Value(), &h) != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.h = h
	t.h.InFlight, t.h.Probing, t.h.NextRetry, t.h.PendingWrites = 0, false, nil, 0
}

// run writes the record: at once on a kick, otherwise one health interval
// after it became dirty, so a busy endpoint writes once per interval and an
// idle one never wakes.
func (t *tracker) run(ctx context.Context) {
	timer := time.NewTimer(t.d.opts.healthInterval)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
		case <-t.dirtied:
			timer.Reset(t.d.opts.healthInterval)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			case <-t.kick:
				timer.Stop()
			}
		}
		t.write(ctx)
	}
}

// flush writes what is left when the worker stops.
func (t *tracker) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t.write(ctx)
}

func (t *tracker) write(ctx context.Context) {
	t.mu.Lock()
	if !t.dirty {
		t.mu.Unlock()
		return
	}
	now := time.Now()
	h := t.h
	h.InFlight = t.inFlight.Load()
	h.PendingWrites = t.pending
	if t.limits != nil {
		window, rps := t.limits()
		h.ConcurrencyLimit, h.AdaptiveRate = int64(window), rps
	}
	h.UpdatedAt = now
	h.NextRetry = nil
	if i, _ := slices.BinarySearchFunc(t.retries, now, time.Time.Compare); i < len(t.retries) {
		next := t.retries[i]
		h.NextRetry = &next
	}
	t.dirty = false
	t.mu.Unlock()
	b, err := json.Marshal(h)
	if err == nil {
		_, err = t.kv.Put(ctx, t.key, b)
	}
	if err != nil {
		// Still to write: the final flush after a stop takes it.
		if ctx.Err() == nil {
			t.d.opts.log.Error(err, "writing endpoint health", "endpoint", t.key)
		}
		t.mu.Lock()
		t.markDirtyLocked()
		t.mu.Unlock()
	}
}

func (t *tracker) markDirtyLocked() {
	if !t.dirty {
		t.dirty = true
		select {
		case t.dirtied <- struct{}{}:
		default:
		}
	}
}

// turnsChangedLocked wakes the events waiting for a turn.
func (t *tracker) turnsChangedLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tracker) stateChanged(kick bool) {
	t.markDirtyLocked()
	if kick {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}

func (t *tracker) success(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	recovered := t.h.ConsecutiveFailures > 0
	wasProbing := t.h.Probing
	t.h.LastSuccess = &now
	t.h.Delivered++
	t.h.ConsecutiveFailures = 0
	t.streak = 0
	t.h.Probing = false
	if wasProbing {
		t.turnsChangedLocked()
	}
	t.stateChanged(recovered || t.h.Delivered == 1)
}

// failure records a failed attempt and, when it will be retried, when.
// Only retryable failures count toward probing.
func (t *tracker) failure(f Failure, next *time.Time, retryable bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.h.LastFailure = &f
	t.h.ConsecutiveFailures++
	t.h.FailedAttempts++
	if retryable {
		t.streak++
	}
	if next != nil {
		i, _ := slices.BinarySearchFunc(t.retries, *next, time.Time.Compare)
		t.retries = slices.Insert(t.retries, i, *next)
		if len(t.retries) > maxTrackedRetries {
			t.retries = t.retries[:maxTrackedRetries]
		}
		if i == 0 && t.h.Probing {
			t.turnsChangedLocked() // the next probe comes sooner
		}
	}
	startedProbing := !t.h.Probing && t.streak >= int64(t.d.opts.probeAfter)
	if startedProbing {
		t.h.Probing = true
	}
	t.stateChanged(t.h.ConsecutiveFailures == 1 || startedProbing)
}

// pendingWrites adds n to the events whose bookkeeping is being retried.
func (t *tracker) pendingWrites(n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending += n
	t.stateChanged(t.pending == n || t.pending == 0) // started or ended
}

func (t *tracker) superseded() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.h.Superseded++
	t.stateChanged(false)
}

func (t *tracker) deadLettered() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.h.DeadLettered++
	t.stateChanged(false)
}

// failing reports whether the endpoint's last attempt failed.
func (t *tracker) failing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.h.ConsecutiveFailures > 0
}

func (t *tracker) probing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.h.Probing
}

// nextProbe is when a probing endpoint should be tried next.
func (t *tracker) nextProbe(floor time.Duration) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.probeAtLocked(time.Now(), floor)
}

// probeAtLocked is the earliest scheduled retry, or floor after the last
// failure when none is known (after a restart, say).
func (t *tracker) probeAtLocked(now time.Time, floor time.Duration) time.Time {
	switch {
	case len(t.retries) > 0:
		return t.retries[0]
	case t.h.LastFailure != nil:
		return t.h.LastFailure.Time.Add(floor)
	}
	return now
}

// pruneLocked forgets the retries that were due by now: a probe took them.
func (t *tracker) pruneLocked(now time.Time) {
	i, _ := slices.BinarySearchFunc(t.retries, now, time.Time.Compare)
	t.retries = t.retries[i:]
}

// takeTurn says whether an attempt may start now, and whether it is the
// probe (only the probe's end is reported to endTurn): always while the
// endpoint is healthy; while it is probing, only one attempt at a time and
// not before nextProbe. When it says no, it says when to ask again at the
// latest, and gives a channel that is closed if that changes sooner.
func (t *tracker) takeTurn(now time.Time, floor time.Duration) (ok, probe bool, next time.Time, changed <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.h.Probing {
		return true, false, now, nil
	}
	at := t.probeAtLocked(now, floor)
	if t.probe {
		// The probe's end wakes the waiters; the floor bounds a lost wake.
		return false, false, now.Add(floor), t.changed
	}
	if now.Before(at) {
		return false, false, at, t.changed
	}
	t.probe = true
	return true, true, now, nil
}

// endTurn ends an attempt; a probe's end forgets the retries that were due
// by now, so the next probe waits for the next scheduled one.
func (t *tracker) endTurn(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.probe {
		t.probe = false
		t.pruneLocked(now)
		t.turnsChangedLocked()
	}
}

// probed forgets the retries that were due by now, after a probe fetch.
func (t *tracker) probed(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(now)
}
