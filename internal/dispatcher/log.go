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
// delivery. A publish that fails is retried (see logFailed), so no entry
// is lost without a metric and a log line saying so.
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
	if _, err := d.logJS.PublishAsync(subject, b); err != nil {
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

// logRetries is how many failed log entries may wait for their retry;
// past it an entry is counted lost.
const logRetries = 10_000

// logFailed is the delivery log's asynchronous publish error handler: the
// entry is queued for retryLog.
func (d *Dispatcher) logFailed(_ jetstream.JetStream, msg *nats.Msg, err error) {
	logPublishFailures.Inc()
	select {
	case d.logRetry <- msg:
	default:
		logEntriesLost.Inc()
		d.opts.log.Error(err, "delivery log entry lost: its retry queue is full", "subject", msg.Subject)
	}
}

// retryLog re-publishes failed log entries synchronously, a few times with
// backoff, until ctx ends; an entry that still fails is counted lost.
func (d *Dispatcher) retryLog(ctx context.Context) {
	for {
		var msg *nats.Msg
		select {
		case <-ctx.Done():
			// Say what a stop leaves unwritten.
			for n := len(d.logRetry); n > 0; n-- {
				m := <-d.logRetry
				logEntriesLost.Inc()
				d.opts.log.Error(ctx.Err(), "delivery log entry lost: the dispatcher stopped before its retry", "subject", m.Subject)
			}
			return
		case msg = <-d.logRetry:
		}
		var err error
		for i, backoff := 0, 100*time.Millisecond; i < 5; i, backoff = i+1, backoff*2 {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = d.js.Publish(pctx, msg.Subject, msg.Data)
			cancel()
			if err == nil || !sleep(ctx, backoff) {
				break
			}
		}
		if err != nil {
			logEntriesLost.Inc()
			d.opts.log.Error(err, "delivery log entry lost after retries", "subject", msg.Subject)
		}
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
