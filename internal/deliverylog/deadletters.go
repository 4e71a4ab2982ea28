package deliverylog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// DeadLetters are a namespace's dead letters (of one endpoint, with
// sel.Endpoint), the latest per event and endpoint, in no order. They
// leave out the payload, the headers and the history, which get returns.
func (r *Reader) DeadLetters(ctx context.Context, namespace string, sel Selector) ([]v1.DeadLetter, error) {
	if err := sel.Check(); err != nil {
		return nil, err
	}
	filter := streams.DeadLetterPrefix + "." + namespace + ".>"
	if sel.EventID != "" || sel.Endpoint != "" {
		filter = streams.DeadLetterSubject(namespace, orAny(sel.Endpoint), orAny(sel.EventID))
	}
	var out []v1.DeadLetter
	err := Scan(ctx, r.JS, streams.DeadLetterStream(namespace), jetstream.ConsumerConfig{
		FilterSubject: filter, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}, 0, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if d, ok := fromDeadLetter(namespace, m.Data(), md.Sequence.Stream, false); ok {
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// DeadLetter is one dead letter with its payload, headers and history, or
// nil when there is none.
func (r *Reader) DeadLetter(ctx context.Context, namespace, eventID, endpoint string) (*v1.DeadLetter, error) {
	if err := (Selector{EventID: eventID, Endpoint: endpoint}).Check(); err != nil {
		return nil, err
	}
	s, err := r.JS.Stream(ctx, streams.DeadLetterStream(namespace))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", streams.DeadLetterStream(namespace), err)
	}
	m, err := s.GetLastMsgForSubject(ctx, streams.DeadLetterSubject(namespace, endpoint, eventID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the dead letter of %s at %s: %w", eventID, endpoint, err)
	}
	d, ok := fromDeadLetter(namespace, m.Data, m.Sequence, true)
	if !ok {
		return nil, nil
	}
	return &d, nil
}

func fromDeadLetter(namespace string, data []byte, seq uint64, full bool) (v1.DeadLetter, bool) {
	var dl dispatcher.DeadLetter
	if err := json.Unmarshal(data, &dl); err != nil || dl.EventID == "" || dl.Endpoint == "" {
		return v1.DeadLetter{}, false
	}
	dead := metav1.NewTime(dl.DeadAt)
	out := v1.DeadLetter{
		ObjectMeta: metav1.ObjectMeta{
			Name: Name(dl.EventID, dl.Endpoint), Namespace: namespace,
			ResourceVersion: strconv.FormatUint(seq, 10), CreationTimestamp: dead,
		},
		Spec: v1.DeadLetterSpec{
			EventID: dl.EventID, Endpoint: dl.Endpoint, Subject: dl.Subject, StreamSequence: int64(dl.Sequence),
			Type: strings.TrimPrefix(dl.Subject, events.SubjectPrefix+"."+namespace+"."),
		},
		Status: v1.DeadLetterStatus{
			Reason: dl.Reason, Message: dl.Why, DeadTime: dead,
			Attempts: int32(dl.AttemptCount), AttemptsOmitted: int32(dl.AttemptsOmitted),
			Replay: dl.Replay, DeliveredByReplay: dl.DeliveredByReplay,
		},
	}
	if dl.DeliveredTime != nil {
		t := metav1.NewTime(*dl.DeliveredTime)
		out.Status.DeliveredTime = &t
	}
	header := func(k string) string {
		if v := dl.Headers[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	out.Spec.Key = header(events.HeaderKey)
	out.Spec.Version, _ = strconv.ParseInt(header(events.HeaderVersion), 10, 64)
	for i := len(dl.Attempts) - 1; i >= 0; i-- {
		// The last HTTP attempt, not the bookkeeping entry that said dead.
		if a := dl.Attempts[i]; a.StatusCode != 0 || a.Error != "" || i == 0 {
			out.Status.LastStatusCode, out.Status.LastError, out.Status.LastResponse = int32(a.StatusCode), a.Error, a.Response
			break
		}
	}
	if !full {
		return out, true
	}
	out.Status.Headers = map[string]string{}
	for k, v := range dl.Headers {
		if len(v) > 0 {
			out.Status.Headers[k] = v[0]
		}
	}
	switch {
	case json.Valid(dl.Body):
		out.Status.Payload = &runtime.RawExtension{Raw: dl.Body}
	case len(dl.Body) > 0:
		out.Status.RawPayload = dl.Body
	}
	for i := range dl.Attempts {
		out.Status.History = append(out.Status.History, apiAttempt(&dl.Attempts[i]))
	}
	return out, true
}
