package dispatcher

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
)

// DeadLetter is what the dead-letter stream keeps of an event that will
// not be retried: the event as published and every attempt. It is the
// unit a replay starts from.
type DeadLetter struct {
	Namespace string `json:"namespace"`
	Endpoint  string `json:"endpoint"`
	EventID   string `json:"eventID"`
	// Subject and Sequence locate the original in the event stream.
	Subject  string              `json:"subject"`
	Sequence uint64              `json:"streamSequence"`
	Headers  map[string][]string `json:"headers"`
	// Body is the original envelope, byte for byte.
	Body     []byte    `json:"body"`
	Why      string    `json:"why"`
	DeadAt   time.Time `json:"deadAt"`
	Attempts []Attempt `json:"attempts"`
}

// HeaderDeadReason names why an event was dead-lettered, on the dead
// letter's message, next to the original headers.
const HeaderDeadReason = "Herald-Dead-Reason"

// deadLetter moves msg to the endpoint's dead-letter subject with its
// whole history, then acks it. If the dead letter cannot be stored, the
// event is left to redeliver: nothing is dropped.
func (w *worker) deadLetter(ctx context.Context, msg jetstream.Msg, a *Attempt) {
	ep := w.ep.Load()
	hist, err := readAttempts(ctx, w.d.attempts, streams.AttemptSubject(ep.Namespace, ep.Name, a.EventID))
	if err != nil {
		w.log.Error(err, "reading attempt history for a dead letter; keeping what this attempt knows", "eventID", a.EventID)
	}
	hist = append(hist, *a)
	dl := DeadLetter{
		Namespace: ep.Namespace, Endpoint: ep.Name, EventID: a.EventID,
		Subject: msg.Subject(), Sequence: a.Sequence, Headers: msg.Headers(),
		Body: msg.Data(), Why: a.Why, DeadAt: a.Time, Attempts: hist,
	}
	b, err := json.Marshal(dl)
	if err != nil {
		w.log.Error(err, "encoding dead letter", "eventID", a.EventID)
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	out := &nats.Msg{Subject: streams.DeadLetterSubject(ep.Namespace, ep.Name), Data: b, Header: nats.Header{}}
	for k, v := range msg.Headers() {
		// Nats-* headers are publish instructions (expected stream, msg id)
		// meant for the event stream; the body keeps them all.
		if !strings.HasPrefix(k, "Nats-") {
			out.Header[k] = v
		}
	}
	// Deduplicates a dead letter written twice around a crash.
	out.Header.Set(nats.MsgIdHdr, ep.ID()+"/"+a.EventID+"/"+itoa(a.Sequence))
	out.Header.Set(HeaderDeadReason, a.Why)
	if _, err := w.d.js.PublishMsg(ctx, out); err != nil {
		w.log.Error(err, "storing dead letter; the event stays queued", "eventID", a.EventID)
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	w.d.logAttempt(a)
	_ = msg.Ack()
	w.health.deadLettered()
	w.metrics.outcome(OutcomeDead)
}
