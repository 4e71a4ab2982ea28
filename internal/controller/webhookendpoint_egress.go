package controller

import (
	"context"
	"net/netip"
	"net/url"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/egress"
)

// reconcileEgress refuses, before any attempt, an endpoint whose URL's
// host is an IP address the egress guard refuses. Sets obs.Stalled
// (URLRefused) unless an earlier step did. Hostnames are not resolved
// here: the dispatcher's guard checks the address each connection
// actually dials, and records such attempts as EgressRefused.
func (r *WebhookEndpointReconciler) reconcileEgress(_ context.Context, ep *v1.WebhookEndpoint, obs *observation, _ *passState) error {
	if s, ok := asStalled(urlRefused(egressOrDefault(r.Egress), ep.Spec.URL)); ok && obs.Stalled == nil {
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
