package deliverylog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

// An endpoint whose backlog is deeper than one read looks at must not
// hide a newer event another endpoint has queued: the app asking where
// that event stands must see it.
func TestDeepBacklogHidesNoOtherEndpointsQueue(t *testing.T) {
	ctx := context.Background()
	srv, err := testenv.NATS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "shop"
	if err := streams.EnsureNamespace(ctx, js, streams.DefaultLimits(), ns); err != nil {
		t.Fatal(err)
	}
	consumer := func(name string) {
		cfg, err := streams.ConsumerConfig(ns, name, &heraldv1.WebhookEndpointSpec{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, events.StreamName(ns), cfg); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := events.NewPublisher(js)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(id string) {
		if _, err := pub.Publish(ctx, events.Event{ID: id, Namespace: ns, Type: "plan.changed", Data: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	consumer("stuck") // down: nothing pulls
	for i := range 20 {
		publish(fmt.Sprintf("evt_old%d", i))
	}
	consumer("fresh") // starts with the events after it
	publish("evt_new")

	r := &deliverylog.Reader{JS: js, MaxPending: 5}
	got := map[string]v1.Phase{}
	err = r.Deliveries(ctx, ns, deliverylog.Selector{EventID: "evt_new"}, func(d *v1.WebhookDelivery) {
		got[d.Spec.Endpoint] = d.Status.Phase
	})
	if err != nil {
		t.Fatal(err)
	}
	// stuck's window (its next 5) ends long before evt_new; fresh's
	// holds it, and what is read is told for every endpoint.
	if want := map[string]v1.Phase{"fresh": v1.PhaseQueued, "stuck": v1.PhaseQueued}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("evt_new: got %v, want %v", got, want)
	}
	n := 0
	if err := r.Deliveries(ctx, ns, deliverylog.Selector{Endpoint: "stuck"}, func(*v1.WebhookDelivery) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("stuck: %d Queued, want its window of 5", n)
	}
}
