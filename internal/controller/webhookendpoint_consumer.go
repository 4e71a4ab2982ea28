package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// consumerAction says what ensureConsumer had to do, for events and logs.
type consumerAction string

const (
	consumerUnchanged consumerAction = ""
	consumerCreated   consumerAction = "Created"
	consumerUpdated   consumerAction = "Updated"
	// consumerReplaced: the consumer found was an earlier endpoint's of the
	// same name (a cleanup that did not run); it was deleted with that
	// endpoint's records and created afresh.
	consumerReplaced consumerAction = "Replaced"
)

// endpointUIDKey is the consumer metadata key that names the endpoint
// object (its UID) a consumer belongs to, so that an endpoint deleted and
// created again under the same name is told apart from its predecessor.
const endpointUIDKey = "herald.dev/endpoint-uid"

// consumerBelongs decides whether an existing consumer is this endpoint's:
// it carries the endpoint's UID, or it carries none (made before UIDs were
// recorded) and the endpoint already had a consumer (known: its status
// names one). Otherwise it is left over from an earlier endpoint of the
// same name.
func consumerBelongs(have map[string]string, uid types.UID, known bool) bool {
	if owner := have[endpointUIDKey]; owner != "" {
		return owner == string(uid)
	}
	return known
}

// desiredConsumer derives the endpoint's consumer, its UID in the
// metadata. Refused eventTypes are a Stalled problem: the tenant must
// change the spec.
func desiredConsumer(ep *v1.WebhookEndpoint) (jetstream.ConsumerConfig, error) {
	cfg, err := streams.ConsumerConfig(ep.Namespace, ep.Name, &ep.Spec)
	if err != nil {
		return cfg, stalled(v1.ReasonEventTypesRefused, fmt.Sprintf("spec.eventTypes refused: %v", err), err)
	}
	if ep.UID != "" {
		if cfg.Metadata == nil {
			cfg.Metadata = map[string]string{}
		}
		cfg.Metadata[endpointUIDKey] = string(ep.UID)
	}
	return cfg, nil
}

// ensureConsumer creates the endpoint's durable consumer, or brings it
// back to the derived config when the spec changed or someone edited or
// deleted it behind the operator's back. It reads before it writes, so a
// pass over an unchanged endpoint costs NATS one consumer-info request.
//
// A new endpoint (known false: its status names no consumer yet) never
// inherits what an earlier endpoint of the same name left behind: a
// consumer that is not its own (consumerBelongs) is deleted and created
// afresh, so the old events are not sent to the new URL, and before a
// new endpoint's consumer is created its version and health records are
// purged, so its events are not superseded by the old endpoint's versions.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, want jetstream.ConsumerConfig, namespace, name string, known bool) (*jetstream.ConsumerInfo, consumerAction, error) {
	create := func(action consumerAction) (*jetstream.ConsumerInfo, consumerAction, error) {
		if !known {
			if err := purgeEndpointRecords(ctx, js, namespace, name); err != nil {
				return nil, "", err
			}
		}
		c, err := js.CreateConsumer(ctx, events.StreamName(namespace), want)
		if err != nil {
			return nil, "", fmt.Errorf("creating consumer %s: %w", want.Durable, err)
		}
		return c.CachedInfo(), action, nil
	}
	c, err := js.Consumer(ctx, events.StreamName(namespace), want.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return create(consumerCreated)
	case err != nil:
		return nil, "", fmt.Errorf("reading consumer %s: %w", want.Durable, err)
	}
	info := c.CachedInfo()
	if !consumerBelongs(info.Config.Metadata, types.UID(want.Metadata[endpointUIDKey]), known) {
		if err := deleteConsumer(ctx, js, namespace, name); err != nil {
			return nil, "", err
		}
		// An earlier endpoint's consumer means its records are still there
		// too, whatever this endpoint's status says.
		known = false
		return create(consumerReplaced)
	}
	if !consumerDrifted(want, info.Config) {
		return info, consumerUnchanged, nil
	}
	c, err = js.UpdateConsumer(ctx, events.StreamName(namespace), want)
	if err != nil {
		return nil, "", fmt.Errorf("updating consumer %s: %w", want.Durable, err)
	}
	return c.CachedInfo(), consumerUpdated, nil
}

// consumerDrifted compares the fields Herald sets. The server fills in
// others (defaults, its own _nats.* metadata), which must not count.
func consumerDrifted(want, have jetstream.ConsumerConfig) bool {
	haveFilters := have.FilterSubjects
	if have.FilterSubject != "" {
		haveFilters = append(slices.Clone(haveFilters), have.FilterSubject)
	}
	haveFilters = slices.Sorted(slices.Values(haveFilters))
	wantFilters := slices.Sorted(slices.Values(want.FilterSubjects))
	if !slices.Equal(wantFilters, haveFilters) {
		return true
	}
	for k, v := range want.Metadata {
		if have.Metadata[k] != v {
			return true
		}
	}
	return want.Description != have.Description ||
		want.AckPolicy != have.AckPolicy ||
		want.AckWait != have.AckWait ||
		want.MaxDeliver != have.MaxDeliver ||
		want.MaxAckPending != have.MaxAckPending ||
		want.MaxWaiting != have.MaxWaiting
}

