package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// selected is one event a replay's selection holds: its place in the
// events stream, its id, and why it is left out, if it is.
type selected struct {
	seq  uint64
	id   string
	skip string // ReasonLiveDeliveryPending, ReasonEventNotFound
}

// selection is what a replay's spec picks, in stream order: at most
// limit+1 events are kept, count says how many matched in all (up to
// countCap; more is "more than countCap").
type selection struct {
	events []selected
	count  int
}

// countCap bounds how far a refused selection is counted: far enough to
// tell the user how wrong the limit is, not so far that a year of events
// is read to say so.
const countCap = 10 * v1.MaxReplayLimit

var errScanDone = errors.New("scan done")

// selectEvents reads the replay's selection from NATS. Events whose live
// delivery at the endpoint is still queued, in flight or retrying are
// kept but marked skipped: the live delivery goes on, and a replay would
// only race it and send the event twice.
func (r *WebhookReplayReconciler) selectEvents(ctx context.Context, rp *v1.WebhookReplay, ep *v1.WebhookEndpoint) (selection, error) {
	ns, limit := rp.Namespace, int(rp.Spec.Limit)
	if limit <= 0 {
		limit = v1.DefaultReplayLimit
	}
	var sel selection
	add := func(s selected) bool {
		sel.count++
		if len(sel.events) <= limit {
			sel.events = append(sel.events, s)
		}
		return sel.count < countCap
	}
	switch spec := rp.Spec; {
	case len(spec.EventIDs) > 0:
		reader := &deliverylog.Reader{JS: r.JS}
		for _, id := range spec.EventIDs {
			d, err := reader.Delivery(ctx, ns, id, spec.Endpoint)
			if err != nil {
				return sel, fmt.Errorf("looking up event %s: %w", id, err)
			}
			switch {
			case d == nil:
				add(selected{id: id, skip: v1.ReasonEventNotFound})
			case d.Status.Phase == deliveryv1.PhaseQueued || d.Status.Phase == deliveryv1.PhaseSending || d.Status.Phase == deliveryv1.PhaseRetrying:
				add(selected{id: id, seq: uint64(d.Spec.StreamSequence), skip: v1.ReasonLiveDeliveryPending})
			default:
				add(selected{id: id, seq: uint64(d.Spec.StreamSequence)})
			}
		}
		// Stream order, so a key's versions go oldest first.
		slices.SortStableFunc(sel.events, func(a, b selected) int { return cmpUint(a.seq, b.seq) })
	case spec.TimeRange != nil:
		filters, err := streams.FilterSubjects(ns, ep.Spec.EventTypes)
		if err != nil {
			return sel, err
		}
		from, to := spec.TimeRange.From.Time, spec.TimeRange.To.Time
		err = deliverylog.Scan(ctx, r.JS, events.StreamName(ns), jetstream.ConsumerConfig{
			FilterSubjects: filters, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from, HeadersOnly: true,
		}, 0, func(m jetstream.Msg) error {
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			if !md.Timestamp.Before(to) {
				return errScanDone
			}
			// Headers only: the body is checked when the copy is sent.
			meta, err := events.ParseMeta(m.Subject(), m.Headers(), []byte("{}"))
			if err != nil {
				return nil // malformed: dead-lettered as such already, never deliverable
			}
			if !add(selected{seq: md.Sequence.Stream, id: meta.ID}) {
				return errScanDone
			}
			return nil
		})
		if err != nil && !errors.Is(err, errScanDone) {
			return sel, err
		}
	case spec.DeadLetters != nil:
		var found []selected
		err := deliverylog.Scan(ctx, r.JS, streams.DeadLetterStream(ns), jetstream.ConsumerConfig{
			FilterSubject: streams.DeadLetterSubject(ns, spec.Endpoint, "*"), DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		}, 0, func(m jetstream.Msg) error {
			var dl dispatcher.DeadLetter
			if err := json.Unmarshal(m.Data(), &dl); err != nil || dl.Sequence == 0 {
				return nil
			}
			if dl.DeliveredByReplay != "" {
				return nil // delivered since: not dead any more
			}
			if f := spec.DeadLetters; (len(f.Reasons) > 0 && !slices.Contains(f.Reasons, dl.Reason)) || (f.Since != nil && dl.DeadAt.Before(f.Since.Time)) {
				return nil
			}
			found = append(found, selected{seq: dl.Sequence, id: dl.EventID})
			return nil
		})
		if err != nil {
			return sel, err
		}
		slices.SortFunc(found, func(a, b selected) int { return cmpUint(a.seq, b.seq) })
		for _, s := range found {
			add(s)
		}
	}
	if sel.count > limit {
		return sel, nil
	}
	return sel, r.markLive(ctx, ns, rp.Spec.Endpoint, sel.events)
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// markLive marks the events whose live delivery is not finished: those
// after the consumer's ack floor without a final log entry.
func (r *WebhookReplayReconciler) markLive(ctx context.Context, ns, endpoint string, sel []selected) error {
	c, err := r.JS.Consumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, endpoint))
	if err != nil {
		return fmt.Errorf("reading the endpoint's consumer: %w", err)
	}
	floor := c.CachedInfo().AckFloor.Stream
	logs, err := r.JS.Stream(ctx, streams.AttemptsStream(ns))
	if err != nil {
		return fmt.Errorf("opening the delivery log: %w", err)
	}
	for i := range sel {
		s := &sel[i]
		if s.skip != "" || s.seq <= floor {
			continue
		}
		m, err := logs.GetLastMsgForSubject(ctx, streams.AttemptSubject(ns, endpoint, s.id))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("reading the delivery log of %s: %w", s.id, err)
		}
		var a dispatcher.Attempt
		if err != nil || json.Unmarshal(m.Data, &a) != nil || a.Sequence != s.seq || a.Outcome == dispatcher.OutcomeRetrying {
			s.skip = v1.ReasonLiveDeliveryPending
		}
	}
	return nil
}

