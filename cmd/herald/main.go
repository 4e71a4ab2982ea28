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
	"sync"
	"syscall"
)

// abortMu guards abortRoot.
var abortMu sync.Mutex

// abortRoot cancels the root context of the running subcommand with a
// cause that makes herald exit non-zero; newRootContext sets it.
var abortRoot context.CancelCauseFunc = func(error) {}

// fatal is a cause given to abort: main exits 1 with it even when the
// subcommand returned nil, as a manager stopped by its context does.
type fatal struct{ err error }

func (f *fatal) Error() string { return f.err.Error() }
func (f *fatal) Unwrap() error { return f.err }

// abort ends the process's root context with err as its cause. Code that
// finds the process unable to go on without a restart (its NATS
// connection closed for good) calls it; main then exits 1 with err.
func abort(err error) {
	abortMu.Lock()
	cancel := abortRoot
	abortMu.Unlock()
	cancel(&fatal{err})
}

// newRootContext is the context a subcommand runs in: cancelled by
// SIGINT, SIGTERM, or abort. stop releases it and unhooks abort.
func newRootContext(parent context.Context) (ctx context.Context, stop func()) {
	sigCtx, stopSignals := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancelCause(sigCtx)
	abortMu.Lock()
	abortRoot = cancel
	abortMu.Unlock()
	return ctx, func() {
		abortMu.Lock()
		abortRoot = func(error) {}
		abortMu.Unlock()
		cancel(nil)
		stopSignals()
	}
}

// exitError is what main reports for a subcommand that returned err in
// ctx: the abort cause wins, since whatever the subcommand returned then
// (often nil or "context canceled") follows from it.
func exitError(ctx context.Context, err error) error {
	var f *fatal
	if errors.As(context.Cause(ctx), &f) {
		return f.err
	}
	return err
}

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

func usage() {
	fmt.Fprintln(os.Stderr, "usage: herald <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nrun `herald <command> -h` for its flags")
}

func main() {
	if asPlugin(os.Args[0]) {
		os.Args = append([]string{os.Args[0], "kubectl"}, os.Args[1:]...)
	}
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
		fmt.Fprintf(os.Stderr, "herald: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	ctx, stop := newRootContext(context.Background())
	err := exitError(ctx, cmd.run(ctx, args))
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		prefix := "herald " + name
		if asPlugin(os.Args[0]) {
			prefix = "kubectl herald" // as its user typed it
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", prefix, err)
		os.Exit(1)
	}
}
