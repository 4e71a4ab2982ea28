package events_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

func jetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	return jetStreamWith(t, streams.DefaultLimits())
}

// jetStreamWith is jetStream with the namespaces' streams made with limits.
func jetStreamWith(t testing.TB, limits streams.Limits) jetstream.JetStream {
	t.Helper()
	js := testenv.JetStream(t)
	for _, ns := range []string{"shop", "another-tenant"} {
		if err := streams.EnsureNamespace(context.Background(), js, limits, ns); err != nil {
			t.Fatal(err)
		}
	}
	return js
}

func valid() events.Event {
	return events.Event{ID: "evt_1", Namespace: "shop", Type: "subscription.updated", Key: "sub_123", Version: 2, Data: []byte(`{"plan":"pro"}`)}
}

func TestPublishRefusesBadEventsWithClearErrors(t *testing.T) {
	js := jetStream(t)
	pub, err := events.NewPublisher(js)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*events.Event)
		want   error
	}{
		{"missing id", func(e *events.Event) { e.ID = "" }, events.ErrMissingID},
		{"id with a dot", func(e *events.Event) { e.ID = "evt.1" }, events.ErrInvalidID},
		{"type with a wildcard", func(e *events.Event) { e.Type = "subscription.*" }, events.ErrInvalidType},
		{"type with an empty part", func(e *events.Event) { e.Type = "subscription..updated" }, events.ErrInvalidType},
		{"namespace with dots", func(e *events.Event) { e.Namespace = "a.b" }, events.ErrInvalidNamespace},
		{"negative version", func(e *events.Event) { e.Version = -1 }, events.ErrInvalidVersion},
		{"body not JSON", func(e *events.Event) { e.Data = []byte(`{"plan":`) }, events.ErrBodyNotJSON},
		{"body over the limit", func(e *events.Event) {
			e.Data = []byte(`"` + strings.Repeat("x", events.DefaultMaxBodyBytes) + `"`)
		}, events.ErrBodyTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := valid()
			tc.mutate(&e)
			_, err := pub.Publish(context.Background(), e)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPublishDeduplicatesByIDWithinANamespaceOnly(t *testing.T) {
	js := jetStream(t)
	pub, _ := events.NewPublisher(js)
	ctx := context.Background()
	first, err := pub.Publish(ctx, valid())
	if err != nil {
		t.Fatal(err)
	}
	again, err := pub.Publish(ctx, valid())
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("a second publish with the same id must be a duplicate of the first: %+v", again)
	}
	other := valid()
	other.Namespace = "another-tenant"
	ack, err := pub.Publish(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Duplicate {
		t.Fatal("the same id in another namespace is another event")
	}
}

// A producer of one namespace cannot suppress another's event, whatever
// message id it sends: each namespace's stream is its own deduplication
// domain.
func TestAnotherNamespacesMessageIDSuppressesNothing(t *testing.T) {
	js := jetStream(t)
	ctx := context.Background()
	forged := &nats.Msg{Subject: events.Subject("another-tenant", "subscription.updated"), Data: []byte(`{}`),
		Header: nats.Header{events.HeaderID: []string{events.MsgID("shop", "evt_1")}}}
	if _, err := js.PublishMsg(ctx, forged); err != nil {
		t.Fatal(err)
	}
	pub, _ := events.NewPublisher(js)
	ack, err := pub.Publish(ctx, valid())
	if err != nil {
		t.Fatal(err)
	}
	if ack.Duplicate || ack.Stream != events.StreamName("shop") {
		t.Fatalf("shop's evt_1 must be stored in shop's stream, not dropped as a duplicate of another namespace's message: %+v", ack)
	}
}

func TestPublishToANamespaceWithoutAStreamSaysSo(t *testing.T) {
	js := jetStream(t)
	pub, _ := events.NewPublisher(js)
	e := valid()
	e.Namespace = "no-endpoints-here"
	_, err := pub.Publish(context.Background(), e)
	if !errors.Is(err, events.ErrNoStream) {
		t.Fatalf("got %v, want ErrNoStream", err)
	}
}

func TestStreamEnforcesTheSizeLimitForRawPublishers(t *testing.T) {
	js := jetStream(t)
	big := make([]byte, events.DefaultMaxBodyBytes+events.HeaderAllowance+1)
	_, err := js.Publish(context.Background(), events.Subject("shop", "a.b"), big)
	if err == nil {
		t.Fatal("the stream accepted a message over its size limit")
	}
}

func TestParseMetaReadsWhatEncodeWrote(t *testing.T) {
	e := valid()
	_, h, err := e.Encode(events.DefaultMaxBodyBytes)
	if err != nil {
		t.Fatal(err)
	}
	hdr := map[string][]string{}
	for k, v := range h {
		hdr[k] = []string{v}
	}
	body, _, _ := e.Encode(events.DefaultMaxBodyBytes)
	m, err := events.ParseMeta(events.Subject(e.Namespace, e.Type), hdr, body)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != e.ID || m.Namespace != e.Namespace || m.Type != e.Type || m.Key != e.Key || m.Version != e.Version || m.Time.IsZero() {
		t.Fatalf("round trip lost something: %+v", m)
	}
}

// A raw publisher skips Encode: ParseMeta must refuse, by the same rules,
// whatever it stores.
func TestParseMetaRefusesWhatValidateRefuses(t *testing.T) {
	ok := map[string][]string{events.HeaderID: {"shop:evt_1"}, events.HeaderKey: {"sub_1"}, events.HeaderVersion: {"3"}, events.HeaderTime: {"2026-12-01T10:03:00Z"}}
	with := func(k, v string) map[string][]string {
		h := map[string][]string{}
		for hk, hv := range ok {
			h[hk] = hv
		}
		h[k] = []string{v}
		return h
	}
	long := strings.Repeat("k", 4<<10)
	cases := []struct {
		name    string
		subject string
		h       map[string][]string
		body    string
		want    error
	}{
		{"4 KiB key", "herald.events.shop.a.b", with(events.HeaderKey, long), "{}", events.ErrInvalidKey},
		{"key with a newline", "herald.events.shop.a.b", with(events.HeaderKey, "a\nb"), "{}", events.ErrInvalidKey},
		{"over-long version", "herald.events.shop.a.b", with(events.HeaderVersion, strings.Repeat("9", 400)), "{}", events.ErrInvalidVersion},
		{"negative version", "herald.events.shop.a.b", with(events.HeaderVersion, "-1"), "{}", events.ErrInvalidVersion},
		{"over-long time", "herald.events.shop.a.b", with(events.HeaderTime, strings.Repeat("1", 400)), "{}", events.ErrInvalidTime},
		{"unicode type", "herald.events.shop.caf\u00e9.b", ok, "{}", events.ErrInvalidType},
		{"wildcard type", "herald.events.shop.a.*", ok, "{}", events.ErrInvalidType},
		{"id with a star", "herald.events.shop.a.b", with(events.HeaderID, "shop:a*b"), "{}", events.ErrInvalidID},
		{"id with >", "herald.events.shop.a.b", with(events.HeaderID, ">"), "{}", events.ErrInvalidID},
		{"id with a space", "herald.events.shop.a.b", with(events.HeaderID, "shop:a b"), "{}", events.ErrInvalidID},
		{"no id", "herald.events.shop.a.b", with(events.HeaderID, ""), "{}", events.ErrMissingID},
		{"body not JSON", "herald.events.shop.a.b", ok, "not json", events.ErrBodyNotJSON},
		{"60 KiB of headers", "herald.events.shop.a.b", with("X-Junk", strings.Repeat("j", 60<<10)), "{}", events.ErrHeadersTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := events.ParseMeta(c.subject, c.h, []byte(c.body))
			if !errors.Is(err, events.ErrMalformed) || !errors.Is(err, c.want) {
				t.Fatalf("ParseMeta = %v, want an error wrapping ErrMalformed and %v", err, c.want)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("the error quotes the hostile input whole (%d bytes)", len(err.Error()))
			}
		})
	}
	if _, err := events.ParseMeta("herald.events.shop.a.b", ok, []byte("{}")); err != nil {
		t.Fatalf("a valid event was refused: %v", err)
	}
}
