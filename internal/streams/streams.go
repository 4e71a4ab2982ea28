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

	// Byte budgets, one per stream and bucket, so that no one of them can
	// fill the JetStream storage the others need. When one is reached:
	// the events stream refuses new publishes (producers get
	// events.ErrStreamFull; stored events are never dropped), the delivery
	// log drops its oldest entries, and the dead letters and buckets refuse
	// new writes (the dispatcher keeps the event and retries the write).
	EventsMaxBytes     int64
	AttemptsMaxBytes   int64
	DeadLetterMaxBytes int64
	VersionsMaxBytes   int64
	HealthMaxBytes     int64
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
		// 13.3 GiB in all: fits a 20 GiB JetStream volume with room for
		// the server's own files (docs/operations.md has the sizing table).
		EventsMaxBytes:     8 << 30,
		AttemptsMaxBytes:   4 << 30,
		DeadLetterMaxBytes: 1 << 30,
		VersionsMaxBytes:   256 << 20,
		HealthMaxBytes:     64 << 20,
	}
}

// Budget is one stream's byte budget, for the storage metrics.
type Budget struct {
	Stream   string
	MaxBytes int64
}

// Budgets lists every stream Herald owns (buckets by their streams' names)
// with its byte budget.
func Budgets(l Limits) []Budget {
	var out []Budget
	for _, c := range StreamConfigs(l) {
		out = append(out, Budget{Stream: c.Name, MaxBytes: c.MaxBytes})
	}
	for _, c := range BucketConfigs(l) {
		out = append(out, Budget{Stream: "KV_" + c.Bucket, MaxBytes: c.MaxBytes})
	}
	return out
}

// budget turns 0 (unset) into JetStream's "no limit".
func budget(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
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
			Duplicates:  min(l.DuplicateWindow, l.EventsMaxAge),
			MaxBytes:    budget(l.EventsMaxBytes),
			// Full means refuse the publish, never drop a stored event:
			// the producer gets an error it can act on.
			Discard: jetstream.DiscardNew,
		},
		{
			Name:        DeadLetterStream,
			Description: "Herald dead letters: herald.dlq.<namespace>.<endpoint>",
			Subjects:    []string{DeadLetterPrefix + ".>"},
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			MaxAge:      l.DeadLetterMaxAge,
			// Its own duplicate window: a dead letter written twice around
			// a crash or a retried publish is stored once.
			Duplicates: min(l.DuplicateWindow, l.DeadLetterMaxAge),
			MaxBytes:   budget(l.DeadLetterMaxBytes),
			// A full dead-letter stream refuses: the dispatcher keeps the
			// event (never resent) and retries storing it, visibly.
			Discard: jetstream.DiscardNew,
		},
		{
			Name:        AttemptsStream,
			Description: "Herald delivery log: herald.attempts.<namespace>.<endpoint>.<event id>",
			Subjects:    []string{AttemptsPrefix + ".>"},
			Storage:     jetstream.FileStorage,
			Replicas:    l.Replicas,
			MaxAge:      l.AttemptsMaxAge,
			MaxBytes:    budget(l.AttemptsMaxBytes),
			// The log is the one stream that drops its oldest entries when
			// full: an audit trail that thins out beats deliveries that stop.
			Discard: jetstream.DiscardOld,
			// Direct gets let `herald status` read without a consumer.
			AllowDirect: true,
		},
	}
}

// BucketConfigs are the desired configs of Herald's key-value buckets.
func BucketConfigs(l Limits) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: VersionsBucket, Description: "highest delivered version per endpoint and key", Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: l.VersionsMaxAge, MaxBytes: budget(l.VersionsMaxBytes)},
		{Bucket: HealthBucket, Description: "delivery health per endpoint", Storage: jetstream.FileStorage, Replicas: l.Replicas, MaxBytes: budget(l.HealthMaxBytes)},
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
