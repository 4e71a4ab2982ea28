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
	ep := w.ep.Load()
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
			now := time.Now()
			if e.bad == nil && !now.After(windowStart(e.meta.Time, e.md.Timestamp).Add(ep.Policy.Window)) {
				if e.md.NumDelivered == 1 {
					w.noteNew(seq)
				}
				_ = msg.NakWithDelay(w.d.opts.sweepInterval)
				continue
			}
			expired++
			w.inUseSet(seq, true)
			w.handle(ctx, e) // dead-letters it: malformed, or past its window
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

// noteNew records that an event going back to the stream was never
// attempted, so its return needs no look at the delivery log.
func (w *worker) noteNew(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, known := w.progress[seq]; !known && len(w.progress) < maxProgress {
		w.progress[seq] = progress{}
	}
}
