package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/herald-dev/herald/pkg/events"
	"github.com/herald-dev/herald/pkg/signing"
)

func init() {
	register("receiver", "run a webhook receiver that verifies signatures and prints deliveries (demos and e2e)", runReceiver)
}

// behaviour is how the receiver answers on one path.
type behaviour struct {
	Status int           `json:"status"`
	Delay  time.Duration `json:"delay"`
}

// arrival is one request as the receiver saw it.
type arrival struct {
	Path    string    `json:"path"`
	ID      string    `json:"id"`
	Key     string    `json:"key,omitempty"`
	Version int64     `json:"version,omitempty"`
	Status  int       `json:"status"` // what the receiver answered
	Time    time.Time `json:"time"`   // when the request arrived
}

// maxArrivals bounds the arrivals kept in memory.
const maxArrivals = 1_000_000

func runReceiver(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("herald receiver", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8090", "address to listen on")
	secret := fs.String("secret", envOr("HERALD_RECEIVER_SECRET", ""), "whsec_ secrets to verify signatures with, comma-separated; a request verifies with any of them (env HERALD_RECEIVER_SECRET); empty skips verification")
	status := fs.Int("status", 200, "default status to answer")
	delay := fs.Duration("delay", 0, "default delay before answering")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var (
		mu    sync.Mutex
		paths = map[string]behaviour{}
		order []arrival
	)
	mux := http.NewServeMux()
	// PUT /_herald/behaviour?path=/crm&status=500&delay=2s changes how one
	// path answers, so demos and e2e specs can break a receiver on purpose.
	mux.HandleFunc("PUT /_herald/behaviour", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		b := behaviour{Status: *status}
		if s := q.Get("status"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				http.Error(w, "status must be a number", http.StatusBadRequest)
				return
			}
			b.Status = n
		}
		if s := q.Get("delay"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				http.Error(w, "delay must be a Go duration", http.StatusBadRequest)
				return
			}
			b.Delay = d
		}
		mu.Lock()
		paths[q.Get("path")] = b
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(b)
	})
	// GET /_herald/received returns how often each event id arrived, per
	// path ("<path> <id>": count).
	mux.HandleFunc("GET /_herald/received", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen := map[string]int{}
		for _, a := range order {
			seen[a.Path+" "+a.ID]++
		}
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(seen)
	})
	// GET /_herald/arrivals?path=/crm lists what arrived on one path (every
	// path without it) in arrival order, so specs can check per-key order.
	mux.HandleFunc("GET /_herald/arrivals", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		mu.Lock()
		defer mu.Unlock()
		out := []arrival{}
		for _, a := range order {
			if path == "" || a.Path == path {
				out = append(out, a)
			}
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "reading body", http.StatusBadRequest)
			return
		}
		verdict := "unsigned check skipped"
		if *secret != "" {
			var err error
			for _, s := range strings.Split(*secret, ",") {
				if _, err = signing.Verify(s, r.Header, body, 0); err == nil {
					break
				}
			}
			if err != nil {
				log.Printf("%s refused: %v", r.URL.Path, err)
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
			verdict = "signature ok"
		}
		var env events.Envelope
		_ = json.Unmarshal(body, &env)
		mu.Lock()
		b, ok := paths[r.URL.Path]
		if !ok {
			b = behaviour{Status: *status, Delay: *delay}
		}
		if len(order) < maxArrivals {
			order = append(order, arrival{Path: r.URL.Path, ID: env.ID, Key: env.Key, Version: env.Version, Status: b.Status, Time: time.Now()})
		}
		mu.Unlock()
		log.Printf("%s <- %s %s key=%s version=%d (%s) answering %d after %s", r.URL.Path, env.ID, env.Type, env.Key, env.Version, verdict, b.Status, b.Delay)
		if b.Delay > 0 {
			select {
			case <-time.After(b.Delay):
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(b.Status)
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Printf("receiver listening on %s\n", *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("receiver: %w", err)
	}
	return nil
}
