package natsauth_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
	"github.com/herald-dev/herald/pkg/events"
)

// BenchmarkAccountBoundary measures what a namespace's own account costs
// the hot path: one event published, pulled and acked, by a client in
// Herald's account (the manager, an in-process dispatcher) and by one in
// the namespace's account, whose every publish, pull and ack crosses a
// service import. The user is signed directly with the namespace's key,
// as the callout would, so the callout is not in the measurement.
//
//	go test ./internal/natsauth -run '^$' -bench AccountBoundary -benchtime 20000x -count 3
func BenchmarkAccountBoundary(b *testing.B) {
	ctx := context.Background()
	keys, srv, admin, sys := benchServer(b)
	const ns = "bench"
	if err := (&natsauth.Accounts{Keys: keys, SYS: sys}).Push(ctx, ns); err != nil {
		b.Fatal(err)
	}
	adminJS, err := jetstream.New(admin)
	if err != nil {
		b.Fatal(err)
	}
	if err := streams.EnsureNamespace(ctx, adminJS, streams.DefaultLimits(), ns); err != nil {
		b.Fatal(err)
	}
	tenant, err := nats.Connect(srv.ClientURL(), tenantUser(b, keys, ns), nats.CustomInboxPrefix(natsauth.Inbox(ns, "bench")))
	if err != nil {
		b.Fatal(err)
	}
	defer tenant.Close()

	for i, c := range []struct {
		name string
		nc   *nats.Conn
	}{{"account=HERALD", admin}, {"account=namespace", tenant}} {
		b.Run(c.name, func(b *testing.B) {
			name := fmt.Sprintf("bench%d", i)
			if _, err := adminJS.CreateOrUpdateConsumer(ctx, events.StreamName(ns), jetstream.ConsumerConfig{
				Durable: streams.ConsumerName(ns, name), FilterSubject: events.NamespaceSubjects(ns), AckPolicy: jetstream.AckExplicitPolicy,
				DeliverPolicy: jetstream.DeliverNewPolicy, MaxAckPending: 10000,
			}); err != nil {
				b.Fatal(err)
			}
			js, err := jetstream.New(c.nc)
			if err != nil {
				b.Fatal(err)
			}
			cons, err := js.Consumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, name))
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				if _, err := js.PublishAsync(events.Subject(ns, "bench"), []byte(`{"n":1}`)); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("publishes not confirmed")
			}
			for got := 0; got < b.N; {
				batch, err := cons.Fetch(min(100, b.N-got), jetstream.FetchMaxWait(5*time.Second))
				if err != nil {
					b.Fatal(err)
				}
				for m := range batch.Messages() {
					if err := m.Ack(); err != nil {
						b.Fatal(err)
					}
					got++
				}
				if err := batch.Error(); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.nc.Flush(); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			_ = adminJS.DeleteConsumer(ctx, events.StreamName(ns), streams.ConsumerName(ns, name))
		})
	}
}

// benchServer is a nats-server in operator mode with Herald's
// configuration, the manager's connection and a system-account one.
func benchServer(b *testing.B) (natsauth.Keys, *natsserver.Server, *nats.Conn, *nats.Conn) {
	keys, err := natsauth.NewKeys()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	conf, err := keys.ServerConfig(filepath.Join(dir, "accounts"))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := testenv.NATSConfig(dir, conf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	admin, err := nats.Connect(srv.ClientURL(), keys.ManagerOption())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(admin.Close)
	sysOpt, err := keys.SystemOption()
	if err != nil {
		b.Fatal(err)
	}
	sys, err := nats.Connect(srv.ClientURL(), sysOpt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(sys.Close)
	return keys, srv, admin, sys
}

// BenchmarkNamespaceAccountPush measures signing and pushing one new
// namespace's account, which the callout does once per namespace and
// server start, and then connecting a user into it.
//
//	go test ./internal/natsauth -run '^$' -bench NamespaceAccountPush -benchtime 1000x
func BenchmarkNamespaceAccountPush(b *testing.B) {
	keys, srv, _, sys := benchServer(b)
	accounts := &natsauth.Accounts{Keys: keys, SYS: sys}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		if err := accounts.Push(context.Background(), ns); err != nil {
			b.Fatal(err)
		}
		nc, err := nats.Connect(srv.ClientURL(), tenantUser(b, keys, ns))
		if err != nil {
			b.Fatal(err)
		}
		nc.Close()
	}
}

// tenantUser is a user of namespace ns's account with the dispatcher's
// and a producer's permissions, signed as the callout signs them.
func tenantUser(b *testing.B, keys natsauth.Keys, ns string) nats.Option {
	acc, err := keys.NamespaceKey(ns)
	if err != nil {
		b.Fatal(err)
	}
	u, err := nkeys.CreateUser()
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := u.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Permissions = natsauth.Permissions(ns, "bench", natsauth.RoleDispatcher, natsauth.RoleProducer)
	signed, err := uc.Encode(acc)
	if err != nil {
		b.Fatal(err)
	}
	return nats.UserJWT(func() (string, error) { return signed, nil }, u.Sign)
}
