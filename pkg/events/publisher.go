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
	body, headers, err := e.Encode(p.maxBody)
	if err != nil {
		return nil, fmt.Errorf("event %q: %w", e.ID, err)
	}
	msg := &nats.Msg{Subject: Subject(e.Namespace, e.Type), Data: body, Header: nats.Header{}}
	for k, v := range headers {
		msg.Header.Set(k, v)
	}
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(StreamName(e.Namespace)))
	if err != nil {
		switch {
		case isFull(err):
			err = fmt.Errorf("%w: %w", ErrStreamFull, err)
		case errors.Is(err, jetstream.ErrNoStreamResponse):
			err = fmt.Errorf("%w: %w", ErrNoStream, err)
		}
		return nil, fmt.Errorf("publishing event %q to %s: %w", e.ID, msg.Subject, err)
	}
	return ack, nil
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
