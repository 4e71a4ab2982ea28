package kubectlherald

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/cli-runtime/pkg/printers"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

func deadLettersCommand(o *options) *cobra.Command {
	var endpoint, reason string
	cmd := &cobra.Command{
		Use:     "deadletters [-n NAMESPACE | -A] [--endpoint E] [--reason R]",
		Aliases: []string{"dl"},
		Short:   "The events an endpoint gave up on, newest first",
		Long: `deadletters lists dead letters: which event, at which endpoint, why
(TerminalResponse, WindowExhausted, MaxAttempts, Expired, Malformed), the
attempts, the last status code and error, and the replay that has
delivered it since, if one has. Replay them with kubectl herald replay.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, c, err := o.deliveryAPI()
			if err != nil {
				return err
			}
			opts := metav1.ListOptions{FieldSelector: deadLetterSelector(endpoint, reason)}
			if o.output != "" {
				list, err := c.DeadLetters(cmd.Context(), ns, opts)
				if err != nil {
					return fmt.Errorf("listing dead letters: %w", err)
				}
				_, err = o.printed(list)
				return err
			}
			t, err := c.Table(cmd.Context(), ns, "deadletters", opts)
			if err != nil {
				return fmt.Errorf("listing dead letters: %w", err)
			}
			if len(t.Rows) == 0 {
				_, err := fmt.Fprintln(o.streams.Out, "No dead letters.")
				return err
			}
			return printServerTable(o.streams.Out, t, o.allNamespaces)
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "only this WebhookEndpoint's")
	cmd.Flags().StringVar(&reason, "reason", "", "only this reason's (TerminalResponse, WindowExhausted, MaxAttempts, Expired, Malformed)")
	o.addListFlags(cmd)
	return cmd
}

func deadLetterSelector(endpoint, reason string) string {
	set := fields.Set{}
	if endpoint != "" {
		set[deliveryv1.FieldEndpoint] = endpoint
	}
	if reason != "" {
		set[deliveryv1.FieldReason] = reason
	}
	return fields.SelectorFromSet(set).String()
}

// printServerTable prints a table the delivery API rendered, as kubectl
// get does: the server's columns, and the namespace of each row with -A.
func printServerTable(out io.Writer, t *metav1.Table, withNamespace bool) error {
	for i := range t.Rows {
		r := &t.Rows[i]
		if r.Object.Object == nil && len(r.Object.Raw) > 0 {
			m := &metav1.PartialObjectMetadata{}
			if err := json.Unmarshal(r.Object.Raw, m); err != nil {
				return fmt.Errorf("decoding a row's metadata: %w", err)
			}
			r.Object.Object = m
		}
	}
	return printers.NewTablePrinter(printers.PrintOptions{WithNamespace: withNamespace}).PrintObj(t, out)
}