// copyEvents puts a copy of each selected event on the replay stream,
// once: each copy has a subject of its own and the publish expects it to
// be empty, so a pass that runs again after a crash adds nothing. An
// event that aged out of the events stream is copied from its dead
// letter, or marked not found.
func (r *WebhookReplayReconciler) copyEvents(ctx context.Context, rp *v1.WebhookReplay, sel []selected) error {
	ns := rp.Namespace
	evs, err := r.JS.Stream(ctx, events.StreamName(ns))
	if err != nil {
		return fmt.Errorf("opening the events stream: %w", err)
	}
	dlq, err := r.JS.Stream(ctx, streams.DeadLetterStream(ns))
	if err != nil {
		return fmt.Errorf("opening the dead letters: %w", err)
	}
	for i := range sel {
		s := &sel[i]
		if s.skip != "" {
			continue
		}
		subject, hdr, body, err := original(ctx, evs, dlq, ns, rp.Spec.Endpoint, s)
		if err != nil {
			return err
		}
		if subject == "" {
			s.skip = v1.ReasonEventNotFound
			continue
		}
		out := nats.NewMsg(streams.ReplaySubject(ns, rp.Spec.Endpoint, string(rp.UID), s.seq))
		for k, v := range hdr {
			if !strings.HasPrefix(k, "Nats-") {
				out.Header[k] = v
			}
		}
		if id := hdr.Get(events.HeaderID); id != "" {
			out.Header.Set(streams.HeaderOriginalMsgID, id)
		}
		out.Header.Set(streams.HeaderReplay, rp.Name)
		out.Header.Set(streams.HeaderReplayUID, string(rp.UID))
		out.Header.Set(streams.HeaderReplayRate, strconv.Itoa(int(max(rp.Spec.Rate, 1))))
		out.Header.Set(streams.HeaderOriginalSubject, subject)
		out.Header.Set(streams.HeaderOriginalSeq, strconv.FormatUint(s.seq, 10))
		out.Header.Set(nats.ExpectedLastSubjSeqHdr, "0")
		out.Data = body
		if _, err := r.JS.PublishMsg(ctx, out); err != nil && !isWrongLastSequence(err) {
			return fmt.Errorf("copying event %s to the replay stream: %w", s.id, err)
		}
	}
	return nil
}

