package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/herald-dev/herald/pkg/events"
)

func init() {
	register("send", "publish an event to Herald (the producer contract)", runSend)
}

func runSend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("herald send", flag.ContinueOnError)
	conn := natsFlags(fs)
	ns := fs.String("namespace", "default", "namespace whose endpoints receive the event")
	typ := fs.String("type", "", "event type, such as subscription.updated (required)")
	id := fs.String("id", "", "event id; a publish retried with the same id is delivered once (default: a new random id)")
	key := fs.String("key", "", "ordering key: the record the event is about, such as sub_123")
	version := fs.Int64("version", 0, "version of the record; newer versions win (0: none)")
	data := fs.String("data", "{}", "event data as JSON, @file to read a file, or - for standard input")
	maxBody := fs.Int("max-body-bytes", events.DefaultMaxBodyBytes, "size limit of the event envelope")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: herald send --type TYPE [--key KEY --version N] [--id ID] [--data JSON|@file|-]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *typ == "" {
		fs.Usage()
		return errors.New("--type is required")
	}
	body, err := readData(*data)
	if err != nil {
		return err
	}
	if *id == "" {
		*id = newEventID()
	}
	nc, js, err := conn.connect("herald-send", *ns)
	if err != nil {
		return err
	}
	defer nc.Close()
	pub, err := events.NewPublisher(js, events.WithMaxBodyBytes(*maxBody))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := pub.Publish(ctx, events.Event{ID: *id, Namespace: *ns, Type: *typ, Key: *key, Version: *version, Data: body})
	if err != nil {
		return err
	}
	note := ""
	if ack.Duplicate {
		note = " (duplicate: an event with this id was already published; it is delivered once)"
	}
	fmt.Printf("published %s to %s, stream sequence %d%s\n", *id, events.Subject(*ns, *typ), ack.Sequence, note)
	return nil
}

func readData(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		return io.ReadAll(os.Stdin)
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, fmt.Errorf("reading event data: %w", err)
		}
		return b, nil
	}
	return []byte(arg), nil
}

func newEventID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "evt_" + hex.EncodeToString(b)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
