package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

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
	// Authorization is "sha256:<hex>" of the request's Authorization
	// header, when it had one: enough to check that an auth header from
	// a Secret arrived, without the receiver repeating the secret.
	Authorization string `json:"authorization,omitempty"`
}

// digest is how the receiver shows a header value it must not repeat.
func digest(v string) string {
	if v == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(v))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// maxArrivals bounds the arrivals kept in memory.
const maxArrivals = 1_000_000

// minTokenLength is the shortest control token the receiver accepts.
const minTokenLength = 16

func runReceiver(ctx context.Context, args []string) error {
	cfg, err := receiverSettings(args)
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: cfg.listen, Handler: newReceiver(cfg), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	control := "control endpoints /_herald/* need the bearer token"
	if cfg.token == "" {
		control = "control endpoints disabled (no --token-file or HERALD_RECEIVER_TOKEN)"
	}
	verify := fmt.Sprintf("verifying signatures with %d secret(s)", len(cfg.secrets))
	if len(cfg.secrets) == 0 {
		verify = "not verifying signatures (no --secret-file or HERALD_RECEIVER_SECRET)"
	}
	fmt.Printf("receiver listening on %s, %s, %s\n", cfg.listen, verify, control)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("receiver: %w", err)
	}
	return nil
}

// receiverSettings reads the receiver's flags and environment. Secrets and
// the control token come from the environment or files, never from the
// command line, where every user of the machine can read them (ps,
// /proc/<pid>/cmdline).
func receiverSettings(args []string) (receiverConfig, error) {
	fs := flag.NewFlagSet("herald receiver", flag.ContinueOnError)
	cfg := receiverConfig{}
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8090", "address to listen on")
	secretFile := fs.String("secret-file", "", "file of whsec_ secrets to verify signatures with, one per line or comma-separated; a request verifies with any of them (or env HERALD_RECEIVER_SECRET, comma-separated); neither skips verification")
	tokenFile := fs.String("token-file", "", fmt.Sprintf("file holding the bearer token the control endpoints /_herald/* require, at least %d characters (or env HERALD_RECEIVER_TOKEN); neither disables them", minTokenLength))
	fs.Func("secret", "removed: secrets on the command line are visible to every user of the machine; use --secret-file or HERALD_RECEIVER_SECRET", func(string) error {
		return errors.New("--secret is no longer accepted (the command line is visible to every user of the machine): use --secret-file or HERALD_RECEIVER_SECRET")
	})
	fs.IntVar(&cfg.status, "status", 200, "default status to answer")
	fs.DurationVar(&cfg.delay, "delay", 0, "default delay before answering")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	secrets, err := fromEnvOrFile("HERALD_RECEIVER_SECRET", "--secret-file", *secretFile)
	if err != nil {
		return cfg, err
	}
	for i, s := range strings.FieldsFunc(secrets, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		if _, err := signing.ParseSecret(s); err != nil {
			return cfg, fmt.Errorf("signing secret %d: %w", i+1, err)
		}
		cfg.secrets = append(cfg.secrets, s)
	}
	if cfg.token, err = fromEnvOrFile("HERALD_RECEIVER_TOKEN", "--token-file", *tokenFile); err != nil {
		return cfg, err
	}
	cfg.token = strings.TrimSpace(cfg.token)
	if cfg.token != "" && len(cfg.token) < minTokenLength {
		return cfg, fmt.Errorf("the control token must be at least %d characters", minTokenLength)
	}
	return cfg, nil
}

// fromEnvOrFile is the value of the environment variable env, or the
// content of file; giving both is an error, neither is "".
func fromEnvOrFile(env, flagName, file string) (string, error) {
	v := os.Getenv(env)
	if file == "" {
		return v, nil
	}
	if v != "" {
		return "", fmt.Errorf("give %s or %s, not both", env, flagName)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	if strings.TrimSpace(string(b)) == "" {
		return "", fmt.Errorf("%s: %s is empty", flagName, file)
	}
	return string(b), nil
}

// receiverConfig is how a receiver listens, verifies and answers.
type receiverConfig struct {
	listen  string
	secrets []string      // whsec_ secrets; a request verifies with any; none skips verification
	token   string        // bearer token the control endpoints require; empty disables them
	status  int           // default answer
	delay   time.Duration // default delay before answering
}

// newReceiver is the receiver's handler: webhooks on every path, and the
// control endpoints under /_herald/, which need cfg.token (see
// requireToken), except GET /_herald/healthz for probes.
func newReceiver(cfg receiverConfig) http.Handler {
	var (
		mu    sync.Mutex
		paths = map[string]behaviour{}
		order []arrival
	)
	mux := http.NewServeMux()
	control := http.NewServeMux()
	mux.Handle("/_herald/", requireToken(cfg.token, control))
	// GET /_herald/healthz answers ok, without a token: for readiness
	// probes, which cannot send one; it says nothing about deliveries.
	mux.HandleFunc("GET /_herald/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	// PUT /_herald/behaviour?path=/crm&status=500&delay=2s changes how one
	// path answers, so demos and e2e specs can break a receiver on purpose.
	control.HandleFunc("PUT /_herald/behaviour", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		b := behaviour{Status: cfg.status}
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
	control.HandleFunc("GET /_herald/received", func(w http.ResponseWriter, r *http.Request) {
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
	control.HandleFunc("GET /_herald/arrivals", func(w http.ResponseWriter, r *http.Request) {
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
		if len(cfg.secrets) > 0 {
			var err error
			for _, s := range cfg.secrets {
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
			b = behaviour{Status: cfg.status, Delay: cfg.delay}
		}
		if len(order) < maxArrivals {
			order = append(order, arrival{Path: r.URL.Path, ID: env.ID, Key: env.Key, Version: env.Version, Status: b.Status, Time: time.Now(),
				Authorization: digest(r.Header.Get("Authorization"))})
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
	return mux
}

// requireToken lets a request through to next only with "Authorization:
// Bearer <token>". Without a token configured, it refuses everything: the
// control endpoints change how the receiver answers and show what it got.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" {
			http.Error(w, "control endpoints are disabled: start the receiver with --token-file or HERALD_RECEIVER_TOKEN", http.StatusForbidden)
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="herald receiver"`)
			http.Error(w, "control endpoints need the receiver's bearer token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
