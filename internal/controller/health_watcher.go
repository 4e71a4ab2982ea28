package controller

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
)

// HealthWatcher turns changes of the dispatchers' health records into
// reconcile requests, so an endpoint's status follows its deliveries
// within seconds instead of waiting for the periodic resync. It coalesces:
// a record that keeps changing wakes its endpoint at most once per
// MinInterval, except when the endpoint starts or stops failing, which
// wakes it at once (that changes the Healthy condition).
//
// It is a manager Runnable and needs leader election, like the controller
// it feeds.
type HealthWatcher struct {
	JS          jetstream.JetStream
	MinInterval time.Duration
	// Namespaces limits the endpoints woken; empty means all.
	Namespaces []string

	ch chan event.TypedGenericEvent[*v1.WebhookEndpoint]
}

// NewHealthWatcher returns a watcher; pass Events() to the reconciler.
func NewHealthWatcher(js jetstream.JetStream, minInterval time.Duration, namespaces []string) *HealthWatcher {
	return &HealthWatcher{JS: js, MinInterval: minInterval, Namespaces: namespaces,
		ch: make(chan event.TypedGenericEvent[*v1.WebhookEndpoint], 1024)}
}

// Events is the channel the reconciler watches.
func (w *HealthWatcher) Events() <-chan event.TypedGenericEvent[*v1.WebhookEndpoint] { return w.ch }

type wakeState struct {
	at      time.Time
	failing bool
}

// Start watches the health bucket until ctx is done, re-opening the watch
// after NATS errors.
func (w *HealthWatcher) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("health-watcher")
	seen := map[string]wakeState{}
	for {
		if err := w.watch(ctx, seen); err != nil {
			log.Error(err, "watching health records; retrying in 5s")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
}

func (w *HealthWatcher) watch(ctx context.Context, seen map[string]wakeState) error {
	kv, err := w.JS.KeyValue(ctx, streams.HealthBucket)
	if err != nil {
		return err
	}
	watcher, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer func() { _ = watcher.Stop() }()
	// Records skipped by the coalescing rule are flushed on the next tick,
	// so the last change of a burst is never lost.
	pending := map[string]bool{}
	tick := time.NewTicker(w.MinInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			for key := range pending {
				if !w.wake(ctx, key) {
					return nil
				}
				st := seen[key]
				st.at = now
				seen[key] = st
			}
			clear(pending)
		case e, ok := <-watcher.Updates():
			if !ok {
				return nil
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			ns, _, ok := strings.Cut(e.Key(), ".")
			if !ok || !w.watches(ns) {
				continue
			}
			var h dispatcher.Health
			if json.Unmarshal(e.Value(), &h) != nil {
				continue
			}
			next := wakeState{at: time.Now(), failing: h.ConsecutiveFailures > 0}
			if !shouldWake(seen[e.Key()], next, w.MinInterval) {
				pending[e.Key()] = true
				continue
			}
			seen[e.Key()] = next
			delete(pending, e.Key())
			if !w.wake(ctx, e.Key()) {
				return nil
			}
		}
	}
}

// wake enqueues the endpoint of a health key; false when ctx is done.
func (w *HealthWatcher) wake(ctx context.Context, key string) bool {
	ns, name, _ := strings.Cut(key, ".")
	select {
	case w.ch <- event.TypedGenericEvent[*v1.WebhookEndpoint]{Object: &v1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}}:
		return true
	case <-ctx.Done():
		return false
	}
}

// shouldWake is the coalescing rule: wake on a change of failing state,
// otherwise at most once per interval.
func shouldWake(prev, next wakeState, interval time.Duration) bool {
	return prev.at.IsZero() || prev.failing != next.failing || next.at.Sub(prev.at) >= interval
}

func (w *HealthWatcher) watches(ns string) bool {
	if len(w.Namespaces) == 0 {
		return true
	}
	for _, n := range w.Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}
