package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/pkg/events"
)

// busyStats is what the status of busy endpoints costs and how fresh it is.
type busyStats struct {
	writesPerSec   float64
	deliveries     float64 // per second, at the receiver
	published      int64
	failed         int64
	ages           []time.Duration // now - status.lastSuccessTime, per endpoint
	neverDelivered int
	secs           float64
	// logLost and logWaits are the manager's counters at the end.
	logLost, logWaits float64
}

// busy has every endpoint deliver an event every `every`: each namespace
// gets a producer of its own (a ServiceAccount bound to the producer role,
// connecting through the auth callout as a real producer would), which
// publishes one event a period that all of the namespace's endpoints take.
// After a warm-up of two periods it measures, over length, the status
// writes and the receiver's rate, and then how old each endpoint's
// lastSuccessTime is.
func busy(ctx context.Context, c client.Client, natsURL string, namespaces int, every, length time.Duration, manager, natsPID int, received *atomic.Int64) (busyStats, error) {
	var st busyStats
	pubs := make([]*events.Publisher, namespaces)
	conns := make([]*nats.Conn, namespaces)
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	if err := forEach(ctx, namespaces, func(i int) error {
		ns := fmt.Sprintf("tenant-%04d", i)
		nc, js, err := producer(ctx, c, natsURL, ns)
		if err != nil {
			return fmt.Errorf("producer of %s: %w", ns, err)
		}
		conns[i] = nc
		pubs[i], err = events.NewPublisher(js)
		return err
	}); err != nil {
		return st, err
	}

	pctx, stopPublishing := context.WithCancel(ctx)
	defer stopPublishing()
	var published, failed atomic.Int64
	var wg sync.WaitGroup
	for i, pub := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := fmt.Sprintf("tenant-%04d", i)
			// Spread the namespaces over the period.
			if !sleep(pctx, every*time.Duration(i)/time.Duration(namespaces)) {
				return
			}
			t := time.NewTicker(every)
			defer t.Stop()
			for n := 0; ; n++ {
				_, err := pub.Publish(pctx, events.Event{
					ID: fmt.Sprintf("tick_%d", n), Namespace: ns, Type: "bench.tick",
					Key: "k" + fmt.Sprint(n%4), Data: []byte(`{"n":1}`),
				})
				if err != nil && pctx.Err() == nil {
					failed.Add(1)
				} else if err == nil {
					published.Add(1)
				}
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	defer wg.Wait()

	if !sleep(ctx, 2*every) {
		return st, ctx.Err()
	}
	start, err := sample(manager, natsPID)
	if err != nil {
		return st, err
	}
	got := received.Load()
	if !sleep(ctx, length) {
		return st, ctx.Err()
	}
	end, err := sample(manager, natsPID)
	if err != nil {
		return st, err
	}
	st.secs = end.at.Sub(start.at).Seconds()
	st.writesPerSec = (end.statusWrites - start.statusWrites) / st.secs
	st.deliveries = float64(received.Load()-got) / st.secs
	st.logLost, st.logWaits = end.logLost, end.logWaits

	var eps v1.WebhookEndpointList
	if err := c.List(ctx, &eps); err != nil {
		return st, err
	}
	now := time.Now()
	for _, ep := range eps.Items {
		if ep.Status.LastSuccessTime == nil {
			st.neverDelivered++
			continue
		}
		st.ages = append(st.ages, now.Sub(ep.Status.LastSuccessTime.Time))
	}
	slices.Sort(st.ages)
	stopPublishing()
	st.published, st.failed = published.Load(), failed.Load()
	return st, nil
}

func (st busyStats) age(q float64) time.Duration {
	if len(st.ages) == 0 {
		return 0
	}
	return st.ages[min(len(st.ages)-1, int(q*float64(len(st.ages))))].Round(time.Second)
}

// producer makes namespace's producer identity and connects as it.
func producer(ctx context.Context, c client.Client, natsURL, ns string) (*nats.Conn, jetstream.JetStream, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bench-producer", Namespace: ns}}
	if err := c.Create(ctx, sa); err != nil {
		return nil, nil, err
	}
	// make dev installs the shipped producer ClusterRole under its file's
	// name.
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-producer", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "producer"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: ns}},
	}
	if err := c.Create(ctx, rb); err != nil {
		return nil, nil, err
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{natsauth.DefaultAudience}, ExpirationSeconds: ptr.To(int64(3600))}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		return nil, nil, err
	}
	tok := tr.Status.Token
	nc, err := nats.Connect(natsURL, nats.Token(tok), nats.CustomInboxPrefix(natsauth.TokenInbox(ns, tok)))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// forEach runs fn for 0..n-1, 16 at a time, and returns the first error.
func forEach(ctx context.Context, n int, fn func(int) error) error {
	work := make(chan int)
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
