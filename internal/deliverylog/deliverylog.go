// Package deliverylog reads what the dispatchers wrote, the delivery log
// and the dead letters, together with what is still waiting in the events
// stream, and answers in the delivery API's types. It only reads: the
// dispatcher is the log's one writer, and the API server (internal/
// apiserver) is this package's one caller.
package deliverylog

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// DefaultMaxPending is how many events waiting in a namespace's stream
// one read looks at to show as Queued or Sending: the oldest ones, which
// are the ones that will go first. The endpoint's status counts the whole
// backlog.
const DefaultMaxPending = 10_000

// Reader reads from Herald's NATS. It holds no state between reads, so
// any number of API server replicas answer alike.
type Reader struct {
	JS jetstream.JetStream
	// MaxPending caps the pending events one read looks at; 0 means
	// DefaultMaxPending.
	MaxPending int
}

// ErrInvalidSelector is wrapped when a selector value cannot name an
// event or an endpoint. The values become NATS subject tokens, so one
// holding a wildcard or a dot must never reach a filter.
var ErrInvalidSelector = errors.New("invalid selector")

// Selector narrows a read to what NATS filters by subject; other fields
// are filtered by the caller.
type Selector struct {
	EventID, Endpoint string
	// Phase, when set, is the one phase wanted: the log entries of other
	// phases are dropped before they are decoded, and the walk over the
	// stream's pending range (Queued, Sending) is left out unless it is
	// one of those.
	Phase v1.Phase
	// LogOnly leaves out the events not tried yet, whatever the phase.
	LogOnly bool
}

// pending reports whether the selection wants the events not tried yet.
func (s Selector) pending() bool {
	return !s.LogOnly && (s.Phase == "" || s.Phase == v1.PhaseQueued || s.Phase == v1.PhaseSending)
}

