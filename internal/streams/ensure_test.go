package streams

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/herald-dev/herald/internal/testenv"
)

// TestEnsureNamespaceUpdatesOnlyWhatDrifted runs EnsureNamespace on a real
// server and counts the server's stream-updated advisories: none for
// streams in shape, one for the one whose limit was changed behind
// Herald's back, which it gets back.
func TestEnsureNamespaceUpdatesOnlyWhatDrifted(t *testing.T) {
	js := testenv.JetStream(t)
	nc := js.Conn()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := DefaultLimits()
	if err := EnsureNamespace(ctx, js, l, "shop"); err != nil {
		t.Fatal(err)
	}
	if err := EnsureNamespace(ctx, js, l, "marker"); err != nil {
		t.Fatal(err)
	}

	updated, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	// updates runs fn, then touches a stream of another namespace, and
	// returns the streams updated before that touch: the server sends its
	// advisories in order, so the marker's comes after fn's.
	marker := DeadLetterStream("marker")
	updates := func(fn func()) []string {
		t.Helper()
		fn()
		s, err := js.Stream(ctx, marker)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.Description += "."
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		var names []string
		for {
			m, err := updated.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatalf("waiting for the marker's advisory: %v", err)
			}
			name := m.Subject[strings.LastIndex(m.Subject, ".")+1:]
			if name == marker {
				return names
			}
			names = append(names, name)
		}
	}

	if got := updates(func() {
		if err := EnsureNamespace(ctx, js, l, "shop"); err != nil {
			t.Fatal(err)
		}
	}); len(got) != 0 {
		t.Fatalf("a pass over streams in shape updated %v", got)
	}

	log := AttemptsStream("shop")
	s, err := js.Stream(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	drifted := s.CachedInfo().Config
	drifted.MaxBytes = 1 << 20
	if _, err := js.UpdateStream(ctx, drifted); err != nil {
		t.Fatal(err)
	}
	got := updates(func() {
		if err := EnsureNamespace(ctx, js, l, "shop"); err != nil {
			t.Fatal(err)
		}
	})
	if len(got) != 2 || got[0] != log || got[1] != log {
		t.Fatalf("want the drift and its repair of %s, got updates of %v", log, got)
	}
	info, err := js.Stream(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	if mb := info.CachedInfo().Config.MaxBytes; mb != l.AttemptsMaxBytes {
		t.Fatalf("%s has MaxBytes %d after the pass, want %d", log, mb, l.AttemptsMaxBytes)
	}
}
