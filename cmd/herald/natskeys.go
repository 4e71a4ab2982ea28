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
	register("nats-keys", "write Herald's NATS keys and the nats-server auth configuration (keys once; kept on later runs)", runNATSKeys)
}

// runNATSKeys makes the keys of a Herald NATS in a directory, and the
// server configuration (operator mode) that holds their public halves.
// Keys that exist are kept, so running it again (make dev, an install
// script) changes no identity; the configuration is rewritten from them.
func runNATSKeys(_ context.Context, args []string) error {
	fset := flag.NewFlagSet("herald nats-keys", flag.ContinueOnError)
	out := fset.String("out", ".", "directory for the seeds (operator.nk, system.nk, issuer.nk, manager.nk: the secrets, mode 0600) and auth.conf (public keys and JWTs only)")
	resolverDir := fset.String("resolver-dir", "/data/accounts", "where nats-server's account resolver stores the namespaces' accounts (auth.conf's resolver.dir): a persistent directory beside JetStream's")
	if err := fset.Parse(args); err != nil {
		return err
	}
	keys, err := loadOrCreateKeys(*out)
	if err != nil {
		return err
	}
	conf, err := keys.ServerConfig(*resolverDir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "auth.conf"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("writing auth.conf: %w", err)
	}
	fmt.Printf("wrote %s: include auth.conf in nats-server's configuration; give the .nk seeds to the manager only (--nats-keys-dir)\n", *out)
	return nil
}

func loadOrCreateKeys(dir string) (natsauth.Keys, error) {
	found := 0
	for _, name := range natsauth.KeyFiles {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			found++
		} else if !errors.Is(err, fs.ErrNotExist) {
			return natsauth.Keys{}, err
		}
	}
	switch found {
	case len(natsauth.KeyFiles):
		return natsauth.ReadKeys(dir)
	case 0:
	default:
		return natsauth.Keys{}, fmt.Errorf("%s has only some of %v: remove them to make a new set", dir, natsauth.KeyFiles)
	}
	keys, err := natsauth.NewKeys()
	if err != nil {
		return natsauth.Keys{}, err
	}
	return keys, keys.Write(dir)
}
