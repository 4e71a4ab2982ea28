// Command herald is Herald's single binary: the operator (`manager`), the
// per-namespace delivery process (`dispatcher`) and the command-line tools.
// Each subcommand lives in its own file and registers itself in init.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// subcommand is one `herald <name>`; run gets the arguments after the name.
type subcommand struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]subcommand{}

// register adds a subcommand; files call it from init.
func register(name, summary string, run func(ctx context.Context, args []string) error) {
	commands[name] = subcommand{summary: summary, run: run}
}

// planned subcommands are listed in usage before their files exist.
// TODO(dispatcher owner): send.go, status.go and receiver.go register
// these; remove them from this list then.
var planned = map[string]string{
	"send":     "publish an event (producer contract) [not built yet]",
	"status":   "show an event's or an endpoint's delivery state [not built yet]",
	"receiver": "run a demo webhook receiver that verifies signatures [not built yet]",
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: herald <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands)+len(planned))
	for n := range commands {
		names = append(names, n)
	}
	for n := range planned {
		if _, ok := commands[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		s := planned[n]
		if c, ok := commands[n]; ok {
			s = c.summary
		}
		fmt.Fprintf(os.Stderr, "  %-11s %s\n", n, s)
	}
	fmt.Fprintln(os.Stderr, "\nrun `herald <command> -h` for its flags")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	cmd, ok := commands[name]
	if !ok {
		if _, soon := planned[name]; soon {
			fmt.Fprintf(os.Stderr, "herald %s is not built yet\n", name)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "herald: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "herald %s: %v\n", name, err)
		os.Exit(1)
	}
}
