// Package natsauth gives every NATS client of Herald an identity from
// Kubernetes. NATS runs in operator mode with auth callout: the manager
// connects as the user of Herald's account that serves the callout (its
// keys are the one static secret, keys.go), and every other client
// presents a ServiceAccount token as its NATS auth token. The manager's
// callout checks the token with a TokenReview, decides what the
// ServiceAccount may do (the namespace's dispatcher, or a producer or
// reader that RBAC allows), and answers with a user of the namespace's
// own account (accounts.go) whose permissions are exactly that
// namespace's part of NATS. The permissions are this file; the callout is
// callout.go.
package natsauth

import (
	"fmt"
	"strings"

	"github.com/nats-io/jwt/v2"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// InboxPrefix starts every tenant client's reply subjects. Replies carry
// events (a pull request's messages go to the puller's inbox) and the
// delivery log (a reader's), so each ServiceAccount gets an inbox space
// of its own and may subscribe to nothing else: a producer cannot read
// what its namespace's dispatcher pulls. `_INBOX.>` is the manager's.
const InboxPrefix = "_HERALD_INBOX"

// Inbox is the inbox prefix of a ServiceAccount's clients
// (nats.CustomInboxPrefix); with no ServiceAccount, the namespace's whole
// inbox space. A ServiceAccount name may hold dots, which would make
// "a" a prefix of "a.b"; they become underscores, which no name holds.
func Inbox(namespace, serviceAccount string) string {
	if serviceAccount == "" {
		return InboxPrefix + "." + namespace
	}
	return InboxPrefix + "." + namespace + "." + strings.ReplaceAll(serviceAccount, ".", "_")
}

// TokenInbox is the inbox prefix for a client that authenticates with a
// ServiceAccount token of namespace: Inbox of the token's ServiceAccount,
// read from the token without verifying it (the callout verifies; a
// client that guesses wrong is only refused its subscriptions).
func TokenInbox(namespace, token string) string {
	sub := tokenClaims(token).Sub
	ns, sa, err := serviceaccount.SplitUsername(sub)
	if err != nil || ns != namespace {
		return Inbox(namespace, "")
	}
	return Inbox(namespace, sa)
}

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
	// RoleClusterReader reads every namespace's streams, as a user of
	// Herald's own account (ReaderPermissions): the delivery API server.
	RoleClusterReader Role = "cluster-reader"
)

// Permissions are what the roles allow in one namespace's part of NATS.
// Everything else is denied: NATS permissions allow only what is listed.
// JetStream API calls are allowed by subject, so each names a stream or
// bucket of the namespace.
func Permissions(namespace, serviceAccount string, roles ...Role) jwt.Permissions {
	var p jwt.Permissions
	if serviceAccount != "" {
		p.Sub.Allow.Add(Inbox(namespace, serviceAccount) + ".>")
	}
	evts := events.StreamName(namespace)
	logs := streams.AttemptsStream(namespace)
	dead := streams.DeadLetterStream(namespace)
	replay := streams.ReplayStream(namespace)
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
				// Replays: pull and ack the endpoints' replay consumers,
				// read and write the outcomes (never the copies: only
				// the operator publishes those), and mark a dead letter
				// a replay delivered.
				api("STREAM.INFO."+replay), api("CONSUMER.INFO."+replay+".*"),
				api("CONSUMER.MSG.NEXT."+replay+".*"), "$JS.ACK."+replay+".>", "$JS.ACK.*.*."+replay+".>",
				api("DIRECT.GET."+replay)+"."+streams.ReplayOutcomePrefix(namespace)+".>",
				streams.ReplayOutcomePrefix(namespace)+".>",
				api("DIRECT.GET."+dead)+"."+streams.DeadLetterPrefix+"."+namespace+".>",
			)
		}
	}
	return p
}

// ReaderInboxPrefix starts the reply subjects of the users in Herald's
// own account that read every namespace (the delivery API server), apart
// from the manager's _INBOX.
const ReaderInboxPrefix = "_HERALD_READER"

// ReaderInbox is the inbox prefix of a cluster-wide reader's clients.
func ReaderInbox(namespace, serviceAccount string) string {
	return ReaderInboxPrefix + "." + namespace + "_" + strings.ReplaceAll(serviceAccount, ".", "_")
}

// TokenReaderInbox is ReaderInbox of the ServiceAccount a token is of,
// read without verifying it, and that ServiceAccount's namespace.
func TokenReaderInbox(token string) (inbox, namespace string, err error) {
	ns, sa, err := serviceaccount.SplitUsername(tokenClaims(token).Sub)
	if err != nil {
		return "", "", fmt.Errorf("the token is not a ServiceAccount token: %w", err)
	}
	return ReaderInbox(ns, sa), ns, nil
}

// ReaderPermissions are a cluster-wide reader's, a user of Herald's own
// account, where every namespace's streams live: stream and consumer
// info, direct gets, and short-lived consumers that ack nothing to walk a
// stream. It publishes to no stream and acks nothing itself. NATS
// permissions cannot look inside a consumer's config, though: a consumer
// it creates could name a deliver subject (an ack subject, a log
// subject) that the server then publishes to, and it may delete
// consumers. So this identity is as trusted as Herald's other own
// components: it is for the delivery API server's ServiceAccount in
// Herald's namespace, never for tenants.
func ReaderPermissions(inbox string) jwt.Permissions {
	var p jwt.Permissions
	p.Sub.Allow.Add(inbox + ".>")
	p.Pub.Allow.Add(
		api("INFO"), api("STREAM.NAMES"), api("STREAM.INFO.*"),
		api("CONSUMER.LIST.*"), api("CONSUMER.INFO.*.*"),
		api("CONSUMER.CREATE.*.>"), api("CONSUMER.DELETE.*.*"), api("CONSUMER.MSG.NEXT.*.*"),
		api("DIRECT.GET.*"), api("DIRECT.GET.*.>"), api("STREAM.MSG.GET.*"),
	)
	return p
}

func api(s string) string { return "$JS.API." + s }
