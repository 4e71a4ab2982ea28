package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// memoryLimitRatio is the share of the container's memory limit the Go
// runtime aims to stay under (GOMEMLIMIT), leaving the rest for what it
// does not count (thread stacks, cgo) before the OOM killer would act.
const memoryLimitRatio = 0.9

// server wraps a long-running subcommand: its GC works to keep the heap
// under the container's memory limit, where without it the heap may grow
// to twice what is live first. A GOMEMLIMIT in the environment wins; with
// no limit (a process outside a container) nothing changes.
func server(run func(ctx context.Context, args []string) error) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		_, _ = memlimit.Set(
			memlimit.WithProvider(memlimit.FromCgroup),
			memlimit.WithRatio(memoryLimitRatio),
			memlimit.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		)
		return run(ctx, args)
	}
}
