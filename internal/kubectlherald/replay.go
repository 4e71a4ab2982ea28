package kubectlherald

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/replays"
)

// replayFlags are `kubectl herald replay`'s.
type replayFlags struct {
	endpoint    string
	deadLetters bool
	reasons     []string
	since       string
	from, to    string
	dryRun, yes bool
	limit, rate int32
	poll        time.Duration
}

func replayCommand(o *options) *cobra.Command {
	f := &replayFlags{}
	cmd := &cobra.Command{
		Use:   "replay (ID... | --dead-letters | --from T --to T) --endpoint E [--dry-run] [--limit N] [--rate R]",
		Short: "Resend events to one endpoint: a dry run first, then followed to the end",
		Long: `replay creates a WebhookReplay for one endpoint of the namespace. It runs
a dry run first and shows how many events would be sent and how many are
skipped (still being retried, or delivered by a replay since); then, once
confirmed (on a terminal; --yes elsewhere), the replay itself, followed
with its progress until it ends. It exits non-zero unless every event was
delivered or superseded.

Times are RFC 3339 (2026-12-03T09:00:00Z) or a duration ago (90m).`,
		Example: `  kubectl herald replay -n shop --endpoint crm --dead-letters --since 2h
  kubectl herald replay -n shop --endpoint crm evt_123 evt_124
  kubectl herald replay -n shop --endpoint crm --from 2026-12-03T09:00:00Z --to 2026-12-03T09:30:00Z --dry-run`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			spec, err := f.spec(args, time.Now())
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return runReplay(cmd.Context(), c, o, f, ns, spec)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.endpoint, "endpoint", "", "the WebhookEndpoint to resend to (required)")
	fl.BoolVar(&f.deadLetters, "dead-letters", false, "replay the endpoint's dead letters")
	fl.StringSliceVar(&f.reasons, "reason", nil, "with --dead-letters: only these reasons")
	fl.StringVar(&f.since, "since", "", "with --dead-letters: only those dead-lettered since (a time or a duration ago)")
	fl.StringVar(&f.from, "from", "", "replay what was published from this time")
	fl.StringVar(&f.to, "to", "", "to this time")
	fl.BoolVar(&f.dryRun, "dry-run", false, "only count and list what would be sent")
	fl.BoolVarP(&f.yes, "yes", "y", false, "do not ask before replaying")
	fl.Int32Var(&f.limit, "limit", 0, fmt.Sprintf("refuse a selection over this many events (default %d, at most %d)", v1.DefaultReplayLimit, v1.MaxReplayLimit))
	fl.Int32Var(&f.rate, "rate", 0, "events per second (default 10, at most 1000)")
	fl.DurationVar(&f.poll, "poll", 500*time.Millisecond, "how often the replay's progress is read")
	_ = cmd.MarkFlagRequired("endpoint")
	_ = fl.MarkHidden("poll")
	return cmd
}

// spec is the WebhookReplay the flags and ids ask for; exactly one
// selection, checked here so the error names the flags.
func (f *replayFlags) spec(ids []string, now time.Time) (v1.WebhookReplaySpec, error) {
	s := v1.WebhookReplaySpec{Endpoint: f.endpoint, EventIDs: ids, Limit: f.limit, Rate: f.rate}
	chosen := 0
	for _, b := range []bool{len(ids) > 0, f.deadLetters, f.from != "" || f.to != ""} {
		if b {
			chosen++
		}
	}
	if chosen != 1 {
		return s, errors.New("choose what to replay: event ids, --dead-letters, or --from and --to")
	}
	if (len(f.reasons) > 0 || f.since != "") && !f.deadLetters {
		return s, errors.New("--reason and --since select dead letters: add --dead-letters")
	}
	if f.deadLetters {
		s.DeadLetters = &v1.ReplayDeadLetters{Reasons: f.reasons}
		if f.since != "" {
			t, err := parseTime(f.since, now)
			if err != nil {
				return s, fmt.Errorf("--since: %w", err)
			}
			s.DeadLetters.Since = &t
		}
	}
	if f.from != "" || f.to != "" {
		if f.from == "" || f.to == "" {
			return s, errors.New("--from and --to go together")
		}
		from, err := parseTime(f.from, now)
		if err != nil {
			return s, fmt.Errorf("--from: %w", err)
		}
		to, err := parseTime(f.to, now)
		if err != nil {
			return s, fmt.Errorf("--to: %w", err)
		}
		s.TimeRange = &v1.ReplayTimeRange{From: from, To: to}
	}
	return s, nil
}

