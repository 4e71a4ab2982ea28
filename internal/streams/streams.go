// Package streams is Herald's NATS layout: the streams and key-value
// buckets it owns, the subjects in them, and the one function that derives
// an endpoint's JetStream consumer from its spec. The operator and the
// dispatcher both use it, so they can never disagree about a name.
package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/pkg/events"
)

// Names of the streams and buckets Herald owns. All are per namespace
// (events.StreamName, AttemptsStream, DeadLetterStream, VersionsBucket,
// HealthBucket): each is a deduplication domain, a byte budget and a
// permission boundary of its own, so no namespace can read another's
// keys through a stream's info or fill a budget another needs.
const (
	DeadLetterStreamPrefix = "HERALD_DLQ_"
	DeadLetterPrefix       = "herald.dlq"
	AttemptsStreamPrefix   = "HERALD_ATTEMPTS_"
	AttemptsPrefix         = "herald.attempts"
	// VersionsBucketPrefix starts the bucket of a namespace's highest
	// delivered version per endpoint and key.
	VersionsBucketPrefix = "herald-versions-"
	// HealthBucketPrefix starts the bucket of a namespace's delivery
	// health records, one per endpoint.
	HealthBucketPrefix = "herald-health-"
)

// VersionsBucket is namespace's bucket of delivered versions.
func VersionsBucket(namespace string) string { return VersionsBucketPrefix + namespace }

// HealthBucket is namespace's bucket of health records.
func HealthBucket(namespace string) string { return HealthBucketPrefix + namespace }

// KVStream is the stream a bucket is stored in.
func KVStream(bucket string) string { return "KV_" + bucket }

// KVSubject is the subject of a key (or a key pattern) of a bucket.
func KVSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

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

	// Byte budgets, one per stream and bucket of each namespace, so that
	// no one of them can
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
	// ReplayMaxBytes is the replays' copies and outcomes; when full a
	// replay's copies are refused and the replay says so.
	ReplayMaxBytes int64
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
		// Per namespace: 2.31 GiB of streams and buckets. JetStream reserves every
		// stream's budget against the server's max_file_store when the
		// stream is created, so a server takes as many namespaces as its
		// max_file_store holds budgets (docs/operations.md, Storage).
		EventsMaxBytes:     1 << 30,
		AttemptsMaxBytes:   512 << 20,
		DeadLetterMaxBytes: 256 << 20,
		VersionsMaxBytes:   256 << 20,
		HealthMaxBytes:     64 << 20,
		ReplayMaxBytes:     256 << 20,
	}
}

// NamespaceStreamConfigs are the desired configs of one namespace's
// streams: its events, its delivery log, its dead letters and its replays. The byte
// budgets are per namespace: one tenant filling its streams refuses or
// drops only its own.
func NamespaceStreamConfigs(l Limits, namespace string) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        events.StreamName(namespace),
			Description: "Herald events of namespace " + namespace + ": herald.events." + namespace + ".<type>",
			Subjects:    []string{events.NamespaceSubjects(namespace)},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Replicas:    l.Replicas,
			MaxAge:      l.EventsMaxAge,
			MaxMsgSize:  int32(l.MaxBodyBytes + events.HeaderAllowance),
			Duplicates:  min(l.DuplicateWindow, l.EventsMaxAge),
			MaxBytes:    budget(l.EventsMaxBytes),
			// One consumer per endpoint; the server's default cap (1,000
			// per stream) would be the namespace's endpoint limit.
			MaxConsumers: MaxEndpointsPerNamespace,
			// Full means refuse the publish, never drop a stored event:
			// the producer gets an error it can act on.
			Discard: jetstream.DiscardNew,
		},
		{
			Name:        DeadLetterStream(namespace),
			Description: "Herald dead letters of namespace " + namespace + ": herald.dlq." + namespace + ".<endpoint>.<event id>",
			Subjects:    []string{DeadLetterPrefix + "." + namespace + ".>"},
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
			// The delivery API reads a dead letter by its subject.
			AllowDirect: true,
		},
		{
			Name:        AttemptsStream(namespace),
			Description: "Herald delivery log of namespace " + namespace + ": herald.attempts." + namespace + ".<endpoint>.<event id>",
			Subjects:    []string{AttemptsPrefix + "." + namespace + ".>"},
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
		ReplayStreamConfig(l, namespace),
	}
}

