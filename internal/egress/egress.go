// Package egress decides which addresses Herald may send webhooks to.
//
// A Guard checks the IP address actually dialled, after DNS resolution,
// from a net.Dialer's Control hook: a hostname that resolves inward, or a
// DNS answer that changes between a check and the connection (DNS
// rebinding), cannot get past it, because there is no earlier check to
// fool. By default it refuses loopback, private, shared (CGNAT),
// link-local (which holds the cloud metadata services), unique-local,
// unspecified, multicast and reserved addresses; administrators add the
// cluster's own ranges to the denied set and open ranges with an allow
// list, which wins over every denied range.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// ErrRefused is wrapped by every error a Guard returns for a refused
// address (see RefusedError).
var ErrRefused = errors.New("egress refused")

// AllowFlag and DenyFlag are the flags of `herald manager` and `herald
// dispatcher` that set Config.Allow and Config.Deny; refusals name them.
const (
	AllowFlag = "--egress-allow"
	DenyFlag  = "--egress-deny"
)

// Config is what a Guard allows and refuses beyond its default denied set.
type Config struct {
	// Allow opens ranges; it wins over every denied range, the defaults
	// and Deny alike.
	Allow []netip.Prefix
	// Deny adds ranges to the default denied set: the cluster's pod and
	// Service ranges, when they are not already private.
	Deny []netip.Prefix
}

type denied struct {
	prefix netip.Prefix
	why    string
}

// defaultDenied is refused unless allowed. IPv4-mapped IPv6 addresses are
// checked as the IPv4 address they carry, so they need no entry here.
var defaultDenied = func() []denied {
	var out []denied
	add := func(why string, cidrs ...string) {
		for _, c := range cidrs {
			out = append(out, denied{netip.MustParsePrefix(c), why})
		}
	}
	add("a loopback address", "127.0.0.0/8", "::1/128")
	add("a private range", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
	add("the shared (CGNAT) range", "100.64.0.0/10")
	add("a link-local address (cloud metadata services live there)", "169.254.0.0/16", "fe80::/10")
	add("a unique-local IPv6 address", "fc00::/7")
	add("an unspecified address", "0.0.0.0/8", "::/128")
	add("a multicast address", "224.0.0.0/4", "ff00::/8")
	add("a reserved or broadcast address", "240.0.0.0/4")
	return out
}()

// nat64 is the well-known NAT64 prefix: an address in it reaches the IPv4
// address in its last 32 bits, which is checked too.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Guard refuses connections to denied addresses. The zero value is not
// usable; build one with New. A Guard is safe for concurrent use.
type Guard struct {
	allow []netip.Prefix
	deny  []denied
}

// New returns a Guard that refuses the default denied set plus cfg.Deny,
// except what cfg.Allow opens.
func New(cfg Config) *Guard {
	g := &Guard{deny: append([]denied(nil), defaultDenied...)}
	for _, p := range cfg.Allow {
		g.allow = append(g.allow, unmapPrefix(p))
	}
	for _, p := range cfg.Deny {
		g.deny = append(g.deny, denied{unmapPrefix(p), "a range denied by " + DenyFlag})
	}
	return g
}

// Check returns nil when addr may be dialled, or a *RefusedError (which
// wraps ErrRefused) saying why not.
func (g *Guard) Check(addr netip.Addr) error {
	addr = addr.Unmap().WithZone("")
	if err := g.check(addr); err != nil {
		return err
	}
	if nat64.Contains(addr) {
		b := addr.As16()
		return g.check(netip.AddrFrom4([4]byte(b[12:])))
	}
	return nil
}

func (g *Guard) check(addr netip.Addr) error {
	if !addr.IsValid() {
		return &RefusedError{Why: "not an IP address"}
	}
	for _, p := range g.allow {
		if p.Contains(addr) {
			return nil
		}
	}
	for _, d := range g.deny {
		if d.prefix.Contains(addr) {
			return &RefusedError{Addr: addr, Why: d.why}
		}
	}
	return nil
}

// Control is a net.Dialer Control hook: it runs after DNS resolution with
// the address about to be connected, and refuses it unless Check allows
// it. Set it on every dialer that carries a webhook, including the one
// that reaches a proxy: the proxy's address is checked like any other.
// An address it cannot parse is refused.
func (g *Guard) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot check address %q: %w", ErrRefused, address, err)
	}
	return g.Check(ap.Addr())
}

// RefusedError is a refused address: it names the address, why it is
// refused and the flag that would open it.
type RefusedError struct {
	Addr netip.Addr
	Why  string
}

func (e *RefusedError) Error() string {
	if !e.Addr.IsValid() {
		return "egress refused: " + e.Why
	}
	return fmt.Sprintf("egress to %s refused: %s; an administrator can allow it with %s=%s",
		e.Addr, e.Why, AllowFlag, netip.PrefixFrom(e.Addr, e.Addr.BitLen()))
}

// Unwrap makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// ParsePrefixes reads a comma-separated list of CIDRs, as the flags take
// them; a bare address means just that address (/32 or /128).
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR or an IP address: %w", f, err)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) into
// the IPv4 prefix it means, since addresses are checked unmapped.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// PrefixList is a flag.Value for a comma-separated CIDR list.
type PrefixList struct{ P *[]netip.Prefix }

func (l PrefixList) String() string {
	if l.P == nil {
		return ""
	}
	s := make([]string, len(*l.P))
	for i, p := range *l.P {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Set adds to the list, so the flag may also be repeated.
func (l PrefixList) Set(s string) error {
	ps, err := ParsePrefixes(s)
	if err != nil {
		return err
	}
	*l.P = append(*l.P, ps...)
	return nil
}
