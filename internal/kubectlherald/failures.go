package kubectlherald

import (
	"cmp"
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

func failuresCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "failures [-n NAMESPACE | -A]",
		Short: "What is failing now, by namespace and endpoint, worst first",
		Long: `failures lists every endpoint with deliveries retrying or dead-lettered,
the most first: how many, by last status code (0: no answer, as for a
timeout or a refused connection), how long the oldest has waited, and
the latest error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, c, err := o.deliveryAPI()
			if err != nil {
				return err
			}
			list, err := c.Summaries(cmd.Context(), ns, metav1.ListOptions{})
			if err != nil {
				return fmt.Errorf("reading the delivery summaries: %w", err)
			}
			if done, err := o.printed(list); done || err != nil {
				return err
			}
			return printFailures(o.streams.Out, list.Items, o.allNamespaces, time.Now())
		},
	}
	o.addListFlags(cmd)
	return cmd
}

// failure is one endpoint's row.
type failure struct {
	namespace string
	deliveryv1.EndpointSummary
}

// worstFirst orders endpoints by how many deliveries fail, then by how
// long the oldest has waited.
func worstFirst(sums []deliveryv1.DeliverySummary) []failure {
	var rows []failure
	for _, s := range sums {
		for _, e := range s.Status.Endpoints {
			rows = append(rows, failure{namespace: s.Namespace, EndpointSummary: e})
		}
	}
	oldest := func(f failure) time.Time {
		if f.OldestRetrying == nil {
			return time.Now()
		}
		return f.OldestRetrying.Time
	}
	slices.SortStableFunc(rows, func(a, b failure) int {
		return cmp.Or(cmp.Compare(b.Retrying+b.Failed, a.Retrying+a.Failed),
			oldest(a).Compare(oldest(b)),
			cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.Endpoint, b.Endpoint))
	})
	return rows
}

func printFailures(out io.Writer, sums []deliveryv1.DeliverySummary, withNamespace bool, now time.Time) error {
	rows := worstFirst(sums)
	if len(rows) == 0 {
		where := "namespace " + namespaceOf(sums)
		if withNamespace {
			where = "any namespace you may read"
		}
		_, err := fmt.Fprintf(out, "Nothing is failing in %s.\n", where)
		return err
	}
	var t table
	cols := []string{"endpoint", "retrying", "failed", "codes", "oldest pending", "last error"}
	if withNamespace {
		cols = append([]string{"namespace"}, cols...)
	}
	t.header(cols...)
	for _, r := range rows {
		oldest := "-"
		if r.OldestRetrying != nil {
			oldest = duration.HumanDuration(now.Sub(r.OldestRetrying.Time))
		}
		cells := []cell{plain(r.Endpoint),
			yellowIf(r.Retrying > 0, strconv.Itoa(int(r.Retrying))), redIf(r.Failed > 0, strconv.Itoa(int(r.Failed))),
			codes(r.Codes), plain(oldest), plain(oneLine(r.LastError, 80))}
		if withNamespace {
			cells = append([]cell{plain(r.namespace)}, cells...)
		}
		t.add(cells...)
	}
	return t.write(out, terminal(out))
}

func namespaceOf(sums []deliveryv1.DeliverySummary) string {
	if len(sums) == 1 {
		return sums[0].Namespace
	}
	return "this namespace"
}

// codes reads "504×12 500×3": the last status codes, most first; it is
// red when one code is most of the failures, as a cluster of 401s is.
func codes(cs []deliveryv1.CodeCount) cell {
	var parts []string
	total, top := int32(0), int32(0)
	for i, c := range cs {
		n := c.Retrying + c.Failed
		total += n
		if i == 0 {
			top = n
		}
		parts = append(parts, fmt.Sprintf("%s×%d", codeName(c.Code), n))
	}
	return redIf(total > 1 && 2*top > total, strings.Join(parts, " "))
}

// codeName is the status code, or what its absence means.
func codeName(code int32) string {
	if code == 0 {
		return "none"
	}
	return strconv.Itoa(int(code))
}

// oneLine keeps a receiver's error to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}
