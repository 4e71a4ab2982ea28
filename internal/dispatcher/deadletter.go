package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herald-dev/herald/internal/streams"
)

// DeadLetter is what the dead-letter stream keeps of an event that will
// not be retried: the event as published and its attempts. It is the unit
// a replay starts from. An event retried for a day can have thousands of
// attempts, so a dead letter carries the first and the last ones and
// says how many it left out; the delivery log keeps them all.
type DeadLetter struct {
	Namespace string `json:"namespace"`
	Endpoint  string `json:"endpoint"`
	EventID   string `json:"eventID"`
	// Subject and Sequence locate the original in the event stream.
	Subject  string              `json:"subject"`
	Sequence uint64              `json:"streamSequence"`
	Headers  map[string][]string `json:"headers"`
	// Body is the original envelope, byte for byte.
	Body []byte `json:"body"`
	// Reason is one of the Dead... reasons; Why says it in words.
	Reason   string    `json:"reason"`
	Why      string    `json:"why"`
	DeadAt   time.Time `json:"deadAt"`
	Attempts []Attempt `json:"attempts"`
	// AttemptCount is how many HTTP attempts were made in all.
	AttemptCount int `json:"attemptCount"`
	// AttemptsOmitted is how many log entries Attempts leaves out.
	AttemptsOmitted int `json:"attemptsOmitted,omitempty"`
	// Replay names the replay whose attempts failed again, when it was one.
	Replay string `json:"replay,omitempty"`
	// DeliveredByReplay names the replay that later delivered the event,
	// and DeliveredTime says when.
	DeliveredByReplay string     `json:"deliveredByReplay,omitempty"`
	DeliveredTime     *time.Time `json:"deliveredTime,omitempty"`
}

// Why an event was dead-lettered, as DeadLetter.Reason and the
// Herald-Dead-Reason header name it.
const (
	DeadTerminal    = "TerminalResponse"
	DeadWindow      = "WindowExhausted"
	DeadMaxAttempts = "MaxAttempts"
	DeadExpired     = "Expired"
	DeadMalformed   = "Malformed"
)

// HeaderDeadReason names why an event was dead-lettered, on the dead
// letter's message, next to the original headers.
const HeaderDeadReason = "Herald-Dead-Reason"

// What of the history a dead letter carries.
const (
	deadLetterHead = 10
	deadLetterTail = 40
	// deadLetterResponse caps each kept attempt's response body, but the
	// last one's, which keeps what the delivery log kept.
	deadLetterResponse = 512
	// deadLetterHeader leaves over-long original headers off the dead
	// letter's own NATS headers (its body keeps them all).
	deadLetterHeader = 1 << 10
)

// deadLetter moves an event to the endpoint's dead-letter subject and acks
// it. The decision is logged first, synchronously, so that if storing the
// dead letter fails, or the process dies before it, the event is never
// sent again: settle retries the store, and a redelivery finds the dead
// outcome in the log and stores it then.
func (w *worker) deadLetter(e event, a *Attempt) {
	w.forget(a.Sequence)
	logged := false
	store := func(ctx context.Context) error {
		if !logged {
			if err := w.d.logAttemptSync(ctx, a); err != nil {
				return err
			}
			logged = true
		}
		return w.storeDeadLetter(ctx, e, a)
	}
	w.health.deadLettered()
	w.metrics.outcome(OutcomeDead)
	if err := store(w.reqCtx); err != nil {
		w.log.Error(err, "storing a dead letter; the event is kept, not sent again, and the store retried", "eventID", a.EventID)
		w.metrics.bookkeepingFailed("deadLetter")
		w.settle(e.msg, "deadLetter", store)
		return
	}
	_ = e.msg.Ack()
}

