package events_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

func TestPublishBatchStoresEveryValidEventInOrderAndRefusesTheRest(t *testing.T) {
	js := jetStream(t)
	pub, _ := events.NewPublisher(js)
	var evs []events.Event
	for i := range 250 {
		e := valid()
		e.ID = fmt.Sprintf("evt_%d", i)
		e.Version = int64(i + 1)
		evs = append(evs, e)
	}
	evs[7].ID = "evt.7"                    // refused before it is sent
	evs[8].Namespace = "no-endpoints-here" // refused by NATS: no stream
	evs[9].ID = evs[3].ID                  // a duplicate is stored once, and is no error
	errs := pub.PublishBatch(context.Background(), evs, 16)
	for i, err := range errs {
		switch i {
		case 7:
			if !errors.Is(err, events.ErrInvalidID) {
				t.Errorf("event 7: got %v, want ErrInvalidID", err)
			}
		case 8:
			if !errors.Is(err, events.ErrNoStream) {
				t.Errorf("event 8: got %v, want ErrNoStream", err)
			}
		default:
			if err != nil {
				t.Errorf("event %d: %v", i, err)
			}
		}
	}
	c, err := js.OrderedConsumer(context.Background(), events.StreamName("shop"), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.FetchNoWait(500)
	if err != nil {
		t.Fatal(err)
	}
	last := int64(0)
	n := 0
	for m := range batch.Messages() {
		meta, err := events.ParseMeta(m.Subject(), m.Headers(), m.Data())
		if err != nil {
			t.Fatal(err)
		}
		if meta.Version <= last {
			t.Fatalf("version %d stored after %d: the batch lost its order", meta.Version, last)
		}
		last = meta.Version
		n++
	}
	if n != 247 {
		t.Fatalf("stored %d events, want 247 (250 less the invalid, the streamless and the duplicate)", n)
	}
}

func TestPublishAsyncSaysWhenTheStreamIsFull(t *testing.T) {
	limits := streams.DefaultLimits()
	limits.EventsMaxBytes = 4 << 10
	js := jetStreamWith(t, limits)
	pub, _ := events.NewPublisher(js)
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		e := valid()
		e.ID = fmt.Sprintf("evt_%d", i)
		p, err := pub.PublishAsync(e)
		if err != nil {
			t.Fatal(err)
		}
		_, full = p.Wait(context.Background())
	}
	if !errors.Is(full, events.ErrStreamFull) {
		t.Fatalf("got %v, want ErrStreamFull once 4 KiB are stored", full)
	}
}
