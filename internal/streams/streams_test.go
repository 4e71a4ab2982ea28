package streams

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/pkg/events"
)

func TestEveryStreamAndBucketHasABudgetAndTheRightDiscardPolicy(t *testing.T) {
	l := DefaultLimits()
	want := map[string]jetstream.DiscardPolicy{
		// Refuse the publish: a producer can retry, a dropped event is lost.
		events.StreamName: jetstream.DiscardNew,
		// Refuse: the dispatcher keeps the event and retries the store.
		DeadLetterStream: jetstream.DiscardNew,
		// The audit trail thins out rather than stopping deliveries.
		AttemptsStream: jetstream.DiscardOld,
	}
	for _, c := range StreamConfigs(l) {
		if c.MaxBytes <= 0 {
			t.Errorf("stream %s has no byte budget", c.Name)
		}
		if c.Discard != want[c.Name] {
			t.Errorf("stream %s discards %v, want %v", c.Name, c.Discard, want[c.Name])
		}
	}
	for _, c := range BucketConfigs(l) {
		if c.MaxBytes <= 0 {
			t.Errorf("bucket %s has no byte budget", c.Bucket)
		}
	}
	if n := len(Budgets(l)); n != 5 {
		t.Errorf("Budgets lists %d streams, want 5", n)
	}
}

func TestDeadLettersHaveTheirOwnDuplicateWindow(t *testing.T) {
	for _, c := range StreamConfigs(DefaultLimits()) {
		if c.Name == DeadLetterStream && c.Duplicates != DefaultLimits().DuplicateWindow {
			t.Fatalf("dead-letter duplicate window = %s, want %s", c.Duplicates, DefaultLimits().DuplicateWindow)
		}
	}
}

func TestDuplicateWindowNeverOutlivesTheEvents(t *testing.T) {
	l := DefaultLimits()
	l.EventsMaxAge = l.DuplicateWindow / 2
	for _, c := range StreamConfigs(l) {
		if c.Name == events.StreamName && c.Duplicates > c.MaxAge {
			t.Fatalf("duplicate window %s is longer than the max age %s: JetStream refuses the stream", c.Duplicates, c.MaxAge)
		}
	}
}
