package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/pkg/events"
)

func init() {
	register("status", "show where one event stands at every endpoint", runStatus)
}

// statusQuery is what `herald status` looks up.
type statusQuery struct {
	conn      *natsConn
	id        string
	namespace string
	eventType string
}

// parseStatusArgs reads and checks the arguments of `herald status`. The
// id, namespace and type follow the producer contract's rules (what
// `herald send` and the publisher accept), so a typed '>' or '*' never
// reaches a subject as a wildcard, and the query never leaves one
// namespace: a tenant's boundary.
func parseStatusArgs(args []string) (*statusQuery, error) {
	fs := flag.NewFlagSet("herald status", flag.ContinueOnError)
	q := &statusQuery{conn: natsFlags(fs)}
	fs.StringVar(&q.namespace, "namespace", "default", "the event's namespace, as given to herald send; only its delivery log is read")
	fs.StringVar(&q.eventType, "type", "", "the event's type; with it, endpoints that have not tried the event yet show as queued")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: herald status [--namespace NS] [--type TYPE] EVENT-ID")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return nil, errors.New("one event id is required")
	}
	q.id = fs.Arg(0)
	// Validate checks the id, the type and the namespace, in that order,
	// and the data; --type is optional, so a placeholder stands in for it.
	probe := events.Event{ID: q.id, Namespace: q.namespace, Type: q.eventType, Data: json.RawMessage("{}")}
	if probe.Type == "" {
		probe.Type = "any"
	}
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	return q, nil
}

func runStatus(ctx context.Context, args []string) error {
	q, err := parseStatusArgs(args)
	if err != nil {
		return err
	}
	nc, js, err := q.conn.connect("herald-status", q.namespace)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	states, err := dispatcher.EventStatus(ctx, js, q.id, q.namespace, q.eventType)
	if err != nil {
		return err
	}
	if len(states) == 0 {
		hint := " (give --type to list the endpoints it is queued for)"
		if q.eventType != "" {
			hint = ""
		}
		fmt.Printf("no endpoint in namespace %s has tried event %s yet%s\n", q.namespace, q.id, hint)
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tENDPOINT\tSTATE\tATTEMPTS\tCODE\tREASON\tWHEN")
	now := time.Now()
	for _, s := range states {
		if s.Last == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t0\t\t\t\n", s.Namespace, s.Endpoint, s.State)
			continue
		}
		a := s.Last
		code, reason := "", a.Reason
		if a.StatusCode != 0 {
			code = fmt.Sprint(a.StatusCode)
		}
		if reason == "" && a.Why != "" {
			reason = a.Why
		}
		when := fmt.Sprintf("%s ago", now.Sub(a.Time).Round(time.Second))
		if s.State == dispatcher.StateRetrying && a.NextAttempt != nil {
			when = fmt.Sprintf("next in %s", a.NextAttempt.Sub(now).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Namespace, s.Endpoint, s.State, a.Attempt, code, reason, when)
	}
	return tw.Flush()
}
