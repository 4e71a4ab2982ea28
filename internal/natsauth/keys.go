package natsauth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// DefaultAccount is the name of the NATS account that holds Herald's
// streams and buckets and the manager's connection. Every namespace gets
// an account of its own besides (NamespaceAccount): a NATS account is the
// only boundary JetStream's answers respect, because NATS checks a
// publish's subject against the user's permissions but never its reply
// subject, to which JetStream then writes.
const DefaultAccount = "HERALD"

// Keys are the secrets of a Herald NATS, all nkey seeds: the operator
// (signs the accounts), the system account (its user pushes namespace
// accounts to the server), Herald's account (signs the manager's user,
// the callout's answers and, through NamespaceKey, the namespaces'
// accounts) and the manager's user. The server's configuration
// (ServerConfig) holds only public keys and JWTs signed with them.
type Keys struct {
	OperatorSeed, SystemSeed, IssuerSeed, ManagerSeed []byte
}

// KeyFiles name the seeds in a keys directory (herald nats-keys writes
// them; the manager reads them with --nats-keys-dir).
var KeyFiles = [...]string{"operator.nk", "system.nk", "issuer.nk", "manager.nk"}

// Seeds are the keys in KeyFiles' order.
func (k *Keys) Seeds() [4]*[]byte {
	return [4]*[]byte{&k.OperatorSeed, &k.SystemSeed, &k.IssuerSeed, &k.ManagerSeed}
}

// NewKeys makes a fresh set.
func NewKeys() (Keys, error) {
	var k Keys
	for i, create := range []func() (nkeys.KeyPair, error){nkeys.CreateOperator, nkeys.CreateAccount, nkeys.CreateAccount, nkeys.CreateUser} {
		kp, err := create()
		if err != nil {
			return Keys{}, fmt.Errorf("creating %s: %w", KeyFiles[i], err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return Keys{}, err
		}
		*k.Seeds()[i] = seed
	}
	return k, k.Check()
}

// Check tells which seed is missing or of the wrong kind, naming its
// file, never its content.
func (k Keys) Check() error {
	want := []func(string) bool{nkeys.IsValidPublicOperatorKey, nkeys.IsValidPublicAccountKey, nkeys.IsValidPublicAccountKey, nkeys.IsValidPublicUserKey}
	for i, seed := range k.Seeds() {
		pub, err := publicKey(*seed)
		if err != nil || !want[i](pub) {
			return fmt.Errorf("%s is not a %s nkey seed (herald nats-keys writes one)", KeyFiles[i], strings.TrimSuffix(KeyFiles[i], ".nk"))
		}
	}
	return nil
}

func (k Keys) pair(seed []byte) nkeys.KeyPair {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		panic("natsauth: keys used before Check: " + err.Error())
	}
	return kp
}

// Issuer is Herald's account key: the auth callout's issuer.
func (k Keys) Issuer() nkeys.KeyPair { return k.pair(k.IssuerSeed) }

// Operator signs the accounts.
func (k Keys) Operator() nkeys.KeyPair { return k.pair(k.OperatorSeed) }

// HeraldAccount is the public key of Herald's account.
func (k Keys) HeraldAccount() string { return mustPublic(k.Issuer()) }

// NamespaceKey is namespace ns's account key, derived from Herald's
// account seed, so nothing is stored per namespace and every manager
// replica signs the same account.
func (k Keys) NamespaceKey(ns string) (nkeys.KeyPair, error) {
	mac := hmac.New(sha256.New, k.IssuerSeed)
	mac.Write([]byte("herald namespace account\x00" + ns))
	return nkeys.FromRawSeed(nkeys.PrefixByteAccount, mac.Sum(nil))
}

// ManagerJWT is the manager's user in Herald's account; it is the
// callout's one auth user, so it bypasses the callout and serves it.
func (k Keys) ManagerJWT() (string, error) {
	uc := jwt.NewUserClaims(mustPublic(k.pair(k.ManagerSeed)))
	uc.Name = "herald-manager"
	return uc.Encode(k.Issuer())
}

// ManagerSigner signs the server's nonce with the manager's seed.
func (k Keys) ManagerSigner() nkeys.KeyPair { return k.pair(k.ManagerSeed) }

// SystemUser is a fresh user of the system account, for pushing account
// JWTs ($SYS.REQ.CLAIMS.UPDATE).
func (k Keys) SystemUser() (string, nkeys.KeyPair, error) {
	u, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, err
	}
	uc := jwt.NewUserClaims(mustPublic(u))
	uc.Name = "herald-manager-system"
	signed, err := uc.Encode(k.pair(k.SystemSeed))
	return signed, u, err
}

