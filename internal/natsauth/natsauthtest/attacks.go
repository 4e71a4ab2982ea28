// Package natsauthtest lists what a credential of one namespace tries
// against another's part of NATS, for the specs that check NATS refuses
// each (internal/natsauth's with an in-process server, the e2e suite's in
// a cluster).
package natsauthtest

import (
	"regexp"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// Attack is one subscribe, publish or JetStream API request.
type Attack struct {
	Kind    string // "subscribe", "publish" or "request"
	Subject string
}

// Against lists the attacks on namespace victim, whose endpoint is named
// endpoint: read its events, dead letters, delivery log and records;
// publish into its events, log and dead letters; write its version and
// health keys; read, delete and pull its consumer; read, purge and delete
// its streams and buckets; list everything.
func Against(victim, endpoint string) []Attack {
	evts, logs, dead := events.StreamName(victim), streams.AttemptsStream(victim), streams.DeadLetterStream(victim)
	consumer := streams.ConsumerName(victim, endpoint)
	var out []Attack
	for _, s := range []string{
		events.NamespaceSubjects(victim), streams.DeadLetterPrefix + "." + victim + ".>", streams.AttemptsPrefix + "." + victim + ".>",
		streams.ReplayPrefix + "." + victim + ".>",
		streams.KVSubject(streams.VersionsBucket(victim), ">"), streams.KVSubject(streams.HealthBucket(victim), ">"),
		"_INBOX.>", natsauth.Inbox(victim, "") + ".>", ">",
	} {
		out = append(out, Attack{"subscribe", s})
	}
	for _, s := range []string{
		events.Subject(victim, "invoice.paid"), streams.AttemptSubject(victim, endpoint, "evt_1"), streams.DeadLetterSubject(victim, endpoint, "evt_1"),
		streams.KVSubject(streams.VersionsBucket(victim), victim+"."+endpoint+".k"), streams.KVSubject(streams.HealthBucket(victim), streams.EndpointKey(victim, endpoint)),
		streams.ReplaySubject(victim, endpoint, "uid", 1), streams.ReplayOutcomeSubject(victim, "uid", 1),
	} {
		out = append(out, Attack{"publish", s})
	}
	for _, s := range []string{
		"$JS.API.CONSUMER.INFO." + evts + "." + consumer, "$JS.API.CONSUMER.DELETE." + evts + "." + consumer,
		"$JS.API.CONSUMER.MSG.NEXT." + evts + "." + consumer, "$JS.API.CONSUMER.LIST." + evts,
		"$JS.API.CONSUMER.CREATE." + evts, "$JS.API.CONSUMER.CREATE." + evts + ".x." + events.NamespaceSubjects(victim),
		"$JS.API.STREAM.INFO." + evts, "$JS.API.STREAM.PURGE." + evts, "$JS.API.STREAM.DELETE." + evts,
		"$JS.API.DIRECT.GET." + logs, "$JS.API.STREAM.MSG.GET." + logs, "$JS.API.DIRECT.GET." + dead,
		"$JS.API.DIRECT.GET." + streams.KVStream(streams.VersionsBucket(victim)) + "." + streams.KVSubject(streams.VersionsBucket(victim), victim+"."+endpoint+".k"),
		"$JS.API.STREAM.INFO." + streams.KVStream(streams.VersionsBucket(victim)), "$JS.API.STREAM.INFO." + streams.KVStream(streams.HealthBucket(victim)),
		"$JS.API.STREAM.PURGE." + streams.KVStream(streams.VersionsBucket(victim)), "$JS.API.STREAM.PURGE." + streams.KVStream(streams.HealthBucket(victim)),
		"$JS.API.CONSUMER.MSG.NEXT." + streams.ReplayStream(victim) + "." + consumer,
		"$JS.API.DIRECT.GET." + streams.ReplayStream(victim) + "." + streams.ReplayOutcomeSubject(victim, "uid", 1),
		"$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.INFO",
	} {
		out = append(out, Attack{"request", s})
	}
	return out
}

// Try makes the attempt on nc. NATS refuses asynchronously (a
// permissions violation through the connection's error handler); what
// Try returns is only whether the attempt could be sent.
func (a Attack) Try(nc *nats.Conn) error {
	switch a.Kind {
	case "subscribe":
		if _, err := nc.Subscribe(a.Subject, func(*nats.Msg) {}); err != nil {
			return err
		}
		return nc.Flush()
	case "publish":
		return nc.Publish(a.Subject, []byte(`{}`))
	default:
		_, err := nc.Request(a.Subject, nil, 250*time.Millisecond)
		return err
	}
}

// Drain empties errs, so that the next violation read is the next
// attempt's.
func Drain(errs chan error) {
	for {
		select {
		case err := <-errs:
			_ = err // an earlier attempt's violation, already checked
		default:
			return
		}
	}
}

// Violation matches the error NATS reports for a refused attempt on
// subject, as a regular expression for the specs.
func Violation(subject string) string {
	return `(?i)permissions violation for (publish|subscription) to "` + regexp.QuoteMeta(subject) + `"`
}