// parseTime reads an RFC 3339 time, or a duration ago.
func parseTime(s string, now time.Time) (metav1.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return metav1.NewTime(t), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return metav1.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration ago", s)
	}
	return metav1.NewTime(now.Add(-d)), nil
}

func runReplay(ctx context.Context, c client.WithWatch, o *options, f *replayFlags, ns string, spec v1.WebhookReplaySpec) error {
	out := o.streams.Out
	dry := spec
	dry.DryRun = true
	rp, err := replays.CreateAndWait(ctx, c, ns, spec.Endpoint+"-dry-", dry, f.poll, nil)
	if dryRun := rp; dryRun != nil {
		// The dry run has said what it had to; the replay is what stays.
		defer func() { _ = client.IgnoreNotFound(c.Delete(context.WithoutCancel(ctx), dryRun)) }()
	}
	if err != nil {
		return err
	}
	would := replays.WouldSend(rp)
	fmt.Fprintf(out, "Dry run: %d of %d matched events would be sent to %s, %d skipped.\n", would, rp.Status.Matched, spec.Endpoint, rp.Status.Skipped)
	if f.dryRun || would == 0 {
		if len(rp.Status.Events) > 0 {
			fmt.Fprintln(out)
			if err := eventsTable(rp.Status.Events).write(out, terminal(out)); err != nil {
				return err
			}
		}
		if would == 0 && !f.dryRun {
			fmt.Fprintln(out, "Nothing to replay.")
		}
		return nil
	}
	if !f.yes {
		if !terminal(out) {
			return errors.New("not a terminal, so nobody can confirm: add --yes to replay")
		}
		fmt.Fprintf(out, "Replay %d events to %s? [y/N] ", would, spec.Endpoint)
		answer, _ := bufio.NewReader(o.streams.In).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(out, "Not replayed.")
			return nil
		}
	}
	bar := newProgress(out)
	rp, err = replays.CreateAndWait(ctx, c, ns, spec.Endpoint+"-", spec, f.poll, func(rp *v1.WebhookReplay) {
		if bar.started == "" {
			bar.started = rp.Name
			fmt.Fprintf(out, "webhookreplay/%s created\n", rp.Name)
		}
		bar.show(rp.Status)
	})
	bar.done()
	if err != nil {
		return err
	}
	return report(out, rp)
}

// report prints how the replay ended, and fails unless it succeeded.
func report(out io.Writer, rp *v1.WebhookReplay) error {
	s := rp.Status
	ph := plain(string(s.Phase))
	if s.Phase == v1.ReplaySucceeded {
		ph = green(ph.text)
	} else {
		ph = red(ph.text)
	}
	var t table
	t.add(ph, plain(fmt.Sprintf("%d delivered, %d superseded, %d failed, %d skipped of %d", s.Delivered, s.Superseded, s.Failed, s.Skipped, s.Matched)))
	if err := t.write(out, terminal(out)); err != nil {
		return err
	}
	if r := apimeta.FindStatusCondition(s.Conditions, v1.ReadyCondition); r != nil && r.Message != "" {
		fmt.Fprintln(out, r.Message)
	}
	var failed []v1.ReplayedEvent
	for _, e := range s.Events {
		if e.Outcome == v1.ReplayOutcomeFailed {
			failed = append(failed, e)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintln(out)
		if err := eventsTable(failed).write(out, terminal(out)); err != nil {
			return err
		}
	}
	if s.Phase != v1.ReplaySucceeded {
		return fmt.Errorf("replay %s ended %s", rp.Name, s.Phase)
	}
	return nil
}

func eventsTable(es []v1.ReplayedEvent) *table {
	t := &table{}
	t.header("event", "outcome", "code", "reason")
	for _, e := range es {
		code := "-"
		if e.Code != 0 {
			code = strconv.Itoa(int(e.Code))
		}
		oc := plain(e.Outcome)
		switch e.Outcome {
		case v1.ReplayOutcomeDelivered, v1.ReplayOutcomeWouldSend:
			oc = green(e.Outcome)
		case v1.ReplayOutcomeFailed:
			oc = red(e.Outcome)
		}
		t.add(plain(e.ID), oc, plain(code), plain(dash(e.Reason)))
	}
	return t
}
