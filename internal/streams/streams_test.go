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
		events.StreamName("shop"): jetstream.DiscardNew,
		// Refuse: the dispatcher keeps the event and retries the store.
		DeadLetterStream("shop"): jetstream.DiscardNew,
		// The audit trail thins out rather than stopping deliveries.
		AttemptsStream("shop"): jetstream.DiscardOld,
		// Refuse: the replay says its copies were refused.
		ReplayStream("shop"): jetstream.DiscardNew,
	}
	cfgs := NamespaceStreamConfigs(l, "shop")
	if len(cfgs) != len(want) {
		t.Fatalf("a namespace has %d streams, want %d", len(cfgs), len(want))
	}
	for _, c := range cfgs {
		if c.MaxBytes <= 0 {
			t.Errorf("stream %s has no byte budget", c.Name)
		}
		if c.Discard != want[c.Name] {
			t.Errorf("stream %s discards %v, want %v", c.Name, c.Discard, want[c.Name])
		}
		if ns, ok := Namespace(c.Name); !ok || ns != "shop" || !Owned(c.Name) {
			t.Errorf("Namespace(%s) = %q, %v; want shop", c.Name, ns, ok)
		}
	}
	for _, c := range BucketConfigs(l, "shop") {
		if c.MaxBytes <= 0 {
			t.Errorf("bucket %s has no byte budget", c.Bucket)
		}
		if ns, ok := Namespace(KVStream(c.Bucket)); !ok || ns != "shop" || !Owned(KVStream(c.Bucket)) {
			t.Errorf("Namespace(%s) = %q, %v; want shop", KVStream(c.Bucket), ns, ok)
		}
	}
}

// A namespace's streams take only its own subjects: a stream is the
// namespace's deduplication domain only if nothing else lands in it.
func TestANamespacesStreamsTakeOnlyItsSubjects(t *testing.T) {
	for _, c := range NamespaceStreamConfigs(DefaultLimits(), "shop") {
		for _, s := range c.Subjects {
			for _, own := range []string{events.NamespaceSubjects("shop"), AttemptsPrefix + ".shop.>", DeadLetterPrefix + ".shop.>", ReplayPrefix + ".shop.>"} {
				if s == own {
					goto next
				}
			}
			t.Errorf("stream %s takes %s, which is not only namespace shop's", c.Name, s)
		next:
		}
	}
}

func TestDeadLettersHaveTheirOwnDuplicateWindow(t *testing.T) {
	for _, c := range NamespaceStreamConfigs(DefaultLimits(), "shop") {
		if c.Name == DeadLetterStream("shop") && c.Duplicates != DefaultLimits().DuplicateWindow {
			t.Fatalf("dead-letter duplicate window = %s, want %s", c.Duplicates, DefaultLimits().DuplicateWindow)
		}
	}
}

func TestDuplicateWindowNeverOutlivesTheEvents(t *testing.T) {
	l := DefaultLimits()
	l.EventsMaxAge = l.DuplicateWindow / 2
	for _, c := range NamespaceStreamConfigs(l, "shop") {
		if c.Name == events.StreamName("shop") && c.Duplicates > c.MaxAge {
			t.Fatalf("duplicate window %s is longer than the max age %s: JetStream refuses the stream", c.Duplicates, c.MaxAge)
		}
	}
}
