package apiserver

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// The tables kubectl prints. The delivery row is the support row of the
// brief: which event, where, how it stands, how often it was tried, what
// the endpoint last said and when the next try is.
var (
	deliveryColumns = []metav1.TableColumnDefinition{
		{Name: "Event", Type: "string", Description: "event id (webhook-id)"},
		{Name: "Endpoint", Type: "string", Description: "WebhookEndpoint"},
		{Name: "Phase", Type: "string", Description: "Queued, Sending, Retrying, Sent, Failed or Superseded"},
		{Name: "Attempts", Type: "integer", Description: "HTTP requests made"},
		{Name: "Code", Type: "string", Description: "last HTTP status code"},
		{Name: "Last Error", Type: "string", Description: "last failure, or why it stands so"},
		{Name: "Next Retry", Type: "string", Description: "when the next attempt is due"},
		{Name: "Age", Type: "string", Description: "since the first attempt, or since it was stored while it waits"},
		{Name: "Type", Type: "string", Priority: 1, Description: "event type"},
		{Name: "Key", Type: "string", Priority: 1, Description: "record the event is about"},
		{Name: "Version", Type: "integer", Priority: 1, Description: "version of the key"},
	}
	deadLetterColumns = []metav1.TableColumnDefinition{
		{Name: "Event", Type: "string", Description: "event id (webhook-id)"},
		{Name: "Endpoint", Type: "string", Description: "WebhookEndpoint"},
		{Name: "Reason", Type: "string", Description: "TerminalResponse, WindowExhausted, MaxAttempts, Expired or Malformed"},
		{Name: "Attempts", Type: "integer", Description: "HTTP requests made"},
		{Name: "Code", Type: "string", Description: "last HTTP status code"},
		{Name: "Last Error", Type: "string", Description: "last failure"},
		{Name: "Died", Type: "string", Description: "since it was dead-lettered"},
		{Name: "Delivered By", Type: "string", Description: "the WebhookReplay that has delivered it since"},
		{Name: "Type", Type: "string", Priority: 1, Description: "event type"},
		{Name: "Key", Type: "string", Priority: 1, Description: "record the event is about"},
		{Name: "Message", Type: "string", Priority: 1, Description: "why, in words"},
	}
	summaryColumns = []metav1.TableColumnDefinition{
		{Name: "Retrying", Type: "integer", Description: "deliveries retrying now"},
		{Name: "Failed", Type: "integer", Description: "deliveries dead-lettered (and not delivered since)"},
		{Name: "Top Codes", Type: "string", Description: "last status codes, most first (0: no response)"},
		{Name: "Worst Endpoints", Type: "string", Description: "endpoints with the most failures"},
		{Name: "Last Failure", Type: "string", Description: "since the latest failure"},
	}
)

// now is the clock of the relative columns.
var now = time.Now

func age(t metav1.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now().Sub(t.Time))
}

// nextRetry reads "in 47s", or "due" once the time has passed (the
// dispatcher is about to try).
func nextRetry(t *metav1.Time) string {
	if t == nil {
		return ""
	}
	if d := t.Sub(now()); d > 0 {
		return "in " + duration.HumanDuration(d)
	}
	return "due"
}

func code(c int32) string {
	if c == 0 {
		return ""
	}
	return strconv.Itoa(int(c))
}

// oneLine keeps a table cell to one short line; the object has it all.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func deliveryRow(d *v1.WebhookDelivery) metav1.TableRow {
	errText := d.Status.LastError
	switch {
	case errText != "":
	case d.Status.LastStatusCode >= 300:
		// A refusal has no error text of its own: what it said is.
		errText = "HTTP " + code(d.Status.LastStatusCode)
		if d.Status.LastResponse != "" {
			errText += ": " + d.Status.LastResponse
		}
	case d.Status.Phase != v1.PhaseSent:
		errText = d.Status.Message
	}
	return metav1.TableRow{
		Cells: []any{
			d.Spec.EventID, d.Spec.Endpoint, string(d.Status.Phase), int64(d.Status.Attempts), code(d.Status.LastStatusCode),
			oneLine(errText), nextRetry(d.Status.NextAttemptTime), age(d.CreationTimestamp),
			d.Spec.Type, d.Spec.Key, d.Spec.Version,
		},
		Object: runtime.RawExtension{Object: d},
	}
}

func deadLetterRow(d *v1.DeadLetter) metav1.TableRow {
	return metav1.TableRow{
		Cells: []any{
			d.Spec.EventID, d.Spec.Endpoint, d.Status.Reason, int64(d.Status.Attempts), code(d.Status.LastStatusCode),
			oneLine(d.Status.LastError), age(d.Status.DeadTime), d.Status.DeliveredByReplay, d.Spec.Type, d.Spec.Key, oneLine(d.Status.Message),
		},
		Object: runtime.RawExtension{Object: d},
	}
}

func summaryRow(s *v1.DeliverySummary) metav1.TableRow {
	var codes, worst []string
	for i, c := range s.Status.Codes {
		if i == 3 {
			break
		}
		codes = append(codes, fmt.Sprintf("%dx%d", c.Code, c.Retrying+c.Failed))
	}
	for i, e := range s.Status.Endpoints {
		if i == 3 {
			break
		}
		worst = append(worst, fmt.Sprintf("%s(%d)", e.Endpoint, e.Retrying+e.Failed))
	}
	last := ""
	if s.Status.Retrying+s.Status.Failed > 0 {
		last = age(s.CreationTimestamp)
	}
	return metav1.TableRow{
		Cells:  []any{int64(s.Status.Retrying), int64(s.Status.Failed), strings.Join(codes, " "), strings.Join(worst, " "), last},
		Object: runtime.RawExtension{Object: s},
	}
}

// table builds kubectl's table of one T or of a list of them.
func table[T any, PT interface {
	*T
	runtime.Object
}](obj runtime.Object, columns []metav1.TableColumnDefinition, row func(*T) metav1.TableRow) (*metav1.Table, error) {
	t := &metav1.Table{ColumnDefinitions: columns}
	items := []runtime.Object{obj}
	if meta.IsListType(obj) {
		var err error
		if items, err = meta.ExtractList(obj); err != nil {
			return nil, err
		}
		if l, err := meta.ListAccessor(obj); err == nil {
			t.ResourceVersion, t.Continue, t.RemainingItemCount = l.GetResourceVersion(), l.GetContinue(), l.GetRemainingItemCount()
		}
	}
	for _, o := range items {
		item, ok := o.(PT)
		if !ok {
			return nil, fmt.Errorf("no table for %T", o)
		}
		t.Rows = append(t.Rows, row(item))
	}
	return t, nil
}

func deliveryTable(obj runtime.Object) (*metav1.Table, error) {
	return table[v1.WebhookDelivery](obj, deliveryColumns, deliveryRow)
}

func deadLetterTable(obj runtime.Object) (*metav1.Table, error) {
	return table[v1.DeadLetter](obj, deadLetterColumns, deadLetterRow)
}

func summaryTable(obj runtime.Object) (*metav1.Table, error) {
	return table[v1.DeliverySummary](obj, summaryColumns, summaryRow)
}
