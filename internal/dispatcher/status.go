package dispatcher

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// EventState is where one event stands at one endpoint.
type EventState struct {
	Namespace string
	Endpoint  string
	// State is queued, sent, retrying, dead or superseded.
	State string
	// Last is the newest delivery-log entry; nil while queued.
	Last *Attempt
}

// States, as `herald status` prints them.
const (
	StateQueued     = "queued"
	StateSent       = "sent"
	StateRetrying   = "retrying"
	StateDead       = "dead"
	StateSuperseded = "superseded"
)

// EventStatus looks an event up in a namespace's delivery log: one walk
// over the event's entries, keeping the newest per endpoint. The id and
// namespace are checked first (they become subject tokens, so `>` would
// read the whole log). When eventType is given it also lists the
// endpoints whose consumers match the event but have not tried it yet, as
// queued.
func EventStatus(ctx context.Context, js jetstream.JetStream, eventID, namespace, eventType string) ([]EventState, error) {
	if err := events.CheckID(eventID); err != nil {
		return nil, err
	}
	if err := (events.Event{ID: eventID, Namespace: namespace, Type: "x", Data: []byte("{}")}).Validate(); err != nil {
		return nil, err
	}
	log, err := js.Stream(ctx, streams.AttemptsStream(namespace))
	if err != nil {
		return nil, fmt.Errorf("opening delivery log %s: %w", streams.AttemptsStream(namespace), err)
	}
	all, err := readAttempts(ctx, log, streams.AttemptsPrefix+"."+namespace+".*."+eventID)
	if err != nil {
		return nil, err
	}
	// The log is in time order, so the last entry per endpoint wins.
	last := map[string]*Attempt{}
	for i := range all {
		last[all[i].Namespace+"/"+all[i].Endpoint] = &all[i]
	}
	var out []EventState
	seen := map[string]bool{}
	for id, a := range last {
		seen[id] = true
		out = append(out, EventState{Namespace: a.Namespace, Endpoint: a.Endpoint, State: stateOf(a.Outcome), Last: a})
	}
	if eventType != "" {
		subject := events.Subject(namespace, eventType)
		stream, err := js.Stream(ctx, events.StreamName(namespace))
		if err != nil {
			return nil, fmt.Errorf("opening stream %s: %w", events.StreamName(namespace), err)
		}
		lister := stream.ListConsumers(ctx)
		for info := range lister.Info() {
			ns, name, ok := strings.Cut(info.Name, "_")
			if !ok || ns != namespace || seen[ns+"/"+name] || !matchesAny(info.Config.FilterSubjects, info.Config.FilterSubject, subject) {
				continue
			}
			out = append(out, EventState{Namespace: ns, Endpoint: name, State: StateQueued})
		}
		if err := lister.Err(); err != nil {
			return nil, fmt.Errorf("listing endpoint consumers: %w", err)
		}
	}
	slices.SortFunc(out, func(a, b EventState) int {
		return strings.Compare(a.Namespace+"/"+a.Endpoint, b.Namespace+"/"+b.Endpoint)
	})
	return out, nil
}

func stateOf(outcome string) string {
	switch outcome {
	case OutcomeDelivered:
		return StateSent
	case OutcomeRetrying:
		return StateRetrying
	case OutcomeDead:
		return StateDead
	case OutcomeSuperseded:
		return StateSuperseded
	}
	return outcome
}

func matchesAny(filters []string, filter, subject string) bool {
	if filter != "" {
		filters = append(filters, filter)
	}
	return streams.MatchesAny(filters, subject)
}
