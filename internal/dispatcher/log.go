package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

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
	// Why says why an event went dead (terminal response, window, attempts).
	Why string `json:"why,omitempty"`
}

// logAttempt appends a to the delivery log without waiting for the ack;
// the log is an audit trail, and waiting would put a round trip on every
// delivery. Failures show in the publish-error callback's log.
func (d *Dispatcher) logAttempt(a *Attempt) {
	if d.opts.noDeliveryLog {
		return
	}
	b, err := json.Marshal(a)
	if err != nil {
		d.opts.log.Error(err, "encoding attempt", "eventID", a.EventID)
		return
	}
	if _, err := d.js.PublishAsync(streams.AttemptSubject(a.Namespace, a.Endpoint, a.EventID), b); err != nil {
		d.opts.log.Error(err, "logging attempt", "eventID", a.EventID, "endpoint", a.Namespace+"/"+a.Endpoint)
	}
}

// History reads every logged attempt to deliver one event to one endpoint,
// oldest first.
func History(ctx context.Context, js jetstream.JetStream, namespace, endpoint, eventID string) ([]Attempt, error) {
	stream, err := js.Stream(ctx, streams.AttemptsStream)
	if err != nil {
		return nil, fmt.Errorf("opening delivery log: %w", err)
	}
	return readAttempts(ctx, stream, streams.AttemptSubject(namespace, endpoint, eventID))
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
