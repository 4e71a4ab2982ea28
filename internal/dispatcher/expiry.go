package dispatcher

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// sweepRounds bounds one sweep: at most this many batches of sweepBatch.
const sweepRounds = 10

// sweep dead-letters, as Expired, the events waiting at the head of the
// endpoint's consumer whose retry window has ended. A suspended endpoint
// takes no events and a probing one takes one at a time, so without it
// their backlog would wait until the stream's retention removed it, with
// no dead letter and no log entry. Events still inside their window go
// back untouched (not an attempt) until the next sweep.
func (w *worker) sweep(ctx context.Context, cons jetstream.Consumer) {
	for range sweepRounds {
		batch, err := cons.FetchNoWait(sweepBatch)
		if err != nil {
			if ctx.Err() == nil {
				w.log.V(1).Info("sweeping for expired events", "error", err.Error())
			}
			return
		}
		got, expired := 0, 0
		for msg := range batch.Messages() {
			got++
			e, ok := w.parse(msg)
			if !ok {
				continue
			}
			seq := e.md.Sequence.Stream
			w.mu.Lock()
			held := w.inUse[seq]
			w.mu.Unlock()
			if held {
				continue // the copy in a lane answers for it
			}
			// The same rule as a delivery's, with the event's own progress
			// (remembered, so the next sweep reads no log for it).
			if p, _ := w.prior(ctx, e); e.bad == nil && !w.pastWindow(e, p, time.Now()) {
				// Back as it was, in its place: a suspended endpoint fetches
				// nothing until the next sweep, a probing one takes it in
				// turn.
				w.setProgress(seq, p)
				_ = msg.Nak()
				continue
			}
			expired++
			w.inUseSet(seq, true)
			w.expire(ctx, e)
			w.inUseSet(seq, false)
		}
		if got < sweepBatch || expired == 0 || ctx.Err() != nil {
			return
		}
	}
}

func (w *worker) inUseSet(seq uint64, held bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if held {
		w.inUse[seq] = true
	} else {
		delete(w.inUse, seq)
	}
}

// expire dead-letters e, found by a sweep past its window (or malformed),
// without sending it: Expired when it was never attempted.
func (w *worker) expire(ctx context.Context, e event) {
	a := w.newAttempt(e)
	if e.bad == nil {
		p, last := w.prior(ctx, e)
		if last != nil && last.Outcome != OutcomeDead {
			// Finished before a restart: delivered or superseded.
			a.Time, a.Outcome, a.Why = time.Now(), last.Outcome, "finished before a restart"
			w.finishDelivered(e, a, a.Key != "" && last.Outcome == OutcomeDelivered, mark{version: a.Version, seq: a.Sequence})
			return
		}
		a.Attempt, a.Time, a.Outcome = p.sent, time.Now(), OutcomeDead
		a.DeadReason, a.Why = DeadWindow, "retry window exhausted"
		if p.sent == 0 {
			a.DeadReason, a.Why = DeadExpired, "its retry window ended before it could be attempted"
		}
	}
	w.deadLetter(e, a)
}
