package natsauth

import (
	"fmt"

	"github.com/nats-io/nkeys"
)

// DefaultAccount is the NATS account every Herald client lives in. One
// account keeps JetStream's streams in one place; namespaces are kept
// apart by each user's permissions. That leaves reply subjects, which
// NATS does not check (docs/operations.md, the known gap): accounts per
// namespace would close it.
const DefaultAccount = "HERALD"

// Keys are the two secrets a Herald NATS has: the manager's user seed
// (how the manager connects) and the callout's account seed (how it
// signs the users it lets in). The server's configuration holds only
// their public halves.
type Keys struct {
	ManagerSeed, IssuerSeed []byte
}

// NewKeys makes a fresh pair.
func NewKeys() (Keys, error) {
	u, err := nkeys.CreateUser()
	if err != nil {
		return Keys{}, fmt.Errorf("creating the manager's nkey: %w", err)
	}
	a, err := nkeys.CreateAccount()
	if err != nil {
		return Keys{}, fmt.Errorf("creating the callout issuer's nkey: %w", err)
	}
	us, err := u.Seed()
	if err != nil {
		return Keys{}, err
	}
	as, err := a.Seed()
	if err != nil {
		return Keys{}, err
	}
	return Keys{ManagerSeed: us, IssuerSeed: as}, nil
}

// ServerConfig is the part of nats-server's configuration that turns on
// Herald's auth: the account, the manager as its one configured user
// (who bypasses the callout and serves it), and the callout itself. It
// holds public keys only, so it can live in a ConfigMap.
func (k Keys) ServerConfig(account string) (string, error) {
	u, err := publicKey(k.ManagerSeed)
	if err != nil {
		return "", fmt.Errorf("manager seed: %w", err)
	}
	a, err := publicKey(k.IssuerSeed)
	if err != nil {
		return "", fmt.Errorf("issuer seed: %w", err)
	}
	return fmt.Sprintf(`# Herald: clients other than the manager present a Kubernetes
# ServiceAccount token; the manager's auth callout decides what they may do.
accounts {
  %[1]s {
    jetstream: enabled
    users: [ { nkey: %[2]q } ]
  }
}
authorization {
  auth_callout {
    issuer: %[3]q
    account: %[1]s
    auth_users: [ %[2]q ]
  }
}
`, account, u, a), nil
}

func publicKey(seed []byte) (string, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return "", err
	}
	return kp.PublicKey()
}
