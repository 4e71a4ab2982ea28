package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
)

// Attempt is one entry of the delivery log, on subject
// herald.attempts.<namespace>.<endpoint>.<event id>.
type Attempt struct {
	EventID   string    `json:"eventID"`
	Namespace string    `json:"namespace"`
	Endpoint  string    `json:"endpoint"`
	Type      string    `json:"type"`
	Key       string    `json:"key,omitempty"`
	Version   int64     `json:"version,omitempty"`
	Sequence  uint64    `json:"streamSequence"`
	Attempt   int       `json:"attempt"`
	Time      time.Time `json:"time"`
	// Outcome is delivered, retrying, dead or superseded.
	Outcome     string     `json:"outcome"`
	StatusCode  int        `json:"statusCode,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	Error       string     `json:"error,omitempty"`
	LatencyMS   float64    `json:"latencyMs"`
	Response    string     `json:"response,omitempty"`
	NextAttempt *time.Time `json:"nextAttempt,omitempty"`
	// DeadReason is set on a dead outcome: one of the Dead... reasons.
	DeadReason string `json:"deadReason,omitempty"`
	// Why says why an event went dead, or what else happened, in words.
	Why string `json:"why,omitempty"`
	// Replay names the WebhookReplay the attempt was made for, and
	// ReplayUID is its UID.
	Replay    string `json:"replay,omitempty"`
	ReplayUID string `json:"replayUID,omitempty"`
}

// logAttempt appends a to the delivery log without waiting for the ack;
// the log is an audit trail, and waiting would put a round trip on every
// delivery. When NATS falls behind confirming entries, logAttempt waits
// for room: the dispatcher slows to the pace of its log instead of
// dropping entries. A publish that fails is retried (see logFailed), so no
// entry is lost without a metric and a log line saying so.
func (d *Dispatcher) logAttempt(a *Attempt) {
	if d.opts.noDeliveryLog {
		return
	}
	b, err := json.Marshal(a)
	if err != nil {
		d.opts.log.Error(err, "encoding attempt", "eventID", a.EventID)
		return
	}
	subject := streams.AttemptSubject(a.Namespace, a.Endpoint, a.EventID)
	_, err = d.logJS.PublishAsync(subject, b)
	if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
		logPublishWaits.Inc()
		// Each try waits a while for a confirmation to free a place; the
		// confirmations come, or time out (logAckTimeout) into the retry.
		for errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			_, err = d.logJS.PublishAsync(subject, b)
		}
	}
	if err != nil {
		d.logFailed(nil, &nats.Msg{Subject: subject, Data: b}, err)
	}
}

// logAttemptSync appends a and waits for the stream to store it: for the
// entries that record a decision a redelivery must find (dead).
func (d *Dispatcher) logAttemptSync(ctx context.Context, a *Attempt) error {
	if d.opts.noDeliveryLog {
		return nil
	}
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encoding attempt: %w", err)
	}
	if _, err := d.js.Publish(ctx, streams.AttemptSubject(a.Namespace, a.Endpoint, a.EventID), b); err != nil {
		return fmt.Errorf("logging attempt: %w", err)
	}
	return nil
}

const (
	// logRetries is how many failed log entries may wait for their retry;
	// past it an entry is counted lost.
	logRetries = 10_000
	// logMaxPending is nats.go's default: entries published and not yet
	// confirmed, past which a publish waits.
	logMaxPending = 4000
	// logAckTimeout ends the wait for a confirmation that never comes, so
	// an unanswered entry is retried rather than held forever.
	logAckTimeout = 30 * time.Second
)

// logFailed is the delivery log's asynchronous publish error handler: the
// entry is queued for retryLog. It must not block: nats.go calls it with
// its publisher's lock held when a confirmation times out. Past the queue,
// an entry is lost rather than delivery stopped: one namespace's log that
// refuses its entries must not hold up the others' deliveries.
func (d *Dispatcher) logFailed(_ jetstream.JetStream, msg *nats.Msg, err error) {
	logPublishFailures.Inc()
	if d.logStopped.Load() {
		logEntriesLost.Inc()
		d.opts.log.Error(err, "delivery log entry lost: it failed after the dispatcher stopped", "subject", msg.Subject)
		return
	}
	select {
	case d.logRetry <- msg:
	default:
		logEntriesLost.Inc()
		d.opts.log.Error(err, "delivery log entry lost: its retry queue is full", "subject", msg.Subject)
	}
}

// logFlushTimeout bounds what a stop spends writing the log entries still
// unconfirmed or queued once every worker has stopped. With the default
// drain timeout (30 s) it fits a pod's termination grace period (45 s).
const logFlushTimeout = 10 * time.Second

// retryLog re-publishes failed log entries synchronously, a few times
// with backoff, until ctx ends. When flush closes (every worker has
// stopped, so nothing new is logged) it waits for the entries still
// unconfirmed, retries the queue until it is empty and returns; entries
// left when ctx ends are counted lost.
func (d *Dispatcher) retryLog(ctx context.Context, flush <-chan struct{}) {
	defer d.logStopped.Store(true)
	for {
		select {
		case <-ctx.Done():
			d.countUnwritten(ctx.Err())
			return
		case msg := <-d.logRetry:
			d.republish(ctx, msg)
		case <-flush:
			select {
			case <-d.logJS.PublishAsyncComplete():
			case <-ctx.Done():
			}
			for {
				select {
				case msg := <-d.logRetry:
					d.republish(ctx, msg)
					continue
				default:
				}
				d.countUnwritten(ctx.Err())
				return
			}
		}
	}
}

// republish writes one failed entry, trying a few times with backoff.
func (d *Dispatcher) republish(ctx context.Context, msg *nats.Msg) {
	var err error
	for i, backoff := 0, 100*time.Millisecond; i < 5; i, backoff = i+1, backoff*2 {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = d.js.Publish(pctx, msg.Subject, msg.Data)
		cancel()
		if err == nil {
			return
		}
		logPublishFailures.Inc()
		if !sleep(ctx, backoff) {
			break
		}
	}
	logEntriesLost.Inc()
	d.opts.log.Error(err, "delivery log entry lost after retries", "subject", msg.Subject)
}

// countUnwritten says what a stop leaves unwritten.
func (d *Dispatcher) countUnwritten(err error) {
	for n := len(d.logRetry); n > 0; n-- {
		m := <-d.logRetry
		logEntriesLost.Inc()
		d.opts.log.Error(err, "delivery log entry lost: the dispatcher stopped before its retry", "subject", m.Subject)
	}
}

// History reads every logged attempt to deliver one event to one endpoint,
// oldest first.
func History(ctx context.Context, js jetstream.JetStream, namespace, endpoint, eventID string) ([]Attempt, error) {
	stream, err := js.Stream(ctx, streams.AttemptsStream(namespace))
	if err != nil {
		return nil, fmt.Errorf("opening delivery log %s: %w", streams.AttemptsStream(namespace), err)
	}
	return readAttempts(ctx, stream, streams.AttemptSubject(namespace, endpoint, eventID))
}

// readLog reads a namespace's delivery-log entries on subject.
func (d *Dispatcher) readLog(ctx context.Context, namespace, subject string) ([]Attempt, error) {
	stream, err := d.logStream(ctx, namespace)
	if err != nil {
		return nil, err
	}
	return readAttempts(ctx, stream, subject)
}

// readAttempts reads the delivery-log entries on subject (which may hold
// wildcards) with direct gets, oldest first. It creates no consumer, so a
// burst of dead letters or status lookups leaves nothing behind in NATS.
// One event has few attempts, so the walk is short.
func readAttempts(ctx context.Context, stream jetstream.Stream, subject string) ([]Attempt, error) {
	var out []Attempt
	for seq := uint64(1); ; {
		m, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading delivery log %s: %w", subject, err)
		}
		var a Attempt
		if err := json.Unmarshal(m.Data, &a); err != nil {
			return nil, fmt.Errorf("decoding delivery log entry %d on %s: %w", m.Sequence, m.Subject, err)
		}
		out = append(out, a)
		seq = m.Sequence + 1
	}
}