// budget turns 0 (unset) into JetStream's "no limit".
func budget(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// MaxEndpointsPerNamespace is the most endpoints (consumers) one
// namespace's events stream takes.
const MaxEndpointsPerNamespace = 10000

// Namespace reports the namespace whose stream name is, if it is one of
// Herald's per-namespace streams or buckets.
func Namespace(stream string) (string, bool) {
	for _, p := range []string{events.StreamPrefix, AttemptsStreamPrefix, DeadLetterStreamPrefix, ReplayStreamPrefix, KVStream(VersionsBucketPrefix), KVStream(HealthBucketPrefix)} {
		if ns, ok := strings.CutPrefix(stream, p); ok && ns != "" {
			return ns, true
		}
	}
	return "", false
}

// Owned reports whether a stream is one of Herald's.
func Owned(stream string) bool {
	_, ok := Namespace(stream)
	return ok
}

// BucketConfigs are the desired configs of a namespace's key-value
// buckets.
func BucketConfigs(l Limits, namespace string) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: VersionsBucket(namespace), Description: "highest delivered version per endpoint and key of namespace " + namespace, Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: l.VersionsMaxAge, MaxBytes: budget(l.VersionsMaxBytes)},
		{Bucket: HealthBucket(namespace), Description: "delivery health per endpoint of namespace " + namespace, Storage: jetstream.FileStorage, Replicas: l.Replicas, MaxBytes: budget(l.HealthMaxBytes)},
	}
}

// BucketStreamConfig is the stream a bucket is stored in: what nats.go
// makes of cfg, but without rollups. A rollup (a Nats-Rollup header on a
// publish to one endpoint's key) would purge the other endpoints' keys;
// Herald never purges a key through the bucket (the operator purges the
// stream by subject), so nothing needs them.
func BucketStreamConfig(cfg jetstream.KeyValueConfig) jetstream.StreamConfig {
	dup := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < dup {
		dup = cfg.TTL
	}
	return jetstream.StreamConfig{
		Name:              KVStream(cfg.Bucket),
		Description:       cfg.Description,
		Subjects:          []string{KVSubject(cfg.Bucket, ">")},
		MaxMsgsPerSubject: 1,
		MaxBytes:          cfg.MaxBytes,
		MaxAge:            cfg.TTL,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           cfg.Storage,
		Replicas:          max(cfg.Replicas, 1),
		AllowRollup:       false,
		DenyDelete:        true,
		AllowDirect:       true,
		Duplicates:        dup,
		Discard:           jetstream.DiscardNew,
	}
}

