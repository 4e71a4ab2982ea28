package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/egress"
)

// egressLookupTimeout bounds the resolution of an endpoint's hostname. A
// pass must not wait long on a slow DNS server, and a lookup that times
// out decides nothing (see urlRefusedResolving).
const egressLookupTimeout = 2 * time.Second

// maxRefusedListed caps the addresses a URLRefused message lists for a
// hostname: a name with many records must not fill the condition.
const maxRefusedListed = 8

// HostLookup resolves a hostname to its addresses, as
// net.Resolver.LookupNetIP(ctx, "ip", host) does.
type HostLookup func(ctx context.Context, host string) ([]netip.Addr, error)

// defaultLookup is the system resolver: the cluster's DNS in a pod. A
// name with a dot is asked as absolute: with the pod's ndots:5, the
// resolver would try the manager's own search domains first, and answer
// for a name in herald-system rather than the one the tenant wrote.
func defaultLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if strings.Contains(host, ".") && !strings.HasSuffix(host, ".") {
		host += "."
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// reconcileEgress refuses, before any attempt, an endpoint whose URL's
// host is an IP address the egress guard refuses, or a hostname that
// resolves only to such addresses. Sets obs.Stalled (URLRefused) unless an
// earlier step did. The hostname is resolved again on every pass (the
// resync requeues every endpoint), so a DNS change, or a range an
// administrator opens, clears the condition without an edit.
func (r *WebhookEndpointReconciler) reconcileEgress(ctx context.Context, ep *v1.WebhookEndpoint, obs *observation, _ *passState) error {
	if obs.Stalled != nil {
		return nil // one problem at a time, and no lookup for it
	}
	lookup := r.LookupNetIP
	if lookup == nil {
		lookup = defaultLookup
	}
	if s, ok := asStalled(urlRefusedResolving(ctx, egressOrDefault(r.Egress), lookup, ep.Spec.URL)); ok {
		obs.Stalled = s
	}
	return nil
}

func egressOrDefault(g *egress.Guard) *egress.Guard {
	if g != nil {
		return g
	}
	return defaultEgress
}

// defaultEgress is the guard a reconciler without one uses: the default
// denied set, as the dispatcher without --egress-allow.
var defaultEgress = egress.New(egress.Config{})

// urlRefused returns a URLRefused stalled error when rawURL's host is an IP
// literal that g refuses; the message names the address and the flag that
// would open it. Anything else (a hostname, a URL it cannot parse, which
// the API's validation refuses) is nil.
func urlRefused(g *egress.Guard, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	addr, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return nil
	}
	if err := g.Check(addr); err != nil {
		return stalled(v1.ReasonURLRefused, "spec.url: "+err.Error(), err)
	}
	return nil
}

// urlRefusedResolving is urlRefused, and for a hostname it resolves the
// name with lookup (bounded by egressLookupTimeout) and returns a
// URLRefused stalled error when every address is refused (see
// hostRefused).
//
// A name that does not resolve (NXDOMAIN, a timeout, a DNS server that is
// down) is not refused: the answer can change at any moment, and the
// dispatcher's guard, which checks the address each connection actually
// dials, stays the authority. So does it for a name that resolves to some
// allowed addresses: the dialer tries the others, and each is checked.
//
// A name without a dot (other than localhost, which RFC 6761 makes
// loopback everywhere) is not resolved: the dispatcher's resolver
// completes it with the search domains of the endpoint's namespace, and
// the manager's would complete it with its own, so the manager's answer
// would be about some other name.
func urlRefusedResolving(ctx context.Context, g *egress.Guard, lookup HostLookup, rawURL string) error {
	if err := urlRefused(g, rawURL); err != nil {
		return err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	host := u.Hostname()
	if _, err := netip.ParseAddr(host); err == nil || !resolvable(host) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, egressLookupTimeout)
	defer cancel()
	addrs, err := lookup(ctx, host)
	if err != nil {
		// Not an error of the pass: see above. The dispatcher records its
		// own attempts' failures.
		ctrl.LoggerFrom(ctx).V(1).Info("not checking the URL's host before dialling: it did not resolve", "host", host, "error", err.Error())
		return nil
	}
	return hostRefused(g, host, addrs)
}

// resolvable reports whether the manager may resolve host on the
// endpoint's behalf: a name with a dot, or localhost.
func resolvable(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	return h != "" && (strings.Contains(h, ".") || h == "localhost")
}

// hostRefused returns a URLRefused stalled error when host resolved to at
// least one address and g refuses every one of them; the message names
// the host, each refused address with why, and the --egress-allow value
// that would open them. It is nil when any address is allowed or there is
// none. Addresses are listed sorted, so the message (and the status) does
// not change with the order of the DNS answer.
func hostRefused(g *egress.Guard, host string, addrs []netip.Addr) error {
	var refused []*egress.RefusedError
	for _, a := range addrs {
		err := g.Check(a)
		if err == nil {
			return nil
		}
		var re *egress.RefusedError
		if !errors.As(err, &re) || !re.Addr.IsValid() {
			return nil // not an address the guard could name; the dialer decides
		}
		refused = append(refused, re)
	}
	if len(refused) == 0 {
		return nil
	}
	// Checked addresses are unmapped (::ffff:127.0.0.1 is 127.0.0.1), so
	// an answer may hold one address twice.
	slices.SortFunc(refused, func(a, b *egress.RefusedError) int { return a.Addr.Compare(b.Addr) })
	refused = slices.CompactFunc(refused, func(a, b *egress.RefusedError) bool { return a.Addr == b.Addr })

	listed := refused[:min(len(refused), maxRefusedListed)]
	parts := make([]string, 0, len(listed)+1)
	opens := make([]string, 0, len(listed))
	errs := make([]error, 0, len(refused))
	for _, re := range listed {
		parts = append(parts, fmt.Sprintf("%s (%s)", re.Addr, re.Why))
		opens = append(opens, netip.PrefixFrom(re.Addr, re.Addr.BitLen()).String())
	}
	if n := len(refused) - len(listed); n > 0 {
		parts = append(parts, fmt.Sprintf("and %d more", n))
	}
	for _, re := range refused {
		errs = append(errs, re)
	}
	them := "it"
	if len(refused) > 1 {
		them = "them"
	}
	msg := fmt.Sprintf("spec.url: host %q resolves only to addresses the egress guard refuses: %s; an administrator can allow %s with %s=%s",
		host, strings.Join(parts, ", "), them, egress.AllowFlag, strings.Join(opens, ","))
	return stalled(v1.ReasonURLRefused, msg, fmt.Errorf("host %q: %w", host, errors.Join(errs...)))
}
