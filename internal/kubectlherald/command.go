// Package kubectlherald is `kubectl herald`, the support view in a
// terminal: what is failing, where one event stands, the dead letters,
// and replays followed to their end. It reads only the delivery API
// (delivery.herald.dev) and WebhookReplays, with the user's own
// kubeconfig identity, so it shows exactly what their RBAC allows.
package kubectlherald

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/delivery"
)

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{deliveryv1.AddToScheme, v1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// options are what every command shares: kubectl's connection flags,
// -A, -o, and where output goes.
type options struct {
	flags         *genericclioptions.ConfigFlags
	streams       genericiooptions.IOStreams
	allNamespaces bool
	output        string
}

// NewCommand is `kubectl herald` with its subcommands.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{flags: genericclioptions.NewConfigFlags(true), streams: streams}
	cmd := &cobra.Command{
		Use: "herald",
		// kubectl's plugin convention: help reads "kubectl herald ...".
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl herald"},
		Short:       "See and fix webhook deliveries: failures, one event, dead letters, replays",
		Long: `kubectl herald shows what Herald's delivery API holds, as the user's own
kubeconfig identity: what is failing now, where one event stands at every
endpoint, the dead letters, and replays followed to their end.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	o.flags.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(failuresCommand(o), eventCommand(o), deadLettersCommand(o), replayCommand(o), consoleCommand(o))
	return cmd
}

// Run executes `kubectl herald` with args, as the plugin binary does.
func Run(ctx context.Context, args []string) error {
	cmd := NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}

func (o *options) addListFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "every namespace you may read")
	o.addOutputFlag(cmd)
}

func (o *options) addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "json or yaml: the API objects, for scripts")
}

// namespace is the -n namespace, or the kubeconfig context's; "" with -A.
func (o *options) namespace() (string, error) {
	if o.allNamespaces {
		return "", nil
	}
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from kubeconfig: %w", err)
	}
	return ns, nil
}

// deliveryAPI is the namespace to read and a client of the delivery API.
func (o *options) deliveryAPI() (string, *delivery.Client, error) {
	ns, err := o.namespace()
	if err != nil {
		return "", nil, err
	}
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return "", nil, err
	}
	c, err := delivery.NewForConfig(cfg)
	return ns, c, err
}

func (o *options) client() (client.WithWatch, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	return client.NewWithWatch(cfg, client.Options{Scheme: scheme})
}

// printed prints obj when -o asks for it, and says whether it did; the
// command prints its own table otherwise.
func (o *options) printed(obj runtime.Object) (bool, error) {
	p, err := o.printer()
	if err != nil || p == nil {
		return false, err
	}
	return true, p.PrintObj(obj, o.streams.Out)
}

// printer is the -o printer, or nil for the command's own table.
func (o *options) printer() (printers.ResourcePrinter, error) {
	var p printers.ResourcePrinter
	switch o.output {
	case "":
		return nil, nil
	case "json":
		p = &printers.JSONPrinter{}
	case "yaml":
		p = &printers.YAMLPrinter{}
	default:
		return nil, fmt.Errorf("unknown output format %q: use json or yaml", o.output)
	}
	// Objects decoded from the API come without their kind.
	return printers.NewTypeSetter(scheme).ToPrinter(p), nil
}

// terminal says whether w is a terminal: colour and live progress only then.
func terminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
