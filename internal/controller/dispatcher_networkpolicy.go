package controller

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	metaac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingac "k8s.io/client-go/applyconfigurations/networking/v1"
)

// DefaultNATSPort is NATS's client port, which the dispatchers' NetworkPolicy
// opens when the configuration names none.
const DefaultNATSPort int32 = 4222

// namespaceNameLabel is the label the API server sets on every namespace
// to its name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// networkPolicyConfig is what the dispatchers' NetworkPolicy needs of the
// dispatcher configuration. Its fields are meant to become
// DispatcherConfig's (EgressAllow and EgressDeny already are), so that
// dispatcherNetworkPolicy can take a DispatcherConfig.
type networkPolicyConfig struct {
	// NATSNamespace is the namespace the NATS pods run in; empty means any
	// namespace.
	NATSNamespace string
	// NATSPort is the NATS pods' client port (the Service's targetPort: a
	// policy sees the address after the Service is resolved); 0 means
	// DefaultNATSPort.
	NATSPort int32
	// APIServer are the addresses of the Kubernetes API server (the
	// endpoints of the `kubernetes` Service in `default`, not its
	// ClusterIP); empty means any address on the API ports.
	APIServer []netip.Prefix
	// EgressAllow and EgressDeny are the dispatchers' --egress-allow and
	// --egress-deny: the policy opens the allowed ranges too, or it would
	// block what the guard lets through, and cuts the denied ones out of
	// the internet.
	EgressAllow, EgressDeny []netip.Prefix
}

// notInternet are the ranges the egress guard refuses by default
// (internal/egress), cut out of the policy's internet rule. Every one must
// be refused by the guard; a test checks it.
var notInternet = func() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}()

// dispatcherPodSelector matches the dispatcher pods of a namespace: the
// labels the dispatcher Deployment selects its pods by.
func dispatcherPodSelector() map[string]string {
	return map[string]string{nameLabel: DispatcherName, componentLabel: "dispatcher"}
}

// dispatcherNetworkPolicy is the egress guard's second layer: a policy
// that lets the namespace's dispatcher pods reach DNS, NATS, the API
// server and the internet, and nothing else, so what the guard cannot see
// (a bug in it, a connection that does not go through its dialer) still
// cannot reach the cluster's pods, the node or a metadata service. It only
// works with a CNI that enforces NetworkPolicy. Ingress is not restricted:
// the policy lists only Egress.
func dispatcherNetworkPolicy(ns string, owners []*metaac.OwnerReferenceApplyConfiguration, cfg networkPolicyConfig) *networkingac.NetworkPolicyApplyConfiguration {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(proto corev1.Protocol, n int32) *networkingac.NetworkPolicyPortApplyConfiguration {
		return networkingac.NetworkPolicyPort().WithProtocol(proto).WithPort(intstr.FromInt32(n))
	}
	natsPort := cfg.NATSPort
	if natsPort == 0 {
		natsPort = DefaultNATSPort
	}
	natsNamespaces := metaac.LabelSelector()
	if cfg.NATSNamespace != "" {
		natsNamespaces = natsNamespaces.WithMatchLabels(map[string]string{namespaceNameLabel: cfg.NATSNamespace})
	}

	rules := []*networkingac.NetworkPolicyEgressRuleApplyConfiguration{
		// The cluster's DNS, in kube-system: a tenant's own pod labelled
		// k8s-app=kube-dns elsewhere is no DNS server.
		networkingac.NetworkPolicyEgressRule().
			WithTo(networkingac.NetworkPolicyPeer().
				WithNamespaceSelector(metaac.LabelSelector().WithMatchLabels(map[string]string{"kubernetes.io/metadata.name": "kube-system"})).
				WithPodSelector(metaac.LabelSelector().WithMatchLabels(map[string]string{"k8s-app": "kube-dns"}))).
			WithPorts(port(udp, 53), port(tcp, 53)),
		// NATS: the events, the health and version records.
		networkingac.NetworkPolicyEgressRule().
			WithTo(networkingac.NetworkPolicyPeer().WithNamespaceSelector(natsNamespaces)).
			WithPorts(port(tcp, natsPort)),
	}
	// The API server, for the namespace's endpoints, policies and
	// Secrets. It is rarely a pod (host network, or outside the cluster),
	// so no selector names it, and its addresses are private, so the
	// internet rule does not cover it.
	api := networkingac.NetworkPolicyEgressRule().WithPorts(port(tcp, 443), port(tcp, 6443))
	for _, p := range cfg.APIServer {
		api = api.WithTo(networkingac.NetworkPolicyPeer().WithIPBlock(networkingac.IPBlock().WithCIDR(unmappedPrefix(p).String())))
	}
	rules = append(rules, api)
	// The internet, on any port (receivers listen where they like): every
	// address but those the guard refuses by default or by --egress-deny.
	rules = append(rules, networkingac.NetworkPolicyEgressRule().WithTo(
		networkingac.NetworkPolicyPeer().WithIPBlock(internetBlock(netip.MustParsePrefix("0.0.0.0/0"), cfg.EgressDeny)),
		networkingac.NetworkPolicyPeer().WithIPBlock(internetBlock(netip.MustParsePrefix("::/0"), cfg.EgressDeny))))
	// What --egress-allow opens, on any port: policies add up, so this
	// reopens an allowed range inside a denied one, as the guard does.
	if len(cfg.EgressAllow) > 0 {
		allow := networkingac.NetworkPolicyEgressRule()
		for _, p := range cfg.EgressAllow {
			allow = allow.WithTo(networkingac.NetworkPolicyPeer().WithIPBlock(networkingac.IPBlock().WithCIDR(unmappedPrefix(p).String())))
		}
		rules = append(rules, allow)
	}

	return networkingac.NetworkPolicy(DispatcherName, ns).WithLabels(dispatcherLabels()).WithOwnerReferences(owners...).
		WithSpec(networkingac.NetworkPolicySpec().
			WithPodSelector(metaac.LabelSelector().WithMatchLabels(dispatcherPodSelector())).
			WithPolicyTypes(networkingv1.PolicyTypeEgress).
			WithEgress(rules...))
}

// internetBlock is all of one address family (all) except the guard's
// default denied ranges and the denied ones of that family. A denied range
// already inside another is left out; the API server wants each exception
// strictly inside the block, so a denied /0 is left out too (the guard
// refuses it; the policy cannot say "nothing" with an ipBlock).
func internetBlock(all netip.Prefix, deny []netip.Prefix) *networkingac.IPBlockApplyConfiguration {
	var except []netip.Prefix
	for _, p := range append(slices.Clone(notInternet), deny...) {
		p = unmappedPrefix(p)
		if p.Addr().Is4() != all.Addr().Is4() || p.Bits() == 0 {
			continue
		}
		except = append(except, p)
	}
	// Wider first, so a range inside an earlier one is seen to be covered.
	slices.SortFunc(except, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var kept []netip.Prefix
	for i, p := range except {
		if !slices.ContainsFunc(except[:i], func(q netip.Prefix) bool { return q.Contains(p.Addr()) }) {
			kept = append(kept, p)
		}
	}
	// In address order, so the applied object does not change with the
	// order of the flags.
	slices.SortFunc(kept, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	strs := make([]string, len(kept))
	for i, p := range kept {
		strs[i] = p.String()
	}
	return networkingac.IPBlock().WithCIDR(all.String()).WithExcept(strs...)
}

// unmappedPrefix turns an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104)
// into the IPv4 prefix it means, as the egress guard reads it.
func unmappedPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}
