package controller

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/streams"
)

// NamespaceStreams keeps every namespace's streams in shape: those of a
// namespace with endpoints exist with the configured limits (a NATS that
// lost its storage gets them back, drifted limits are repaired), and
// those of a namespace without endpoints go once they are empty, that is
// once its events, log entries and dead letters have aged out. The
// endpoint reconciler creates a namespace's streams at once for its first
// endpoint; this pass is the slow repair behind it.
type NamespaceStreams struct {
	// Client lists the endpoints; the manager gives it the API server
	// itself (uncached), so a pass never works from a list older than a
	// new endpoint's streams.
	Client client.Reader
	JS     jetstream.JetStream
	Limits streams.Limits
	// Every is how often the pass runs.
	Every time.Duration
	// Namespaces, when set, are the only ones whose idle streams this
	// manager removes (--watch-namespaces): another Herald on the same
	// NATS may own the rest.
	Namespaces []string
}

// Start runs the pass every s.Every until ctx ends.
func (s *NamespaceStreams) Start(ctx context.Context) error {
	t := time.NewTicker(s.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, s.Every)
			if err := s.Pass(cctx); err != nil {
				ctrl.Log.WithName("streams").Error(err, "ensuring Herald's streams and buckets")
			}
			cancel()
		}
	}
}

// NeedLeaderElection is true: only the leader creates and deletes.
func (s *NamespaceStreams) NeedLeaderElection() bool { return true }

// Pass runs once over each namespace's streams and buckets. It goes on
// past one namespace's error, so one broken stream does not hold up the
// rest, and returns the first.
func (s *NamespaceStreams) Pass(ctx context.Context) error {
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	var eps v1.WebhookEndpointList
	if err := s.Client.List(ctx, &eps); err != nil {
		keep(err)
		return first
	}
	mine := func(ns string) bool { return len(s.Namespaces) == 0 || slices.Contains(s.Namespaces, ns) }
	used := map[string]bool{}
	for _, ep := range eps.Items {
		if mine(ep.Namespace) && !used[ep.Namespace] {
			used[ep.Namespace] = true
			if err := streams.EnsureNamespace(ctx, s.JS, s.Limits, ep.Namespace); err != nil {
				keep(err)
			}
		}
	}
	idle := map[string]bool{}
	names := s.JS.StreamNames(ctx)
	for name := range names.Name() {
		if ns, ok := streams.Namespace(name); ok && !used[ns] && mine(ns) {
			idle[ns] = true
		}
	}
	if err := names.Err(); err != nil {
		keep(err)
		return first
	}
	for ns := range idle {
		if _, err := streams.RemoveEmpty(ctx, s.JS, ns); err != nil {
			keep(err)
		}
	}
	return first
}
