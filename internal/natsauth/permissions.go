// Package natsauth gives every NATS client of Herald an identity from
// Kubernetes. NATS runs with auth callout: the manager connects with its
// own nkey (the one static credential), and every other client presents a
// ServiceAccount token as its NATS auth token. The manager's callout
// checks the token with a TokenReview, decides what the ServiceAccount may
// do (the namespace's dispatcher, or a producer or reader that RBAC
// allows), and answers with a user JWT whose permissions are exactly that
// namespace's part of NATS. The permissions are this file; the callout is
// callout.go.
package natsauth

import (
	"github.com/nats-io/jwt/v2"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// InboxPrefix starts every tenant client's reply subjects. Replies carry
// events (a pull request's messages go to the puller's inbox), so each
// namespace gets its own inbox space and may subscribe to nothing else;
// `_INBOX.>` is the manager's.
const InboxPrefix = "_HERALD_INBOX"

// Inbox is the inbox prefix of a namespace's clients
// (nats.CustomInboxPrefix).
func Inbox(namespace string) string { return InboxPrefix + "." + namespace }

// Role is what a ServiceAccount may do in its namespace's part of NATS.
type Role string

const (
	// RoleDispatcher is the namespace's dispatcher: pull and ack its
	// endpoints' consumers, write its delivery log, dead letters, version
	// and health records, and read them back.
	RoleDispatcher Role = "dispatcher"
	// RoleProducer publishes the namespace's events.
	RoleProducer Role = "producer"
	// RoleReader reads the namespace's delivery log, dead letters, health
	// records and consumers (herald status).
	RoleReader Role = "reader"
)

// Permissions are what the roles allow in one namespace's part of NATS.
// Everything else is denied: NATS permissions allow only what is listed.
// JetStream API calls are allowed by subject, so each names a stream or
// bucket of the namespace.
func Permissions(namespace string, roles ...Role) jwt.Permissions {
	var p jwt.Permissions
	p.Sub.Allow.Add(Inbox(namespace) + ".>")
	evts := events.StreamName(namespace)
	logs := streams.AttemptsStream(namespace)
	dead := streams.DeadLetterStream(namespace)
	versions, health := streams.VersionsBucket(namespace), streams.HealthBucket(namespace)
	kvKeys := func(bucket string) string { return streams.KVSubject(bucket, namespace+".>") }
	directKeys := func(bucket string) string {
		return api("DIRECT.GET."+streams.KVStream(bucket)) + "." + kvKeys(bucket)
	}
	for _, r := range roles {
		switch r {
		case RoleProducer:
			p.Pub.Allow.Add(events.NamespaceSubjects(namespace))
		case RoleReader, RoleDispatcher:
			p.Pub.Allow.Add(
				api("STREAM.INFO."+evts), api("CONSUMER.LIST."+evts), api("CONSUMER.INFO."+evts+".*"),
				api("STREAM.INFO."+logs), api("DIRECT.GET."+logs), api("STREAM.MSG.GET."+logs),
				api("STREAM.INFO."+dead), api("DIRECT.GET."+dead), api("STREAM.MSG.GET."+dead),
				api("STREAM.INFO."+streams.KVStream(health)), directKeys(health),
			)
			if r != RoleDispatcher {
				continue
			}
			p.Pub.Allow.Add(
				// Pull, then ack, nak or extend: the ack subjects are the
				// stream's (the consumer is named in the next token).
				api("CONSUMER.MSG.NEXT."+evts+".*"), "$JS.ACK."+evts+".>",
				// The newer ack format puts a domain and an account
				// hash before the stream.
				"$JS.ACK.*.*."+evts+".>",
				streams.AttemptsPrefix+"."+namespace+".>",
				streams.DeadLetterPrefix+"."+namespace+".>",
				api("STREAM.INFO."+streams.KVStream(versions)), directKeys(versions),
				kvKeys(versions), kvKeys(health),
			)
		}
	}
	return p
}

func api(s string) string { return "$JS.API." + s }
