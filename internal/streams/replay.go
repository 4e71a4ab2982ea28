package streams

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// A namespace's replays go through a stream of their own, which only
// Herald writes: a tenant's producers publish to herald.events.<ns> and
// nothing else, so no producer can forge a replay (a replayed event is
// sent even when its version equals the one delivered, see the
// dispatcher). The controller copies each selected event to a subject of
// its own, once (a publish that expects the subject to be empty), and the
// dispatcher writes each one's outcome next to it.
const (
	ReplayStreamPrefix = "HERALD_REPLAY_"
	ReplayPrefix       = "herald.replay"
)

// Headers a replayed copy carries besides the original's own (Nats-*
// headers are the original publish's instructions and are left off).
const (
	// HeaderReplay names the WebhookReplay; HeaderReplayUID is its UID.
	HeaderReplay    = "Herald-Replay"
	HeaderReplayUID = "Herald-Replay-Uid"
	// HeaderReplayRate is the replay's events per second.
	HeaderReplayRate = "Herald-Replay-Rate"
	// The original's subject, stream sequence and Nats-Msg-Id (which
	// carries the event id).
	HeaderOriginalSubject = "Herald-Original-Subject"
	HeaderOriginalSeq     = "Herald-Original-Seq"
	HeaderOriginalMsgID   = "Herald-Original-Msg-Id"
)

// ReplayStream is the stream of one namespace's replays.
func ReplayStream(namespace string) string { return ReplayStreamPrefix + namespace }

// ReplaySubject is where a replay's copy of the event at stream sequence
// seq waits for the endpoint's dispatcher. Replays are named by UID, so a
// replay created again under an old name starts afresh.
func ReplaySubject(namespace, endpoint, uid string, seq uint64) string {
	return ReplayPrefix + "." + namespace + ".send." + endpoint + "." + uid + "." + itoa(seq)
}

// ReplaySubjects matches every copy of one replay (endpoint "*": of any).
func ReplaySubjects(namespace, endpoint, uid string) string {
	return ReplayPrefix + "." + namespace + ".send." + endpoint + "." + uid + ".>"
}

// ReplayOutcomeSubject is where the dispatcher records what became of a
// replay's copy of the event at seq; the last entry is its state.
func ReplayOutcomeSubject(namespace, uid string, seq uint64) string {
	return ReplayPrefix + "." + namespace + ".done." + uid + "." + itoa(seq)
}

// ReplayOutcomeSubjects matches every outcome of one replay.
func ReplayOutcomeSubjects(namespace, uid string) string {
	return ReplayPrefix + "." + namespace + ".done." + uid + ".>"
}

// ReplayOutcomePrefix starts the outcome subjects a namespace's
// dispatcher may write.
func ReplayOutcomePrefix(namespace string) string {
	return ReplayPrefix + "." + namespace + ".done"
}

// ReplayStreamConfig is the desired config of a namespace's replay
// stream. It keeps copies as long as the events stream keeps events, so
// an outcome and its copy outlive every replay that is still running.
func ReplayStreamConfig(l Limits, namespace string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        ReplayStream(namespace),
		Description: "Herald replays of namespace " + namespace + ": herald.replay." + namespace + ".send.<endpoint>.<replay uid>.<seq>, .done.<replay uid>.<seq>",
		Subjects:    []string{ReplayPrefix + "." + namespace + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
		MaxAge:      l.EventsMaxAge,
		MaxMsgSize:  int32(l.MaxBodyBytes + 2*HeaderAllowanceReplay),
		MaxBytes:    budget(l.ReplayMaxBytes),
		// One consumer per endpoint, as on the events stream.
		MaxConsumers: MaxEndpointsPerNamespace,
		// A full replay stream refuses the copy: the replay says so.
		Discard: jetstream.DiscardNew,
		// The dispatcher reads an outcome by its subject.
		AllowDirect: true,
	}
}

// HeaderAllowanceReplay is what a replayed copy's headers may add.
const HeaderAllowanceReplay = 4 << 10

// ReplayConsumerConfig is an endpoint's durable consumer on its
// namespace's replay stream: its copies only, with the events consumer's
// ack wait, so a replayed event is retried as a live one is.
func ReplayConsumerConfig(namespace, endpoint string, spec *v1.WebhookEndpointSpec) jetstream.ConsumerConfig {
	timeout := 10 * time.Second
	if spec.Timeout != nil && spec.Timeout.Duration > 0 {
		timeout = spec.Timeout.Duration
	}
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(namespace, endpoint),
		Description:   "Herald replays to WebhookEndpoint " + namespace + "/" + endpoint,
		FilterSubject: ReplayPrefix + "." + namespace + ".send." + endpoint + ".>",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait(timeout),
		MaxDeliver:    -1,
		MaxAckPending: retryHeadroom,
		MaxWaiting:    4,
		Metadata:      map[string]string{"herald.dev/endpoint": namespace + "/" + endpoint},
	}
}