// deleteConsumer deletes the endpoint's consumer; a consumer that is
// already gone is not an error.
func deleteConsumer(ctx context.Context, js jetstream.JetStream, namespace, name string) error {
	err := js.DeleteConsumer(ctx, events.StreamName(namespace), streams.ConsumerName(namespace, name))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("deleting consumer %s: %w", streams.ConsumerName(namespace, name), err)
	}
	return nil
}

// purgeEndpointRecords removes what the dispatcher keeps in NATS for one
// endpoint besides its consumer: the version records (keys
// <namespace>.<endpoint>.<key> of the namespace's versions bucket) and the
// health record (key <namespace>.<endpoint> of its health bucket). Each is one
// purge of the bucket's stream by subject; names are DNS labels, so the
// subjects match this endpoint's keys only. Nothing to purge is no error.
func purgeEndpointRecords(ctx context.Context, js jetstream.JetStream, namespace, name string) error {
	prefix := streams.EndpointKey(namespace, name)
	versions, health := streams.VersionsBucket(namespace), streams.HealthBucket(namespace)
	for _, p := range []struct{ bucket, subject string }{
		{versions, streams.KVSubject(versions, prefix+".>")},
		{health, streams.KVSubject(health, prefix)},
	} {
		s, err := js.Stream(ctx, streams.KVStream(p.bucket))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue // the namespace's buckets are gone, and its records with them
		}
		if err != nil {
			return fmt.Errorf("opening the stream of bucket %s: %w", p.bucket, err)
		}
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(p.subject)); err != nil {
			return fmt.Errorf("purging %s: %w", p.subject, err)
		}
	}
	return nil
}

// backlogObservation is the queue side of an endpoint's status.
type backlogObservation struct {
	// Backlog is events not yet delivered: not yet handed out (NumPending)
	// plus handed out and not acked (in flight or waiting to retry).
	Backlog int64
	// OldestPending is when the oldest of them was stored; nil when the
	// backlog is empty.
	OldestPending *time.Time
}

// observeBacklog reads the backlog from the consumer info and finds the
// oldest unacked event: every message at or below the ack floor is acked,
// so it is the first message after the floor that matches one of the
// consumer's filters (a next-by-subject get per filter, the minimum wins).
// With unordered delivery a later event may have been acked first; then
// the time is an upper bound of the lag, which errs on the side of warning.
func observeBacklog(ctx context.Context, js jetstream.JetStream, info *jetstream.ConsumerInfo) (backlogObservation, error) {
	obs := backlogObservation{Backlog: int64(info.NumPending) + int64(info.NumAckPending)}
	if obs.Backlog == 0 {
		return obs, nil
	}
	stream, err := js.Stream(ctx, info.Stream)
	if err != nil {
		return obs, fmt.Errorf("opening stream %s: %w", info.Stream, err)
	}
	filters := info.Config.FilterSubjects
	if info.Config.FilterSubject != "" {
		filters = append(slices.Clone(filters), info.Config.FilterSubject)
	}
	start := info.AckFloor.Stream + 1
	for _, f := range filters {
		m, err := stream.GetMsg(ctx, start, jetstream.WithGetMsgSubject(f))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return obs, fmt.Errorf("reading oldest pending event of consumer %s: %w", info.Name, err)
		}
		if t := m.Time; obs.OldestPending == nil || t.Before(*obs.OldestPending) {
			obs.OldestPending = &t
		}
	}
	return obs, nil
}

// ensureReplayConsumer creates the endpoint's consumer on its namespace's
// replay stream, or brings its ack wait back to the endpoint's timeout.
// A namespace whose streams predate replays gets its replay stream here.
func ensureReplayConsumer(ctx context.Context, js jetstream.JetStream, l streams.Limits, ep *v1.WebhookEndpoint) error {
	want := streams.ReplayConsumerConfig(ep.Namespace, ep.Name, &ep.Spec)
	stream := streams.ReplayStream(ep.Namespace)
	c, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if err := streams.EnsureNamespace(ctx, js, l, ep.Namespace); err != nil {
			return err
		}
		c, err = js.Consumer(ctx, stream, want.Durable)
	}
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return fmt.Errorf("reading replay consumer %s: %w", want.Durable, err)
	case c.CachedInfo().Config.AckWait == want.AckWait && c.CachedInfo().Config.FilterSubject == want.FilterSubject:
		return nil
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, stream, want); err != nil {
		return fmt.Errorf("ensuring replay consumer %s: %w", want.Durable, err)
	}
	return nil
}

// deleteReplayConsumer deletes the endpoint's replay consumer; one that is
// gone (or a namespace without a replay stream) is not an error.
func deleteReplayConsumer(ctx context.Context, js jetstream.JetStream, namespace, name string) error {
	err := js.DeleteConsumer(ctx, streams.ReplayStream(namespace), streams.ConsumerName(namespace, name))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("deleting replay consumer %s: %w", streams.ConsumerName(namespace, name), err)
	}
	return nil
}
