package controller

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
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

// Rescan is how often the watcher looks for namespaces' new health
// buckets. A namespace's first endpoint makes its bucket; until the next
// scan its status follows the periodic resync only.
const Rescan = 5 * time.Second

// Start watches every namespace's health bucket until ctx is done: it
// lists the buckets every Rescan and watches each in a goroutine of its
// own, which ends when its bucket goes (the namespace's last endpoint was
// deleted) or NATS fails it, and is started again by a later scan.
func (w *HealthWatcher) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("health-watcher")
	var mu sync.Mutex
	watching := map[string]bool{}
	for {
		names := w.JS.StreamNames(ctx)
		for name := range names.Name() {
			bucket, ok := strings.CutPrefix(name, streams.KVStream(streams.HealthBucketPrefix))
			if !ok || !w.watches(bucket) {
				continue
			}
			mu.Lock()
			if !watching[bucket] {
				watching[bucket] = true
				go func(ns string) {
					if err := w.watch(ctx, ns); err != nil && ctx.Err() == nil {
						log.V(1).Info("health watch ended", "namespace", ns, "error", err.Error())
					}
					mu.Lock()
					delete(watching, ns)
					mu.Unlock()
				}(bucket)
			}
			mu.Unlock()
		}
		if err := names.Err(); err != nil && ctx.Err() == nil {
			log.Error(err, "listing the health buckets; retrying")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(Rescan):
		}
	}
}

// watch follows one namespace's health bucket.
func (w *HealthWatcher) watch(ctx context.Context, namespace string) error {
	kv, err := w.JS.KeyValue(ctx, streams.HealthBucket(namespace))
	if err != nil {
		return err
	}
	watcher, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer func() { _ = watcher.Stop() }()
	seen := map[string]wakeState{}
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
			if ns, _, ok := strings.Cut(e.Key(), "."); !ok || ns != namespace {
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
