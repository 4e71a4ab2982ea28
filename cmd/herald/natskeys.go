package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/herald-dev/herald/internal/natsauth"
)

func init() {
	register("nats-keys", "write the manager's NATS keys and the nats-server auth configuration (once; kept on later runs)", runNATSKeys)
}

// runNATSKeys makes the two keys of a Herald NATS in a directory, and the
// server configuration that names their public halves. Keys that exist
// are kept, so running it again (make dev, an install script) changes
// nothing; the configuration is rewritten from them.
func runNATSKeys(_ context.Context, args []string) error {
	fset := flag.NewFlagSet("herald nats-keys", flag.ContinueOnError)
	out := fset.String("out", ".", "directory for manager.nk and issuer.nk (the secrets, mode 0600) and auth.conf (public keys only)")
	account := fset.String("account", natsauth.DefaultAccount, "the NATS account Herald's clients live in")
	if err := fset.Parse(args); err != nil {
		return err
	}
	keys, err := loadOrCreateKeys(*out)
	if err != nil {
		return err
	}
	conf, err := keys.ServerConfig(*account)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "auth.conf"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("writing auth.conf: %w", err)
	}
	fmt.Printf("wrote %s: include auth.conf in nats-server's configuration; give manager.nk and issuer.nk to the manager only (--nats-nkey-file, --nats-callout-issuer-file)\n", *out)
	return nil
}

func loadOrCreateKeys(dir string) (natsauth.Keys, error) {
	mp, ip := filepath.Join(dir, "manager.nk"), filepath.Join(dir, "issuer.nk")
	m, merr := os.ReadFile(mp)
	i, ierr := os.ReadFile(ip)
	switch {
	case merr == nil && ierr == nil:
		return natsauth.Keys{ManagerSeed: m, IssuerSeed: i}, nil
	case !errors.Is(merr, fs.ErrNotExist) && merr != nil:
		return natsauth.Keys{}, fmt.Errorf("reading %s: %w", mp, merr)
	case !errors.Is(ierr, fs.ErrNotExist) && ierr != nil:
		return natsauth.Keys{}, fmt.Errorf("reading %s: %w", ip, ierr)
	case merr == nil || ierr == nil:
		return natsauth.Keys{}, fmt.Errorf("%s has only one of manager.nk and issuer.nk: remove it to make a new pair", dir)
	}
	keys, err := natsauth.NewKeys()
	if err != nil {
		return natsauth.Keys{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return natsauth.Keys{}, err
	}
	for p, b := range map[string][]byte{mp: keys.ManagerSeed, ip: keys.IssuerSeed} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return natsauth.Keys{}, fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return keys, nil
}