// original reads an event as published: from the events stream, or, once
// it aged out, from the endpoint's dead letter of it. An empty subject
// means neither has it.
func original(ctx context.Context, evs, dlq jetstream.Stream, ns, endpoint string, s *selected) (string, nats.Header, []byte, error) {
	m, err := evs.GetMsg(ctx, s.seq)
	if err == nil {
		return m.Subject, m.Header, m.Data, nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", nil, nil, fmt.Errorf("reading event %s: %w", s.id, err)
	}
	d, err := dlq.GetLastMsgForSubject(ctx, streams.DeadLetterSubject(ns, endpoint, s.id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", nil, nil, nil
	}
	if err != nil {
		return "", nil, nil, fmt.Errorf("reading the dead letter of %s: %w", s.id, err)
	}
	var dl dispatcher.DeadLetter
	if err := json.Unmarshal(d.Data, &dl); err != nil || dl.Sequence != s.seq || len(dl.Body) == 0 {
		return "", nil, nil, nil
	}
	return dl.Subject, nats.Header(dl.Headers), dl.Body, nil
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// replayOutcomes reads the last outcome of each of a replay's events, by
// original stream sequence.
func (r *WebhookReplayReconciler) replayOutcomes(ctx context.Context, rp *v1.WebhookReplay) (map[uint64]dispatcher.ReplayOutcome, error) {
	out := map[uint64]dispatcher.ReplayOutcome{}
	err := deliverylog.Scan(ctx, r.JS, streams.ReplayStream(rp.Namespace), jetstream.ConsumerConfig{
		FilterSubject: streams.ReplayOutcomeSubjects(rp.Namespace, string(rp.UID)), DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}, 0, func(m jetstream.Msg) error {
		var o dispatcher.ReplayOutcome
		if err := json.Unmarshal(m.Data(), &o); err == nil {
			out[o.Sequence] = o
		}
		return nil
	})
	return out, err
}

// countCopies is how many copies of a replay the replay stream holds:
// what the replay waits for, whatever passes of start made them.
func (r *WebhookReplayReconciler) countCopies(ctx context.Context, rp *v1.WebhookReplay) (int, error) {
	s, err := r.JS.Stream(ctx, streams.ReplayStream(rp.Namespace))
	if err != nil {
		return 0, fmt.Errorf("opening the replay stream: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(streams.ReplaySubjects(rp.Namespace, rp.Spec.Endpoint, string(rp.UID))))
	if err != nil {
		return 0, fmt.Errorf("counting the replay's copies: %w", err)
	}
	return len(info.State.Subjects), nil
}

// purgeCopies removes copies on the replay stream: one replay's (uid),
// or with uid "*" every replay's to an endpoint. Outcomes stay.
func purgeCopies(ctx context.Context, js jetstream.JetStream, namespace, endpoint, uid string) error {
	s, err := js.Stream(ctx, streams.ReplayStream(namespace))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the replay stream: %w", err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(streams.ReplaySubjects(namespace, endpoint, uid))); err != nil {
		return fmt.Errorf("purging replay copies: %w", err)
	}
	return nil
}

// purgeReplay removes a replay's copies and outcomes: a deleted replay
// stops, and nothing of it is left to be sent.
func (r *WebhookReplayReconciler) purgeReplay(ctx context.Context, rp *v1.WebhookReplay) error {
	s, err := r.JS.Stream(ctx, streams.ReplayStream(rp.Namespace))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the replay stream: %w", err)
	}
	for _, subj := range []string{streams.ReplaySubjects(rp.Namespace, "*", string(rp.UID)), streams.ReplayOutcomeSubjects(rp.Namespace, string(rp.UID))} {
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("purging %s: %w", subj, err)
		}
	}
	return nil
}
