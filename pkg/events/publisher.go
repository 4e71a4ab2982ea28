package events

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrInvalidOption is wrapped by every error from an Option.
var ErrInvalidOption = errors.New("invalid option")

// Option configures a Publisher.
type Option func(*Publisher) error

// WithMaxBodyBytes sets the size limit; it must not exceed the stream's.
func WithMaxBodyBytes(n int) Option {
	return func(p *Publisher) error {
		if n <= 0 {
			return fmt.Errorf("%w: max body bytes must be positive, got %d", ErrInvalidOption, n)
		}
		p.maxBody = n
		return nil
	}
}

// Publisher validates events and publishes them to JetStream.
type Publisher struct {
	js      jetstream.JetStream
	maxBody int
}

// NewPublisher returns a Publisher on js.
func NewPublisher(js jetstream.JetStream, opts ...Option) (*Publisher, error) {
	p := &Publisher{js: js, maxBody: DefaultMaxBodyBytes}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Publish validates e and publishes it, waiting for the stream to store
// it. A publish retried with the same id inside the stream's duplicate
// window returns an ack with Duplicate set and stores nothing new. Errors
// wrap ErrMissingID, ErrInvalidID, ErrInvalidType, ErrInvalidNamespace,
// ErrInvalidKey, ErrInvalidVersion, ErrBodyNotJSON or ErrBodyTooLarge when
// the event is at fault, ErrStreamFull when the stream is at its budget,
// ErrNoStream when the namespace has no stream yet,
// and the JetStream error otherwise.
func (p *Publisher) Publish(ctx context.Context, e Event) (*jetstream.PubAck, error) {
	msg, err := p.message(e)
	if err != nil {
		return nil, err
	}
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(StreamName(e.Namespace)))
	if err != nil {
		return nil, publishError(e.ID, msg.Subject, err)
	}
	return ack, nil
}

// Pending is an event sent by PublishAsync whose store is not confirmed yet.
type Pending struct {
	id, subject string
	future      jetstream.PubAckFuture
}

// Wait returns the stream's ack for the event, or the error Publish would
// have returned for it. Only an ack means stored; after an error (a
// context that ended, an ack that timed out) the event may or may not be
// stored, and a retry with the same id is stored at most once.
func (p *Pending) Wait(ctx context.Context) (*jetstream.PubAck, error) {
	select {
	case ack := <-p.future.Ok():
		return ack, nil
	case err := <-p.future.Err():
		return nil, publishError(p.id, p.subject, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("publishing event %q to %s: waiting for its ack: %w", p.id, p.subject, ctx.Err())
	}
}

// PublishAsync validates e and sends it without waiting for the stream:
// the caller goes on and confirms the store with Wait. An invalid event is
// refused here, with Publish's errors, and nothing is sent. When the
// JetStream context already has its maximum of unconfirmed publishes
// (jetstream.WithPublishAsyncMaxPending, 4,000 by default), this waits for
// room up to the stall wait and then fails.
func (p *Publisher) PublishAsync(e Event) (*Pending, error) {
	msg, err := p.message(e)
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(msg, jetstream.WithExpectStream(StreamName(e.Namespace)))
	if err != nil {
		return nil, publishError(e.ID, msg.Subject, err)
	}
	return &Pending{id: e.ID, subject: msg.Subject, future: f}, nil
}

// PublishBatch publishes evs asynchronously, at most window of them
// unconfirmed at a time, and returns once every one is confirmed or
// failed: errs[i] is nil when evs[i] is stored (or was a duplicate) and
// otherwise the error Publish would have returned for it. A failed event
// does not stop the others; it is the caller's to retry, and its retry is
// stored after the events that followed it: give events of one key
// versions, so that a late older one is superseded, not delivered after a
// newer. The window counts against the JetStream context's maximum of
// unconfirmed publishes (jetstream.WithPublishAsyncMaxPending, 4,000 by
// default), shared by every batch on it; past it, publishes fail.
func (p *Publisher) PublishBatch(ctx context.Context, evs []Event, window int) (errs []error) {
	errs = make([]error, len(evs))
	if window <= 0 {
		window = DefaultBatchWindow
	}
	pending := make([]*Pending, len(evs))
	confirmed := 0
	confirm := func(i int) {
		if pending[i] != nil {
			_, errs[i] = pending[i].Wait(ctx)
		}
	}
	for i, e := range evs {
		for ; i-confirmed >= window; confirmed++ {
			confirm(confirmed)
		}
		if ctx.Err() != nil {
			errs[i] = fmt.Errorf("publishing event %q: %w", e.ID, ctx.Err())
			continue
		}
		pending[i], errs[i] = p.PublishAsync(e)
	}
	for ; confirmed < len(evs); confirmed++ {
		confirm(confirmed)
	}
	return errs
}

// DefaultBatchWindow is PublishBatch's number of unconfirmed events when
// the caller gives none: enough to keep a round trip's worth of events in
// flight, well under the JetStream context's default of 4,000.
const DefaultBatchWindow = 1000

// message validates and encodes e into the NATS message it is published as.
func (p *Publisher) message(e Event) (*nats.Msg, error) {
	body, headers, err := e.Encode(p.maxBody)
	if err != nil {
		return nil, fmt.Errorf("event %q: %w", e.ID, err)
	}
	msg := &nats.Msg{Subject: Subject(e.Namespace, e.Type), Data: body, Header: nats.Header{}}
	for k, v := range headers {
		msg.Header.Set(k, v)
	}
	return msg, nil
}

// publishError wraps a JetStream error with the sentinel a caller can act on.
func publishError(id, subject string, err error) error {
	switch {
	case isFull(err):
		err = fmt.Errorf("%w: %w", ErrStreamFull, err)
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		err = fmt.Errorf("%w: %w", ErrNoStream, err)
	}
	return fmt.Errorf("publishing event %q to %s: %w", id, subject, err)
}

// isFull reports whether JetStream refused a message because the stream
// reached its byte or message budget (it discards new, not stored, events).
func isFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jsStoreFailed {
		return false
	}
	return strings.Contains(apiErr.Description, "maximum bytes exceeded") || strings.Contains(apiErr.Description, "maximum messages exceeded")
}

// jsStoreFailed is JetStream's error code for a message it could not store
// (JSStreamStoreFailedF); the description says why.
const jsStoreFailed jetstream.ErrorCode = 10077