// EnsureNamespace creates one namespace's streams and buckets, or brings
// their limits back to l. A stream in shape is only read: an update is
// far from free on the server (it checks the new subjects against every
// stream of the account and rewrites the stream's metadata file), and the
// periodic pass over 1,000 namespaces made 7,000 of them every 5 minutes,
// most of NATS's idle CPU at that scale (docs/performance.md).
func EnsureNamespace(ctx context.Context, js jetstream.JetStream, l Limits, namespace string) error {
	cfgs := NamespaceStreamConfigs(l, namespace)
	for _, b := range BucketConfigs(l, namespace) {
		cfgs = append(cfgs, BucketStreamConfig(b))
	}
	for _, cfg := range cfgs {
		if err := ensureStream(ctx, js, cfg); err != nil {
			return fmt.Errorf("ensuring stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = js.CreateOrUpdateStream(ctx, want) // racing another creator is fine
		return err
	case err != nil:
		return err
	case !StreamDrifted(want, s.CachedInfo().Config):
		return nil
	}
	_, err = js.UpdateStream(ctx, want)
	return err
}

// StreamDrifted reports whether a stream's config has moved from what
// Herald set, in the fields Herald sets, with the server's defaults for
// those it leaves zero.
func StreamDrifted(want, got jetstream.StreamConfig) bool {
	unset := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	w := want
	w.Replicas = max(w.Replicas, 1)
	w.MaxBytes, w.MaxMsgs = unset(w.MaxBytes), unset(w.MaxMsgs)
	w.MaxMsgsPerSubject, w.MaxConsumers = unset(w.MaxMsgsPerSubject), int(unset(int64(w.MaxConsumers)))
	w.MaxMsgSize = int32(unset(int64(w.MaxMsgSize)))
	if w.Duplicates == 0 {
		w.Duplicates = got.Duplicates // the server's default depends on MaxAge
	}
	return w.Description != got.Description ||
		!slices.Equal(w.Subjects, got.Subjects) ||
		w.Storage != got.Storage || w.Retention != got.Retention || w.Discard != got.Discard ||
		w.Replicas != got.Replicas ||
		w.MaxAge != got.MaxAge || w.MaxBytes != got.MaxBytes || w.MaxMsgs != got.MaxMsgs ||
		w.MaxMsgsPerSubject != got.MaxMsgsPerSubject || w.MaxConsumers != got.MaxConsumers ||
		w.MaxMsgSize != got.MaxMsgSize || w.Duplicates != got.Duplicates ||
		w.AllowDirect != got.AllowDirect || w.DenyDelete != got.DenyDelete || w.AllowRollup != got.AllowRollup
}

// RemoveEmpty deletes those of a namespace's streams and buckets that
// hold nothing any more (for a namespace without endpoints: its events,
// log entries and dead letters have aged out, and its endpoints' records
// were purged with them), and reports how many remain. The buckets go
// with the events stream: while it stays, an endpoint may yet be
// reconciled onto it, and its dispatcher needs them; consumers on a bucket
// are only watchers (the operator's health watcher), never a reason to
// keep it.
func RemoveEmpty(ctx context.Context, js jetstream.JetStream, namespace string) (remaining int, err error) {
	kept := false
	for _, name := range []string{events.StreamName(namespace), AttemptsStream(namespace), DeadLetterStream(namespace), ReplayStream(namespace)} {
		gone, err := removeIfEmpty(ctx, js, name, true)
		if err != nil {
			return 0, err
		}
		if !gone {
			remaining++
			kept = kept || name == events.StreamName(namespace)
		}
	}
	for _, name := range []string{KVStream(VersionsBucket(namespace)), KVStream(HealthBucket(namespace))} {
		gone := false
		if !kept {
			if gone, err = removeIfEmpty(ctx, js, name, false); err != nil {
				return 0, err
			}
		}
		if !gone {
			remaining++
		}
	}
	return remaining, nil
}

// removeIfEmpty deletes a stream that holds no messages (and, with
// consumersCount, has no consumer: one means an endpoint whose reconcile
// created it after the caller listed endpoints, so never delete under
// it). gone is true when the stream does not exist afterwards.
func removeIfEmpty(ctx context.Context, js jetstream.JetStream, name string, consumersCount bool) (gone bool, err error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading stream %s: %w", name, err)
	}
	if st := s.CachedInfo().State; st.Msgs > 0 || (consumersCount && st.Consumers > 0) {
		return false, nil
	}
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, fmt.Errorf("deleting empty stream %s: %w", name, err)
	}
	return true, nil
}

// AttemptsStream is the stream of one namespace's delivery log.
func AttemptsStream(namespace string) string { return AttemptsStreamPrefix + namespace }

// DeadLetterStream is the stream of one namespace's dead letters.
func DeadLetterStream(namespace string) string { return DeadLetterStreamPrefix + namespace }

// DeadLetterSubject is where an endpoint's dead letter of one event goes:
// one subject per event, so a dead letter is read by its name with one
// direct get.
func DeadLetterSubject(namespace, endpoint, eventID string) string {
	return DeadLetterPrefix + "." + namespace + "." + endpoint + "." + eventID
}

// AttemptSubject is where an attempt to deliver one event to one endpoint
// is logged.
func AttemptSubject(namespace, endpoint, eventID string) string {
	return AttemptsPrefix + "." + namespace + "." + endpoint + "." + eventID
}

// EndpointKey names an endpoint in its namespace's health bucket and
// starts its keys in the versions bucket.
func EndpointKey(namespace, endpoint string) string {
	return namespace + "." + endpoint
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
