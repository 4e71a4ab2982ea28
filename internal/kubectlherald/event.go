package kubectlherald

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

func eventCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "event ID [-n NAMESPACE]",
		Short: "Where one event stands at every endpoint, with each attempt",
		Long: `event shows one event (its webhook-id) at every endpoint of the namespace
that has tried it: phase, attempts, next retry, then each attempt's time,
status code, latency, error and the start of the receiver's answer.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, c, err := o.deliveryAPI()
			if err != nil {
				return err
			}
			ds, err := c.EventStatus(cmd.Context(), ns, args[0])
			if err != nil {
				return fmt.Errorf("reading event %s: %w", args[0], err)
			}
			if len(ds) == 0 {
				return fmt.Errorf("no endpoint in namespace %s has event %q: it was not published there, no endpoint takes its type, or it is older than the delivery log", ns, args[0])
			}
			// A list carries no attempt history; each delivery's own does.
			slices.SortFunc(ds, func(a, b deliveryv1.WebhookDelivery) int { return strings.Compare(a.Spec.Endpoint, b.Spec.Endpoint) })
			for i := range ds {
				if ds[i].Status.Attempts == 0 {
					continue
				}
				d, err := c.Delivery(cmd.Context(), ns, args[0], ds[i].Spec.Endpoint)
				if err != nil {
					return fmt.Errorf("reading event %s at %s: %w", args[0], ds[i].Spec.Endpoint, err)
				}
				ds[i] = *d
			}
			if done, err := o.printed(&deliveryv1.WebhookDeliveryList{Items: ds}); done || err != nil {
				return err
			}
			return printEvent(o.streams.Out, ns, args[0], ds, time.Now())
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

func printEvent(out io.Writer, ns, id string, ds []deliveryv1.WebhookDelivery, now time.Time) error {
	colour := terminal(out)
	fmt.Fprintf(out, "Event %s in namespace %s\n\n", id, ns)
	var t table
	t.header("endpoint", "phase", "attempts", "code", "reason", "next retry", "last error")
	for _, d := range ds {
		s := d.Status
		t.add(plain(d.Spec.Endpoint), phase(s.Phase), plain(strconv.Itoa(int(s.Attempts))), plain(codeOrDash(s.LastStatusCode, s.Attempts)),
			plain(dash(s.Reason)), plain(nextRetry(s.NextAttemptTime, now)), plain(oneLine(s.LastError, 60)))
	}
	if err := t.write(out, colour); err != nil {
		return err
	}
	for _, d := range ds {
		if len(d.Status.History) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s: attempts\n", d.Spec.Endpoint)
		var h table
		h.header("#", "time", "outcome", "code", "latency", "error", "response")
		for _, a := range d.Status.History {
			h.add(plain(strconv.Itoa(int(a.Attempt))), plain(a.Time.UTC().Format(time.RFC3339)), outcome(a.Outcome),
				plain(codeOrDash(a.StatusCode, a.Attempt)), plain(a.Latency.Round(time.Millisecond).String()),
				plain(oneLine(a.Error, 50)), plain(oneLine(a.Response, 40)))
		}
		if err := h.write(out, colour); err != nil {
			return err
		}
	}
	return nil
}

func phase(p deliveryv1.Phase) cell {
	switch p {
	case deliveryv1.PhaseSent:
		return green(string(p))
	case deliveryv1.PhaseRetrying:
		return yellow(string(p))
	case deliveryv1.PhaseFailed:
		return red(string(p))
	}
	return plain(string(p))
}

func outcome(o string) cell {
	switch o {
	case "delivered":
		return green(o)
	case "retrying":
		return yellow(o)
	case "dead":
		return red(o)
	}
	return plain(o)
}

// nextRetry reads "in 47s", as support says it to a customer.
func nextRetry(t *metav1.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return in(t.Time, now)
}

// codeOrDash is the status code once there was an attempt: "none" when
// the receiver did not answer.
func codeOrDash(code, attempts int32) string {
	if attempts == 0 {
		return "-"
	}
	return codeName(code)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// in is how long until t, as "in 47s" ("now" once due).
func in(t time.Time, now time.Time) string {
	if !t.After(now) {
		return "now"
	}
	return "in " + duration.HumanDuration(t.Sub(now))
}
