package streams

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/events"
)

// ErrInvalidEventType is wrapped when an eventTypes pattern is refused.
var ErrInvalidEventType = errors.New("invalid event type pattern")

const (
	// ackMargin is added to the request timeout so a slow but successful
	// answer is acked before JetStream redelivers it.
	ackMargin = 5 * time.Second
	// retryHeadroom is how many events of one endpoint may wait for a
	// retry before the consumer stops handing out new ones; past it, new
	// events wait in the stream and count in the backlog.
	retryHeadroom = 1000
)

// ConsumerName is the durable consumer of one endpoint. Namespaces and
// endpoint names are DNS labels, which never contain '_', so the name is
// unambiguous.
func ConsumerName(namespace, endpoint string) string {
	return namespace + "_" + endpoint
}

// FilterSubjects turns an endpoint's eventTypes into the consumer's filter
// subjects. Every subject starts with herald.events.<namespace>., so no
// pattern can reach another namespace's events. Patterns covered by others
// are dropped, because JetStream refuses overlapping filters.
func FilterSubjects(namespace string, eventTypes []string) ([]string, error) {
	if len(eventTypes) == 0 {
		return []string{events.NamespaceSubjects(namespace)}, nil
	}
	var pats [][]string
	for _, t := range eventTypes {
		toks, err := parsePattern(t)
		if err != nil {
			return nil, err
		}
		pats = append(pats, toks)
	}
	var kept []string
	for i, p := range pats {
		covered := false
		for j, q := range pats {
			if i != j && covers(q, p) && (!covers(p, q) || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			kept = append(kept, events.SubjectPrefix+"."+namespace+"."+strings.Join(p, "."))
		}
	}
	slices.Sort(kept)
	return slices.Compact(kept), nil
}

func parsePattern(t string) ([]string, error) {
	if t == "" {
		return nil, fmt.Errorf("%w: empty pattern", ErrInvalidEventType)
	}
	toks := strings.Split(t, ".")
	for i, tok := range toks {
		switch {
		case tok == ">" && i == len(toks)-1, tok == "*":
		case tok == "" || strings.ContainsAny(tok, "*> \t\r\n"):
			return nil, fmt.Errorf("%w %q: parts are letters, digits, '_' and '-', or * for one part, or a final > for the rest", ErrInvalidEventType, t)
		}
	}
	return toks, nil
}

// MatchesAny reports whether a consumer with these filter subjects takes
// subject; no filter takes everything.
func MatchesAny(filters []string, subject string) bool {
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if Matches(f, subject) {
			return true
		}
	}
	return false
}

// Matches reports whether a subject filter (with * and >) matches subject.
func Matches(filter, subject string) bool {
	return covers(strings.Split(filter, "."), strings.Split(subject, "."))
}

// covers reports whether subject pattern a matches everything b matches.
func covers(a, b []string) bool {
	for i, t := range a {
		if t == ">" {
			return len(b) > i
		}
		if i >= len(b) || b[i] == ">" || (t != "*" && t != b[i]) {
			return false
		}
	}
	return len(a) == len(b)
}

// AckWait is how long JetStream waits for an endpoint's answer to an event
// before it redelivers it: the request timeout and a margin.
func AckWait(timeout time.Duration) time.Duration { return timeout + ackMargin }

// ConsumerConfig derives an endpoint's durable consumer from its spec. The
// dispatcher takes retries into its own hands (NAK with delay, as the
// retry policy says), so MaxDeliver is unlimited and nothing here depends
// on the policy beyond how many events may wait to retry.
func ConsumerConfig(namespace, endpoint string, spec *v1.WebhookEndpointSpec) (jetstream.ConsumerConfig, error) {
	filters, err := FilterSubjects(namespace, spec.EventTypes)
	if err != nil {
		return jetstream.ConsumerConfig{}, err
	}
	timeout := 10 * time.Second
	if spec.Timeout != nil && spec.Timeout.Duration > 0 {
		timeout = spec.Timeout.Duration
	}
	inFlight := int(spec.MaxInFlight)
	if inFlight <= 0 {
		inFlight = 16
	}
	return jetstream.ConsumerConfig{
		Durable:        ConsumerName(namespace, endpoint),
		Description:    fmt.Sprintf("Herald WebhookEndpoint %s/%s", namespace, endpoint),
		FilterSubjects: filters,
		// A new endpoint starts with the events published after it exists.
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait(timeout),
		MaxDeliver:    -1,
		MaxAckPending: inFlight + retryHeadroom,
		MaxWaiting:    16,
		Metadata:      map[string]string{"herald.dev/endpoint": namespace + "/" + endpoint},
	}, nil
}
