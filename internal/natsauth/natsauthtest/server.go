package natsauthtest

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/testenv"
)

// Server is a real nats-server configured with the ServerConfig Herald
// ships and the manager's auth callout serving it against an API server,
// as Herald runs in a cluster.
type Server struct {
	URL  string
	Keys natsauth.Keys
	// Admin is the manager's connection (the callout's auth user), which
	// acts across namespaces.
	Admin   *nats.Conn
	AdminJS jetstream.JetStream
	Callout *natsauth.Callout

	close []func()
}

// Start runs the server in dir, with the callout reviewing tokens through
// c and readers as the callout's --nats-readers. Close stops it all.
func Start(dir string, c client.Client, readers []string, log logr.Logger) (*Server, error) {
	s := &Server{}
	var err error
	if s.Keys, err = natsauth.NewKeys(); err != nil {
		return nil, err
	}
	conf, err := s.Keys.ServerConfig(filepath.Join(dir, "accounts"))
	if err != nil {
		return nil, err
	}
	srv, err := testenv.NATSConfig(dir, conf)
	if err != nil {
		return nil, err
	}
	s.close = append(s.close, srv.Shutdown)
	s.URL = srv.ClientURL()
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, err
	}
	if s.Admin, err = nats.Connect(s.URL, s.Keys.ManagerOption()); err != nil {
		return fail(fmt.Errorf("connecting as the manager: %w", err))
	}
	s.close = append(s.close, s.Admin.Close)
	if s.AdminJS, err = jetstream.New(s.Admin); err != nil {
		return fail(err)
	}
	sysOpt, err := s.Keys.SystemOption()
	if err != nil {
		return fail(err)
	}
	sys, err := nats.Connect(s.URL, sysOpt)
	if err != nil {
		return fail(fmt.Errorf("connecting as the system account: %w", err))
	}
	s.close = append(s.close, sys.Close)
	s.Callout = &natsauth.Callout{NC: s.Admin, Accounts: &natsauth.Accounts{Keys: s.Keys, SYS: sys}, Client: c, Readers: readers, Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = s.Callout.Start(ctx) }()
	s.close = append(s.close, cancel)
	return s, nil
}

// Close stops the callout, closes the connections and shuts the server down.
func (s *Server) Close() {
	for i := len(s.close) - 1; i >= 0; i-- {
		s.close[i]()
	}
	s.close = nil
}
