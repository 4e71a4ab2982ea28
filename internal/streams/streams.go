// Package streams is Herald's NATS layout: the streams and key-value
// buckets it owns, the subjects in them, and the one function that derives
// an endpoint's JetStream consumer from its spec. The operator and the
// dispatcher both use it, so they can never disagree about a name.
package streams

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/pkg/events"
)

// Names of the streams and buckets Herald owns besides events.StreamName.
const (
	DeadLetterStream = "HERALD_DLQ"
	DeadLetterPrefix = "herald.dlq"
	AttemptsStream   = "HERALD_ATTEMPTS"
	AttemptsPrefix   = "herald.attempts"
	// VersionsBucket holds the highest version delivered per endpoint and key.
	VersionsBucket = "herald-versions"
	// HealthBucket holds one delivery-health record per endpoint.
	HealthBucket = "herald-health"
)

// Limits are the operator-configured sizes of what Herald owns in NATS.
type Limits struct {
	// Replicas is 1 for a single server, 3 for a production cluster.
	Replicas int
	// MaxBodyBytes is the largest event envelope; the stream refuses bigger.
	MaxBodyBytes int
	// DuplicateWindow turns a producer's retried publish into one event.
	DuplicateWindow time.Duration
	// EventsMaxAge is how long events stay in the event stream.
	EventsMaxAge time.Duration
	// AttemptsMaxAge is how long the delivery log keeps an attempt.
	AttemptsMaxAge time.Duration
	// DeadLetterMaxAge is how long a dead letter waits for a replay.
	DeadLetterMaxAge time.Duration
	// VersionsMaxAge is how long the highest delivered version of a key is
	// remembered after its last delivery; it must outlive every replay.
	VersionsMaxAge time.Duration
}

// DefaultLimits suit a single local server.
func DefaultLimits() Limits {
	return Limits{
		Replicas:         1,
		MaxBodyBytes:     events.DefaultMaxBodyBytes,
		DuplicateWindow:  5 * time.Minute,
		EventsMaxAge:     7 * 24 * time.Hour,
		AttemptsMaxAge:   7 * 24 * time.Hour,
		DeadLetterMaxAge: 30 * 24 * time.Hour,
		VersionsMaxAge:   60 * 24 * time.Hour,
	}
}

// StreamConfigs are the desired configs of Herald's streams.
func StreamConfigs(l Limits) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        events.StreamName,
			Description: "Herald events: herald.events.<namespace>.<type>",
			Subjects:    []string{events.SubjectPrefix + ".>"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Replicas:    l.Replicas,
			MaxAge:      l.EventsMaxAge,
			MaxMsgSize:  int32(l.MaxBodyBytes + events.HeaderAllowance),
			Duplicates:  l.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        DeadLetterStream,
			Description: "Herald dead letters: herald.dlq.<namespace>.<endpoint>",
			Subjects:    []string{DeadLetterPrefix + ".>"},
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			MaxAge:      l.DeadLetterMaxAge,
		},
		{
			Name:        AttemptsStream,
			Description: "Herald delivery log: herald.attempts.<namespace>.<endpoint>.<event id>",
			Subjects:    []string{AttemptsPrefix + ".>"},
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			MaxAge:      l.AttemptsMaxAge,
			// Direct gets let `herald status` read without a consumer.
			AllowDirect: true,
		},
	}
}

// BucketConfigs are the desired configs of Herald's key-value buckets.
func BucketConfigs(l Limits) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: VersionsBucket, Description: "highest delivered version per endpoint and key", Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: l.VersionsMaxAge},
		{Bucket: HealthBucket, Description: "delivery health per endpoint", Storage: jetstream.FileStorage, Replicas: l.Replicas},
	}
}

// Ensure creates Herald's streams and buckets, or brings their limits back
// to l when they drifted.
func Ensure(ctx context.Context, js jetstream.JetStream, l Limits) error {
	for _, cfg := range StreamConfigs(l) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensuring stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range BucketConfigs(l) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("ensuring key-value bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// DeadLetterSubject is where an endpoint's dead letters go.
func DeadLetterSubject(namespace, endpoint string) string {
	return DeadLetterPrefix + "." + namespace + "." + endpoint
}

// AttemptSubject is where an attempt to deliver one event to one endpoint
// is logged.
func AttemptSubject(namespace, endpoint, eventID string) string {
	return AttemptsPrefix + "." + namespace + "." + endpoint + "." + eventID
}

// EndpointKey names an endpoint in the health bucket and in key prefixes.
func EndpointKey(namespace, endpoint string) string {
	return namespace + "." + endpoint
}
