package dispatcher

import (
	"context"
	"encoding/json"
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
	return readAttempts(ctx, js, streams.AttemptSubject(namespace, endpoint, eventID), jetstream.DeliverAllPolicy)
}

func readAttempts(ctx context.Context, js jetstream.JetStream, subject string, policy jetstream.DeliverPolicy) ([]Attempt, error) {
	c, err := js.OrderedConsumer(ctx, streams.AttemptsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  policy,
	})
	if err != nil {
		return nil, fmt.Errorf("reading delivery log %s: %w", subject, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading delivery log %s: %w", subject, err)
	}
	var out []Attempt
	remaining := info.NumPending
	for remaining > 0 {
		batch, err := c.FetchNoWait(int(min(remaining, 256)))
		if err != nil {
			return nil, fmt.Errorf("reading delivery log %s: %w", subject, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var a Attempt
			if err := json.Unmarshal(m.Data(), &a); err != nil {
				return nil, fmt.Errorf("decoding delivery log entry on %s: %w", m.Subject(), err)
			}
			out = append(out, a)
			if md, err := m.Metadata(); err == nil {
				remaining = md.NumPending
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("reading delivery log %s: %w", subject, err)
		}
		if n == 0 {
			break
		}
	}
	return out, nil
}
