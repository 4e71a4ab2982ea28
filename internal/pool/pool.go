// Package pool runs the dispatchers of many namespaces in one process:
// Herald's shared dispatch mode. Each namespace keeps what makes it a
// tenant: a NATS connection of its own, as its own dispatcher identity (so
// NATS confines it to the namespace's subjects exactly as it confines a
// dedicated dispatcher pod), an egress guard of its own, and a Dispatcher
// of its own, which a hostile event or a closed connection in another
// namespace cannot stop. What the namespaces share is the process: one
// Go runtime, one Kubernetes cache and one version-cache budget.
package pool

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/dispatcher"
)

// Connect opens a NATS connection that acts for namespace, as the
// namespace's dispatcher identity. It should not wait for the server
// (nats.RetryOnFailedConnect). closed is to be called when nats.go closes
// the connection for good, and not after the pool's own Close
// (nats.NoCallbacksAfterClientClose); the pool then builds the namespace a
// new one.
type Connect func(namespace string, closed func()) (*nats.Conn, error)

// NewDispatcher builds the Dispatcher of one namespace on js.
type NewDispatcher func(ctx context.Context, namespace string, js jetstream.JetStream) (*dispatcher.Dispatcher, error)

// retryStart is how long a namespace waits before it tries again to open
// what its Dispatcher needs (the operator creates its buckets with its
// first endpoint, so a pool may well be first).
const retryStart = 5 * time.Second

// Pool is a controller.Dispatch over many namespaces: an endpoint's
// namespace gets its connection and Dispatcher with its first endpoint,
// and gives them up with its last.
type Pool struct {
	connect       Connect
	newDispatcher NewDispatcher
	log           logr.Logger

	// base outlives every tenant; Run cancels it.
	base   context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	tenants map[string]*tenant
	// stopping is a namespace's last tenant while it stops: a namespace
	// that gets an endpoint again meanwhile starts after it.
	stopping map[string]*tenant
	wg       sync.WaitGroup
}

// tenant is one namespace's part of the pool.
type tenant struct {
	namespace string
	ctx       context.Context
	stop      context.CancelFunc
	// done closes once the Dispatcher has stopped and handed back what it
	// held; a successor runs only after it, so two Dispatchers never pull
	// one consumer (per-key order).
	done chan struct{}
	// Under Pool.mu. d is nil until the namespace's start succeeded;
	// endpoints are what it is to deliver, handed over when it exists.
	d         *dispatcher.Dispatcher
	endpoints map[string]dispatcher.Endpoint
}

// New returns a Pool; nothing connects until an endpoint is upserted.
func New(connect Connect, newDispatcher NewDispatcher, log logr.Logger) *Pool {
	base, cancel := context.WithCancel(context.Background())
	return &Pool{connect: connect, newDispatcher: newDispatcher, log: log,
		base: base, cancel: cancel, tenants: map[string]*tenant{}, stopping: map[string]*tenant{}}
}

// Upsert hands ep to its namespace's Dispatcher, starting the namespace
// first if this is its first endpoint. It never waits for NATS: a
// namespace connects in the background, one namespace's slow or refused
// connect delaying no other.
func (p *Pool) Upsert(ep dispatcher.Endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.tenants[ep.Namespace]
	if t == nil {
		t = p.startLocked(ep.Namespace, p.stopping[ep.Namespace])
	}
	t.endpoints[ep.Name] = ep
	if t.d != nil {
		t.d.Upsert(ep)
	}
}

// Remove stops an endpoint's deliveries; with the namespace's last
// endpoint, its Dispatcher stops and its connection closes.
func (p *Pool) Remove(namespace, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.tenants[namespace]
	if t == nil {
		return
	}
	delete(t.endpoints, name)
	if t.d != nil {
		t.d.Remove(namespace, name)
	}
	if len(t.endpoints) == 0 {
		delete(p.tenants, namespace)
		p.stopping[namespace] = t
		t.stop()
	}
}

// Namespaces are the namespaces whose Dispatcher runs now, sorted.
func (p *Pool) Namespaces() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for ns, t := range p.tenants {
		if t.d != nil {
			out = append(out, ns)
		}
	}
	slices.Sort(out)
	return out
}

// Run blocks until ctx ends, then stops every namespace's Dispatcher and
// waits until each has handed back what it held.
func (p *Pool) Run(ctx context.Context) error {
	<-ctx.Done()
	p.cancel()
	p.wg.Wait()
	return nil
}

// startLocked makes namespace a tenant whose connection and Dispatcher
// start in the background, once prev (its predecessor, or nil) has
// stopped.
func (p *Pool) startLocked(namespace string, prev *tenant) *tenant {
	t := &tenant{namespace: namespace, done: make(chan struct{}), endpoints: map[string]dispatcher.Endpoint{}}
	t.ctx, t.stop = context.WithCancel(p.base)
	p.tenants[namespace] = t
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.stopped(t)
		if prev != nil {
			<-prev.done
		}
		p.run(t)
	}()
	return t
}

// run connects a tenant, opens its Dispatcher (retrying until both work
// or the tenant stops), hands it the endpoints and runs it.
func (p *Pool) run(t *tenant) {
	log := p.log.WithValues("namespace", t.namespace)
	var nc *nats.Conn
	for {
		d, conn, err := p.open(t)
		if err == nil {
			p.mu.Lock()
			t.d, nc = d, conn
			for _, ep := range t.endpoints {
				d.Upsert(ep)
			}
			p.mu.Unlock()
			break
		}
		log.Error(err, "starting a namespace's dispatcher; retrying", "after", retryStart)
		select {
		case <-t.ctx.Done():
			return
		case <-time.After(retryStart):
		}
	}
	defer nc.Close()
	if err := t.d.Run(t.ctx); err != nil {
		log.Error(err, "running a namespace's dispatcher")
	}
}

// open connects as the namespace's dispatcher and opens its Dispatcher.
func (p *Pool) open(t *tenant) (*dispatcher.Dispatcher, *nats.Conn, error) {
	nc, err := p.connect(t.namespace, func() { p.replace(t) })
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	js, err := jetstream.New(nc)
	if err == nil {
		var d *dispatcher.Dispatcher
		if d, err = p.newDispatcher(t.ctx, t.namespace, js); err == nil {
			return d, nc, nil
		}
	}
	nc.Close()
	return nil, nil, fmt.Errorf("opening the dispatcher: %w", err)
}

// stopped lets a tenant's successor run.
func (p *Pool) stopped(t *tenant) {
	close(t.done)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping[t.namespace] == t {
		delete(p.stopping, t.namespace)
	}
}

// replace gives a namespace whose connection nats.go closed for good (a
// server error it does not recover from) a new connection and Dispatcher
// with the same endpoints, once the old one has stopped. A dedicated
// dispatcher exits for the kubelet to restart it; in the pool that would
// stop every namespace for one namespace's trouble.
func (p *Pool) replace(old *tenant) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old.stop()
	if p.tenants[old.namespace] != old || p.base.Err() != nil {
		return
	}
	p.log.Info("NATS closed a namespace's connection for good; reconnecting it", "namespace", old.namespace)
	t := p.startLocked(old.namespace, old)
	maps.Copy(t.endpoints, old.endpoints)
}
