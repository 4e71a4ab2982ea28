// Command bench-namespaces measures what per-namespace JetStream streams
// cost a nats-server: memory, create time, idle CPU and restart time, for a
// number of namespaces and the layouts Herald could choose between, and
// Herald's own. It runs the nats-server binary (make nats-server) in its
// own process, so what it reads from /proc is the server's alone.
//
//	go run ./hack/bench-namespaces --nats-server bin/nats-server --namespaces 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

func main() {
	bin := flag.String("nats-server", "bin/nats-server", "nats-server binary")
	namespaces := flag.Int("namespaces", 1000, "namespaces")
	consumers := flag.Int("consumers", 10, "endpoints (consumers) per namespace")
	layouts := flag.String("layouts", "shared,events,all,herald", "layouts: shared (one stream of each kind), events (an events stream per namespace), all (events, log and dead letters per namespace), herald (Herald's own configs: all, plus its two buckets per namespace)")
	flag.Parse()
	fmt.Printf("%-8s %6s %8s %9s %10s %10s %11s\n", "layout", "ns", "streams", "create_s", "rss_mib", "idle_cpu%", "restart_s")
	for _, l := range strings.Split(*layouts, ",") {
		if err := run(*bin, l, *namespaces, *consumers); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

type server struct {
	cmd  *exec.Cmd
	url  string
	port int
}

func start(bin, dir string, port int) (*server, error) {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &server{cmd: cmd, url: fmt.Sprintf("nats://127.0.0.1:%d", port), port: port}, nil
}

// ready waits until JetStream answers for every stream the server recovered.
func (s *server) ready(ctx context.Context, want int) (*nats.Conn, jetstream.JetStream, error) {
	for {
		nc, err := nats.Connect(s.url)
		if err == nil {
			js, _ := jetstream.New(nc)
			if info, err := js.AccountInfo(ctx); err == nil && info.Streams >= want {
				return nc, js, nil
			}
			nc.Close()
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("server not ready: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *server) stop() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() }

func (s *server) rssMiB() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuSeconds is the server's user+system CPU time so far.
func (s *server) cpuSeconds() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func streamsFor(layout string, ns int) []jetstream.StreamConfig {
	mk := func(name, subj string, direct bool) jetstream.StreamConfig {
		return jetstream.StreamConfig{Name: name, Subjects: []string{subj}, Storage: jetstream.FileStorage, MaxAge: 7 * 24 * time.Hour, MaxConsumers: 100000, AllowDirect: direct}
	}
	var out []jetstream.StreamConfig
	switch layout {
	case "shared":
		out = append(out, mk("EVENTS", "herald.events.>", false), mk("ATTEMPTS", "herald.attempts.>", true), mk("DLQ", "herald.dlq.>", false))
	case "events":
		for i := range ns {
			out = append(out, mk(fmt.Sprintf("EVENTS_ns%d", i), fmt.Sprintf("herald.events.ns%d.>", i), false))
		}
		out = append(out, mk("ATTEMPTS", "herald.attempts.>", true), mk("DLQ", "herald.dlq.>", false))
	case "all":
		for i := range ns {
			out = append(out,
				mk(fmt.Sprintf("EVENTS_ns%d", i), fmt.Sprintf("herald.events.ns%d.>", i), false),
				mk(fmt.Sprintf("ATTEMPTS_ns%d", i), fmt.Sprintf("herald.attempts.ns%d.>", i), true),
				mk(fmt.Sprintf("DLQ_ns%d", i), fmt.Sprintf("herald.dlq.ns%d.>", i), false))
		}
	case "herald":
		// The operator's own configs, without byte budgets: the bench
		// server's store could not reserve thousands of them.
		l := streams.DefaultLimits()
		l.EventsMaxBytes, l.AttemptsMaxBytes, l.DeadLetterMaxBytes, l.VersionsMaxBytes, l.HealthMaxBytes = 0, 0, 0, 0, 0
		for i := range ns {
			name := fmt.Sprintf("ns%d", i)
			out = append(out, streams.NamespaceStreamConfigs(l, name)...)
			for _, b := range streams.BucketConfigs(l, name) {
				out = append(out, streams.BucketStreamConfig(b))
			}
		}
	}
	return out
}

func run(bin, layout string, ns, consumers int) error {
	dir, err := os.MkdirTemp("", "bench-namespaces-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	s, err := start(bin, filepath.Join(dir, "js"), 0)
	if err != nil {
		return err
	}
	nc, js, err := s.ready(ctx, 0)
	if err != nil {
		s.stop()
		return err
	}
	cfgs := streamsFor(layout, ns)
	t0 := time.Now()
	for _, c := range cfgs {
		if _, err := js.CreateStream(ctx, c); err != nil {
			return fmt.Errorf("creating %s: %w", c.Name, err)
		}
	}
	for i := range ns {
		stream := "EVENTS"
		switch layout {
		case "shared":
		case "herald":
			stream = events.StreamName(fmt.Sprintf("ns%d", i))
		default:
			stream = fmt.Sprintf("EVENTS_ns%d", i)
		}
		for j := range consumers {
			_, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
				Durable: fmt.Sprintf("ns%d_ep%d", i, j), FilterSubject: fmt.Sprintf("herald.events.ns%d.t%d", i, j),
				AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy, MaxDeliver: -1,
			})
			if err != nil {
				return fmt.Errorf("creating consumer on %s: %w", stream, err)
			}
		}
	}
	create := time.Since(t0)
	nc.Close()
	// Settle, then read memory and idle CPU over ten seconds.
	time.Sleep(5 * time.Second)
	rss := s.rssMiB()
	c0 := s.cpuSeconds()
	time.Sleep(10 * time.Second)
	idle := (s.cpuSeconds() - c0) / 10 * 100
	s.stop()

	t1 := time.Now()
	s, err = start(bin, filepath.Join(dir, "js"), s.port)
	if err != nil {
		return err
	}
	defer s.stop()
	nc, _, err = s.ready(ctx, len(cfgs))
	if err != nil {
		return err
	}
	nc.Close()
	restart := time.Since(t1)
	fmt.Printf("%-8s %6d %8d %9.1f %10.0f %10.1f %11.1f\n", layout, ns, len(cfgs), create.Seconds(), rss, idle, restart.Seconds())
	return nil
}