func (w *worker) storeDeadLetter(ctx context.Context, e event, a *Attempt) error {
	ep := w.ep.Load()
	msg := e.msg
	var hist []Attempt
	if e.bad == nil {
		var err error
		hist, err = w.d.readLog(ctx, ep.Namespace, streams.AttemptSubject(ep.Namespace, ep.Name, a.EventID))
		if err != nil {
			w.log.Error(err, "reading attempt history for a dead letter; keeping what this attempt knows", "eventID", a.EventID)
		}
	}
	own := hist[:0]
	for _, h := range hist {
		if h.Sequence == a.Sequence {
			own = append(own, h)
		}
	}
	if n := len(own); n == 0 || !own[n-1].Time.Equal(a.Time) || own[n-1].Outcome != a.Outcome {
		own = append(own, *a)
	}
	dl := DeadLetter{
		Namespace: ep.Namespace, Endpoint: ep.Name, EventID: a.EventID,
		Subject: e.subject(), Sequence: a.Sequence, Headers: e.headers(),
		Body: msg.Data(), Reason: a.DeadReason, Why: a.Why, DeadAt: a.Time, AttemptCount: a.Attempt,
		Replay: a.Replay,
	}
	dl.Attempts, dl.AttemptsOmitted = capHistory(own, deadLetterHead, deadLetterTail)
	b, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encoding dead letter: %w", err)
	}
	// Whatever the history, the dead letter must fit one message.
	out := &nats.Msg{Subject: streams.DeadLetterSubject(ep.Namespace, ep.Name, a.EventID), Header: nats.Header{}}
	hdrBytes := 0
	for k, v := range e.headers() {
		// Nats-* headers are publish instructions (expected stream, msg id)
		// meant for the event stream; the body keeps them all.
		if !strings.HasPrefix(k, "Nats-") && len(k) <= 64 && len(v) == 1 && len(v[0]) <= deadLetterHeader {
			out.Header[k] = v
			hdrBytes += len(k) + len(v[0]) + 4
		}
	}
	// Shrink the history, then, as a last resort, leave out the original
	// headers and body (the stream sequence still locates the event).
	limit := w.d.js.Conn().MaxPayload() - int64(hdrBytes) - 1<<10
	for head, tail := deadLetterHead, deadLetterTail; int64(len(b)) > limit; {
		switch {
		case head+tail > 1:
			head, tail = head/2, max(tail/2, 1)
			dl.Attempts, dl.AttemptsOmitted = capHistory(own, head, tail)
		case dl.Headers != nil:
			dl.Headers = nil
		case dl.Body != nil:
			dl.Body, dl.Why = nil, dl.Why+" (the event's body did not fit in the dead letter; it is in the event stream at its sequence)"
		default:
			return fmt.Errorf("dead letter of %d bytes does not fit NATS's max payload", len(b))
		}
		if b, err = json.Marshal(dl); err != nil {
			return fmt.Errorf("encoding dead letter: %w", err)
		}
	}
	out.Data = b
	// Deduplicates a dead letter written twice around a crash; a
	// replay's is another.
	id := ep.ID() + "/" + itoa(a.Sequence)
	if e.replay != nil {
		id += "/" + e.replay.uid
	}
	out.Header.Set(nats.MsgIdHdr, id)
	out.Header.Set(HeaderDeadReason, a.DeadReason)
	if _, err := w.d.js.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("storing dead letter: %w", err)
	}
	return nil
}

// capHistory keeps the first head and the last tail attempts, trimming the
// response bodies of all but the last, and says how many it left out.
func capHistory(hist []Attempt, head, tail int) ([]Attempt, int) {
	omitted := 0
	if len(hist) > head+tail {
		omitted = len(hist) - head - tail
		hist = append(append([]Attempt(nil), hist[:head]...), hist[len(hist)-tail:]...)
	} else {
		hist = append([]Attempt(nil), hist...)
	}
	for i := range len(hist) - 1 {
		if len(hist[i].Response) > deadLetterResponse {
			hist[i].Response = hist[i].Response[:deadLetterResponse]
		}
	}
	return hist, omitted
}