// ServerConfig is the part of nats-server's configuration that turns on
// Herald's auth, in operator mode: the operator, the system account and
// Herald's account (with the manager as the auth callout's one user)
// preloaded into a full account resolver storing in resolverDir, to
// which the manager adds the namespaces' accounts as clients need them;
// and the default sentinel, so a client that presents only a
// ServiceAccount token is handed to the callout. It holds public keys
// and JWTs only, so it can live in a ConfigMap.
func (k Keys) ServerConfig(resolverDir string) (string, error) {
	if err := k.Check(); err != nil {
		return "", err
	}
	op := k.Operator()
	sys, herald := mustPublic(k.pair(k.SystemSeed)), k.HeraldAccount()
	oc := jwt.NewOperatorClaims(mustPublic(op))
	oc.Name = "herald"
	oc.SystemAccount = sys
	opJWT, err := oc.Encode(op)
	if err != nil {
		return "", fmt.Errorf("signing the operator: %w", err)
	}
	sc := jwt.NewAccountClaims(sys)
	sc.Name = "SYS"
	sysJWT, err := sc.Encode(op)
	if err != nil {
		return "", fmt.Errorf("signing the system account: %w", err)
	}
	hc := jwt.NewAccountClaims(herald)
	hc.Name = DefaultAccount
	hc.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1, MemoryMaxStreamBytes: -1, DiskMaxStreamBytes: -1}
	hc.Exports = heraldExports()
	hc.Authorization.AuthUsers.Add(mustPublic(k.ManagerSigner()))
	// The callout places each client in its namespace's account, all of
	// them signed by the operator through this manager.
	hc.Authorization.AllowedAccounts.Add(jwt.AnyAccount)
	heraldJWT, err := hc.Encode(op)
	if err != nil {
		return "", fmt.Errorf("signing Herald's account: %w", err)
	}
	// A sentinel user may do nothing: it only gets a token to the callout.
	sent := jwt.NewUserClaims(mustPublic(mustUser()))
	sent.Name = "herald-sentinel"
	sent.BearerToken = true
	sent.Pub.Deny.Add(">")
	sent.Sub.Deny.Add(">")
	sentJWT, err := sent.Encode(k.Issuer())
	if err != nil {
		return "", fmt.Errorf("signing the sentinel: %w", err)
	}
	return fmt.Sprintf(`# Herald: operator mode. The manager connects as Herald's account's auth
# user; every other client presents a Kubernetes ServiceAccount token,
# which the manager's auth callout turns into a user of the token's
# namespace's account. The manager pushes those accounts here.
operator: %q
system_account: %q
resolver: {
  type: full
  dir: %q
  allow_delete: false
  interval: "2m"
  timeout: "5s"
}
resolver_preload: {
  %s: %q
  %s: %q
}
default_sentinel: %q
`, opJWT, sys, resolverDir, sys, sysJWT, herald, heraldJWT, sentJWT), nil
}

func mustUser() nkeys.KeyPair {
	u, err := nkeys.CreateUser()
	if err != nil {
		panic(err)
	}
	return u
}

func mustPublic(kp nkeys.KeyPair) string {
	pub, err := kp.PublicKey()
	if err != nil {
		panic("natsauth: " + err.Error())
	}
	return pub
}

func publicKey(seed []byte) (string, error) {
	if len(seed) == 0 {
		return "", errors.New("empty")
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return "", err
	}
	return kp.PublicKey()
}

// ManagerOption connects as the manager's user.
func (k Keys) ManagerOption() nats.Option {
	return userOption(k.ManagerJWT, k.ManagerSigner())
}

// SystemOption connects as a fresh user of the system account.
func (k Keys) SystemOption() (nats.Option, error) {
	signed, u, err := k.SystemUser()
	if err != nil {
		return nil, fmt.Errorf("signing a system user: %w", err)
	}
	return userOption(func() (string, error) { return signed, nil }, u), nil
}

func userOption(userJWT func() (string, error), kp nkeys.KeyPair) nats.Option {
	return nats.UserJWT(userJWT, func(nonce []byte) ([]byte, error) { return kp.Sign(nonce) })
}

// ReadKeys reads the seeds from dir (KeyFiles).
func ReadKeys(dir string) (Keys, error) {
	var k Keys
	for i, p := range k.Seeds() {
		b, err := os.ReadFile(filepath.Join(dir, KeyFiles[i]))
		if err != nil {
			return Keys{}, fmt.Errorf("reading Herald's NATS keys: %w", err)
		}
		*p = bytes.TrimSpace(b)
	}
	return k, k.Check()
}

// Write stores the seeds in dir, readable by the owner only.
func (k Keys) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i, p := range k.Seeds() {
		if err := os.WriteFile(filepath.Join(dir, KeyFiles[i]), *p, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", KeyFiles[i], err)
		}
	}
	return nil
}
