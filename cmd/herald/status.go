package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/herald-dev/herald/internal/dispatcher"
)

func init() {
	register("status", "show where one event stands at every endpoint", runStatus)
}

func runStatus(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("herald status", flag.ContinueOnError)
	conn := natsFlags(fs)
	ns := fs.String("namespace", "", "the event's namespace; with --type, endpoints that have not tried it yet show as queued")
	typ := fs.String("type", "", "the event's type (see --namespace)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: herald status [--namespace NS --type TYPE] EVENT-ID")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("one event id is required")
	}
	nc, js, err := conn.connect("herald-status")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	states, err := dispatcher.EventStatus(ctx, js, fs.Arg(0), *ns, *typ)
	if err != nil {
		return err
	}
	if len(states) == 0 {
		fmt.Printf("no endpoint has tried event %s yet (give --namespace and --type to list the endpoints it is queued for)\n", fs.Arg(0))
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