// outcomes are the log's outcomes by the phase they show as, and their
// JSON, which an entry of that phase must hold.
var outcomes = map[v1.Phase][]byte{
	v1.PhaseSent:       []byte(`"outcome":"` + dispatcher.OutcomeDelivered + `"`),
	v1.PhaseRetrying:   []byte(`"outcome":"` + dispatcher.OutcomeRetrying + `"`),
	v1.PhaseFailed:     []byte(`"outcome":"` + dispatcher.OutcomeDead + `"`),
	v1.PhaseSuperseded: []byte(`"outcome":"` + dispatcher.OutcomeSuperseded + `"`),
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Check refuses selector values that are not an event id or an endpoint
// name.
func (s Selector) Check() error {
	if s.EventID != "" {
		if err := events.CheckID(s.EventID); err != nil {
			return fmt.Errorf("%w: eventID: %w", ErrInvalidSelector, err)
		}
	}
	if s.Endpoint != "" && !dnsLabel.MatchString(s.Endpoint) {
		return fmt.Errorf("%w: endpoint %q is not a WebhookEndpoint name", ErrInvalidSelector, clip(s.Endpoint))
	}
	return nil
}

func orAny(s string) string { return cmp.Or(s, "*") }

// Namespaces are the namespaces that have a delivery log.
func (r *Reader) Namespaces(ctx context.Context) ([]string, error) {
	var out []string
	names := r.JS.StreamNames(ctx)
	for n := range names.Name() {
		if ns, ok := strings.CutPrefix(n, streams.AttemptsStreamPrefix); ok && ns != "" {
			out = append(out, ns)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("listing streams: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

// Deliveries calls each with the latest state of every delivery of a
// namespace that sel selects, in no order, and keeps none of them: the
// caller keeps what it needs (a page), so memory follows the page, not
// the log. The log gives one entry per event and endpoint (its last); the
// events not tried yet follow from the stream.
func (r *Reader) Deliveries(ctx context.Context, namespace string, sel Selector, each func(*v1.WebhookDelivery)) error {
	if err := sel.Check(); err != nil {
		return err
	}
	filter := streams.AttemptsPrefix + "." + namespace + ".>"
	if sel.EventID != "" || sel.Endpoint != "" {
		filter = streams.AttemptSubject(namespace, orAny(sel.Endpoint), orAny(sel.EventID))
	}
	seen := map[string]bool{}
	err := Scan(ctx, r.JS, streams.AttemptsStream(namespace), jetstream.ConsumerConfig{
		FilterSubject: filter, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}, 0, func(m jetstream.Msg) error {
		// Most of a big log is not what a selected phase wants: the
		// subject names the delivery, and the outcome's bytes rule an
		// entry out, both without decoding it (the dispatcher's encoder
		// writes no spaces).
		if sel.pending() {
			toks := strings.Split(m.Subject(), ".")
			seen[Name(toks[len(toks)-1], toks[len(toks)-2])] = true
		}
		want, logged := outcomes[sel.Phase]
		if sel.Phase != "" && (!logged || !bytes.Contains(m.Data(), want)) {
			return nil
		}
		var a dispatcher.Attempt
		if err := json.Unmarshal(m.Data(), &a); err != nil {
			return nil // not the dispatcher's: nothing to show
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if d := fromAttempt(namespace, &a, md.Sequence.Stream); sel.Phase == "" || d.Status.Phase == sel.Phase {
			each(&d)
		}
		return nil
	})
	if err != nil || !sel.pending() {
		return err
	}
	return r.pending(ctx, namespace, sel, seen, func(d *v1.WebhookDelivery) {
		if sel.Phase == "" || d.Status.Phase == sel.Phase {
			each(d)
		}
	})
}

// Changed is when a delivery last changed: its latest attempt, or while
// it waits, when the event was stored.
func Changed(d v1.WebhookDelivery) time.Time {
	if t := d.Status.LastAttemptTime; t != nil {
		return t.Time
	}
	return d.CreationTimestamp.Time
}

// Name is a delivery's or a dead letter's object name.
func Name(eventID, endpoint string) string { return eventID + "." + endpoint }

// SplitName splits an object name into its event id and endpoint; event
// ids hold no dots.
func SplitName(name string) (Selector, bool) {
	id, ep, ok := strings.Cut(name, ".")
	s := Selector{EventID: id, Endpoint: ep}
	return s, ok && id != "" && ep != "" && s.Check() == nil
}

// Delivery is one delivery with its whole history, or nil when the log
// and the stream know nothing of it.
func (r *Reader) Delivery(ctx context.Context, namespace, eventID, endpoint string) (*v1.WebhookDelivery, error) {
	sel := Selector{EventID: eventID, Endpoint: endpoint}
	if err := sel.Check(); err != nil {
		return nil, err
	}
	hist, err := dispatcher.History(ctx, r.JS, namespace, endpoint, eventID)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(hist) == 0 {
		var found *v1.WebhookDelivery
		err := r.pending(ctx, namespace, sel, nil, func(d *v1.WebhookDelivery) { found = d })
		return found, err
	}
	// The last entry's sequence is the object's version, as in a list.
	var seq uint64
	if s, err := r.JS.Stream(ctx, streams.AttemptsStream(namespace)); err == nil {
		if m, err := s.GetLastMsgForSubject(ctx, streams.AttemptSubject(namespace, endpoint, eventID)); err == nil {
			seq = m.Sequence
		}
	}
	d := fromAttempt(namespace, &hist[len(hist)-1], seq)
	first := metav1.NewTime(hist[0].Time)
	d.Status.FirstAttemptTime = &first
	d.CreationTimestamp = first
	for i := range hist {
		d.Status.History = append(d.Status.History, apiAttempt(&hist[i]))
	}
	return &d, nil
}

// FillFirstAttempts sets the first attempt time (and the creation time) of
// deliveries read by Deliveries, which reads only each one's last entry:
// one direct get each, so callers do it for a page, not for a whole list.
func (r *Reader) FillFirstAttempts(ctx context.Context, ds []v1.WebhookDelivery) error {
	logs := map[string]jetstream.Stream{}
	for _, d := range ds {
		if _, ok := logs[d.Namespace]; !ok && d.Status.LastAttemptTime != nil {
			s, err := r.JS.Stream(ctx, streams.AttemptsStream(d.Namespace))
			if err != nil {
				return fmt.Errorf("opening delivery log %s: %w", streams.AttemptsStream(d.Namespace), err)
			}
			logs[d.Namespace] = s
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	// Direct gets are round trips: a few at a time keep a page's short.
	g.SetLimit(16)
	for i := range ds {
		d := &ds[i]
		if d.Status.LastAttemptTime == nil {
			continue
		}
		g.Go(func() error {
			m, err := logs[d.Namespace].GetMsg(ctx, 1, jetstream.WithGetMsgSubject(streams.AttemptSubject(d.Namespace, d.Spec.Endpoint, d.Spec.EventID)))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading the first attempt of %s: %w", d.Name, err)
			}
			var a dispatcher.Attempt
			if json.Unmarshal(m.Data, &a) == nil {
				t := metav1.NewTime(a.Time)
				d.Status.FirstAttemptTime, d.CreationTimestamp = &t, t
			}
			return nil
		})
	}
	return g.Wait()
}

func phaseOf(outcome string) v1.Phase {
	switch outcome {
	case dispatcher.OutcomeDelivered:
		return v1.PhaseSent
	case dispatcher.OutcomeRetrying:
		return v1.PhaseRetrying
	case dispatcher.OutcomeDead:
		return v1.PhaseFailed
	case dispatcher.OutcomeSuperseded:
		return v1.PhaseSuperseded
	}
	return v1.Phase(outcome)
}

func fromAttempt(namespace string, a *dispatcher.Attempt, logSeq uint64) v1.WebhookDelivery {
	last := metav1.NewTime(a.Time)
	d := v1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{
			Name: Name(a.EventID, a.Endpoint), Namespace: namespace,
			ResourceVersion: strconv.FormatUint(logSeq, 10), CreationTimestamp: last,
		},
		Spec: v1.WebhookDeliverySpec{
			EventID: a.EventID, Endpoint: a.Endpoint, Type: a.Type, Key: a.Key, Version: a.Version,
			StreamSequence: int64(a.Sequence),
		},
		Status: v1.WebhookDeliveryStatus{
			Phase: phaseOf(a.Outcome), Attempts: int32(a.Attempt), LastAttemptTime: &last,
			LastStatusCode: int32(a.StatusCode), Reason: a.Reason, LastError: a.Error, LastResponse: a.Response,
			DeadLetterReason: a.DeadReason, Message: a.Why, Replay: a.Replay,
		},
	}
	if a.LatencyMS > 0 {
		d.Status.LastLatency = &metav1.Duration{Duration: time.Duration(a.LatencyMS * float64(time.Millisecond))}
	}
	if a.NextAttempt != nil && a.Outcome == dispatcher.OutcomeRetrying {
		t := metav1.NewTime(*a.NextAttempt)
		d.Status.NextAttemptTime = &t
	}
	return d
}

func apiAttempt(a *dispatcher.Attempt) v1.Attempt {
	out := v1.Attempt{
		Attempt: int32(a.Attempt), Time: metav1.NewTime(a.Time), Outcome: a.Outcome,
		StatusCode: int32(a.StatusCode), Reason: a.Reason, Error: a.Error, Response: a.Response, Message: a.Why,
		Replay:  a.Replay,
		Latency: metav1.Duration{Duration: time.Duration(a.LatencyMS * float64(time.Millisecond))},
	}
	if a.NextAttempt != nil {
		t := metav1.NewTime(*a.NextAttempt)
		out.NextAttemptTime = &t
	}
	return out
}

// endpoint is what the pending walk knows of one endpoint's consumer.
type endpoint struct {
	name               string
	filters            []string
	ackFloor, handedTo uint64
}

// pending are the events in the stream beyond an endpoint's ack floor
// that its filter matches and the log has no entry of (seen, by name):
// Sending when the consumer has handed them to the dispatcher, Queued when
// not yet. It reads headers only: the MaxPending events after each
// endpoint's ack floor.
func (r *Reader) pending(ctx context.Context, namespace string, sel Selector, seen map[string]bool, each func(*v1.WebhookDelivery)) error {
	stream, err := r.JS.Stream(ctx, events.StreamName(namespace))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening stream %s: %w", events.StreamName(namespace), err)
	}
	var eps []endpoint
	add := func(info *jetstream.ConsumerInfo) {
		ns, name, ok := strings.Cut(info.Name, "_")
		if !ok || ns != namespace || (sel.Endpoint != "" && name != sel.Endpoint) || info.NumPending+uint64(info.NumAckPending) == 0 {
			return
		}
		filters := info.Config.FilterSubjects
		if info.Config.FilterSubject != "" {
			filters = append(filters, info.Config.FilterSubject)
		}
		eps = append(eps, endpoint{name: name, filters: filters, ackFloor: info.AckFloor.Stream, handedTo: info.Delivered.Stream})
	}
	if sel.Endpoint != "" {
		c, err := stream.Consumer(ctx, streams.ConsumerName(namespace, sel.Endpoint))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading consumer of endpoint %s: %w", sel.Endpoint, err)
		}
		add(c.CachedInfo())
	} else {
		lister := stream.ListConsumers(ctx)
		for info := range lister.Info() {
			add(info)
		}
		if err := lister.Err(); err != nil {
			return fmt.Errorf("listing the endpoints' consumers: %w", err)
		}
	}
	if len(eps) == 0 {
		return nil
	}
	// Each endpoint's window is the MaxPending events after its ack
	// floor; overlapping windows are walked once, and one endpoint's deep
	// backlog does not hide the others' newer events. The walks together
	// read at most pendingWindows windows' worth.
	perEndpoint := cmp.Or(r.MaxPending, DefaultMaxPending)
	slices.SortFunc(eps, func(a, b endpoint) int { return cmp.Compare(a.ackFloor, b.ackFloor) })
	var windows [][2]uint64 // first and last stream sequence
	for _, e := range eps {
		from, to := e.ackFloor+1, e.ackFloor+uint64(perEndpoint)
		if n := len(windows); n > 0 && from <= windows[n-1][1]+1 {
			windows[n-1][1] = max(windows[n-1][1], to)
			continue
		}
		windows = append(windows, [2]uint64{from, to})
	}
	budget := pendingWindows * perEndpoint
	for _, w := range windows {
		n := min(int(w[1]-w[0]+1), budget)
		if n <= 0 {
			break
		}
		budget -= n
		if err := r.walkPending(ctx, namespace, sel, seen, eps, w[0], n, each); err != nil {
			return err
		}
	}
	return nil
}

// pendingWindows caps the pending walks of one read at this many
// endpoints' windows.
const pendingWindows = 5

// walkPending reads n events' headers from sequence from on, and calls
// each for those that an endpoint in eps has not acked, its filter
// matches and the log has no entry of.
func (r *Reader) walkPending(ctx context.Context, namespace string, sel Selector, seen map[string]bool, eps []endpoint, from uint64, n int, each func(*v1.WebhookDelivery)) error {
	return Scan(ctx, r.JS, events.StreamName(namespace), jetstream.ConsumerConfig{
		FilterSubject: events.NamespaceSubjects(namespace), DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq: from, HeadersOnly: true,
	}, n, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		h := m.Headers()
		id := strings.TrimPrefix(h.Get(events.HeaderID), namespace+":")
		if id == "" || (sel.EventID != "" && id != sel.EventID) {
			return nil
		}
		typ := strings.TrimPrefix(m.Subject(), events.SubjectPrefix+"."+namespace+".")
		version, _ := strconv.ParseInt(h.Get(events.HeaderVersion), 10, 64)
		seq := md.Sequence.Stream
		for _, e := range eps {
			name := Name(id, e.name)
			if seq <= e.ackFloor || seen[name] || !streams.MatchesAny(e.filters, m.Subject()) {
				continue
			}
			phase := v1.PhaseQueued
			if seq <= e.handedTo {
				phase = v1.PhaseSending
			}
			each(&v1.WebhookDelivery{
				ObjectMeta: metav1.ObjectMeta{
					Name: name, Namespace: namespace, ResourceVersion: strconv.FormatUint(seq, 10),
					CreationTimestamp: metav1.NewTime(md.Timestamp),
				},
				Spec: v1.WebhookDeliverySpec{
					EventID: id, Endpoint: e.name, Type: typ, Key: h.Get(events.HeaderKey), Version: version,
					StreamSequence: int64(seq),
				},
				Status: v1.WebhookDeliveryStatus{Phase: phase},
			})
		}
		return nil
	})
}

// Scan reads what cfg selects from stream through a short-lived consumer
// that acks nothing, calling each for every message, and deletes the
// consumer after. limit, when above 0, caps the messages read. A stream
// that does not exist yet holds nothing.
func Scan(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, limit int, each func(jetstream.Msg) error) error {
	cfg.AckPolicy = jetstream.AckNonePolicy
	cfg.MemoryStorage = true
	// A reader that dies mid-scan leaves nothing for long.
	cfg.InactiveThreshold = 30 * time.Second
	// What the walk is about is what the stream holds now: a message
	// stored after it starts (or, for last per subject, one the server
	// reaches after entries it counted aged out) is left out, so no
	// subject comes twice.
	info, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", stream, err)
	}
	last := info.CachedInfo().State.LastSeq
	c, err := js.CreateConsumer(ctx, stream, cfg)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", stream, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, stream, c.CachedInfo().Name)
	}()
	pending := int(c.CachedInfo().NumPending)
	if limit > 0 {
		pending = min(pending, limit)
	}
	for pending > 0 {
		batch, err := c.FetchNoWait(min(pending, 1000))
		if err != nil {
			return fmt.Errorf("reading %s: %w", stream, err)
		}
		n, done := 0, false
		for m := range batch.Messages() {
			n++
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream > last {
				done = true
				continue
			}
			if err := each(m); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("reading %s: %w", stream, err)
		}
		if n == 0 || done {
			// Aged out or removed since the consumer counted them, or
			// past what the stream held when the walk began.
			break
		}
		pending -= n
	}
	return nil
}

// clip shortens hostile input quoted in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
