package controller

import (
	"encoding/json"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metaac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingac "k8s.io/client-go/applyconfigurations/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/herald-dev/herald/internal/egress"
)

// policyOf turns the apply configuration into the object the API server
// would store, so the test reads like the YAML a person reviews.
func policyOf(t *testing.T, ac *networkingac.NetworkPolicyApplyConfiguration) *networkingv1.NetworkPolicy {
	t.Helper()
	b, err := json.Marshal(ac)
	if err != nil {
		t.Fatal(err)
	}
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal(b, &np); err != nil {
		t.Fatal(err)
	}
	return &np
}

func specOf(t *testing.T, y string) networkingv1.NetworkPolicySpec {
	t.Helper()
	var s networkingv1.NetworkPolicySpec
	if err := yaml.UnmarshalStrict([]byte(y), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDispatcherNetworkPolicy(t *testing.T) {
	owners := []*metaac.OwnerReferenceApplyConfiguration{metaac.OwnerReference().
		WithAPIVersion("webhooks.herald.dev/v1alpha1").WithKind("WebhookEndpoint").WithName("crm").WithUID("uid-1")}
	cfg := networkPolicyConfig{
		NATSNamespace: "nats",
		NATSPort:      4223,
		APIServer:     []netip.Prefix{netip.MustParsePrefix("10.213.0.1/32")},
		EgressAllow:   []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24"), netip.MustParsePrefix("fd00:214::/64")},
		EgressDeny: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.0/15"),
			netip.MustParsePrefix("100.96.0.0/11"),          // inside 100.64.0.0/10 already
			netip.MustParsePrefix("::ffff:203.0.113.0/120"), // mapped: the IPv4 /24
			netip.MustParsePrefix("2001:db8:42::/48"),
			netip.MustParsePrefix("0.0.0.0/0"), // cannot be an exception of 0.0.0.0/0
		},
	}
	np := policyOf(t, dispatcherNetworkPolicy("tenant-a", owners, cfg))

	if np.Name != DispatcherName || np.Namespace != "tenant-a" {
		t.Errorf("got %s/%s, want tenant-a/%s", np.Namespace, np.Name, DispatcherName)
	}
	if np.Labels[managedByLabel] != managedByValue {
		t.Errorf("labels %v: the manager's cache only holds objects labelled %s=%s", np.Labels, managedByLabel, managedByValue)
	}
	if len(np.OwnerReferences) != 1 || np.OwnerReferences[0].UID != "uid-1" {
		t.Errorf("owner references %+v", np.OwnerReferences)
	}
	want := specOf(t, `
podSelector:
  matchLabels: {app.kubernetes.io/name: herald-dispatcher, app.kubernetes.io/component: dispatcher}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
  ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: nats}}}]
  ports: [{protocol: TCP, port: 4223}]
- to: [{ipBlock: {cidr: 10.213.0.1/32}}]
  ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 6443}]
- to:
  - ipBlock:
      cidr: 0.0.0.0/0
      except: [0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12,
        192.168.0.0/16, 198.18.0.0/15, 203.0.113.0/24, 224.0.0.0/4, 240.0.0.0/4]
  - ipBlock:
      cidr: "::/0"
      except: ["::/128", "::1/128", "2001:db8:42::/48", "fc00::/7", "fe80::/10", "ff00::/8"]
- to: [{ipBlock: {cidr: 10.214.0.0/24}}, {ipBlock: {cidr: "fd00:214::/64"}}]
`)
	if !equality.Semantic.DeepEqual(np.Spec, want) {
		got, _ := yaml.Marshal(np.Spec)
		t.Errorf("spec:\n%s", got)
	}
}

func TestDispatcherNetworkPolicyDefaults(t *testing.T) {
	np := policyOf(t, dispatcherNetworkPolicy("tenant-a", nil, networkPolicyConfig{}))
	want := specOf(t, `
podSelector:
  matchLabels: {app.kubernetes.io/name: herald-dispatcher, app.kubernetes.io/component: dispatcher}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
  ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
- to: [{namespaceSelector: {}}]
  ports: [{protocol: TCP, port: 4222}]
- ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 6443}]
- to:
  - ipBlock:
      cidr: 0.0.0.0/0
      except: [0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12,
        192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4]
  - ipBlock:
      cidr: "::/0"
      except: ["::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8"]
`)
	if !equality.Semantic.DeepEqual(np.Spec, want) {
		got, _ := yaml.Marshal(np.Spec)
		t.Errorf("spec:\n%s", got)
	}
}

// The policy selects exactly the pods the dispatcher Deployment runs.
func TestDispatcherNetworkPolicySelectsTheDispatcherPods(t *testing.T) {
	d := dispatcherDeployment("tenant-a", nil, DispatcherConfig{Image: "herald:test"})
	sel := d.Spec.Selector.MatchLabels
	np := policyOf(t, dispatcherNetworkPolicy("tenant-a", nil, networkPolicyConfig{}))
	if !equality.Semantic.DeepEqual(np.Spec.PodSelector.MatchLabels, sel) {
		t.Errorf("policy selects %v, the Deployment %v", np.Spec.PodSelector.MatchLabels, sel)
	}
	for k, v := range np.Spec.PodSelector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the dispatcher pods are labelled %v, without %s=%s", d.Spec.Template.Labels, k, v)
		}
	}
}

// Every range the policy keeps from the internet is one the guard refuses
// by default, so the two layers agree.
func TestNetworkPolicyExceptionsAreRefusedByTheGuard(t *testing.T) {
	g := egress.New(egress.Config{})
	for _, p := range notInternet {
		first := p.Masked().Addr()
		last := first
		for b := p.Bits(); b < first.BitLen(); b++ {
			last = setBit(last, b)
		}
		for _, a := range []netip.Addr{first, last} {
			if err := g.Check(a); err == nil {
				t.Errorf("%s (in %s) is cut out of the policy's internet but the guard allows it", a, p)
			}
		}
	}
}

// setBit sets bit i (0 is the most significant) of a.
func setBit(a netip.Addr, i int) netip.Addr {
	b := a.AsSlice()
	b[i/8] |= 0x80 >> (i % 8)
	out, _ := netip.AddrFromSlice(b)
	return out
}
