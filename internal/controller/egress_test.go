package controller

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/egress"
	"github.com/herald-dev/herald/internal/streams"
)

// loopbackEgress opens 127.0.0.0/8, where the suite's receivers listen.
var loopbackEgress = egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})

func TestURLRefused(t *testing.T) {
	g := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24")}})
	for url, want := range map[string]string{
		"http://169.254.169.254/latest/meta-data": "spec.url: egress to 169.254.169.254 refused: a link-local address (cloud metadata services live there); an administrator can allow it with --egress-allow=169.254.169.254/32",
		"http://127.0.0.1:8081/healthz":           "egress to 127.0.0.1 refused",
		"https://[::1]:8443/":                     "egress to ::1 refused",
		"https://[::ffff:10.0.0.1]/":              "egress to 10.0.0.1 refused",
		"http://10.215.0.1/":                      "--egress-allow=10.215.0.1/32",
		"http://10.214.0.7:8080/":                 "", // allowed
		"https://8.8.8.8/":                        "",
		"https://example.com/":                    "", // hostnames: see urlRefusedResolving
		"http://localhost:8080/":                  "",
	} {
		err := urlRefused(g, url)
		s, ok := asStalled(err)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", url, err)
		case want != "" && !ok:
			t.Errorf("%s: got %v, want URLRefused", url, err)
		case want != "" && (s.Reason != v1.ReasonURLRefused || !strings.Contains(s.Message, want) || !errors.Is(err, egress.ErrRefused)):
			t.Errorf("%s: got %s %q, want URLRefused with %q", url, s.Reason, s.Message, want)
		}
	}
}

// hostTable is a fake resolver: the names it knows, NXDOMAIN for the rest.
type hostTable map[string][]netip.Addr

func (t hostTable) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	if a, ok := t[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestHostRefused(t *testing.T) {
	g := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24")}})
	for _, c := range []struct {
		name  string
		addrs []netip.Addr
		want  string // "" means not refused
	}{
		{"one private address", addrs("10.1.2.3"),
			`spec.url: host "db.example.test" resolves only to addresses the egress guard refuses: 10.1.2.3 (a private range); an administrator can allow it with --egress-allow=10.1.2.3/32`},
		{"loopback in both families, mapped and repeated, in DNS order", addrs("::1", "::ffff:127.0.0.1", "127.0.0.1"),
			`spec.url: host "db.example.test" resolves only to addresses the egress guard refuses: 127.0.0.1 (a loopback address), ::1 (a loopback address); an administrator can allow them with --egress-allow=127.0.0.1/32,::1/128`},
		{"metadata", addrs("169.254.169.254"), "169.254.169.254 (a link-local address (cloud metadata services live there))"},
		{"many addresses", addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9", "10.0.0.10"),
			"10.0.0.8 (a private range), and 2 more; an administrator can allow them with --egress-allow=10.0.0.1/32,"},
		{"one address allowed, one refused", addrs("10.1.2.3", "10.214.0.7"), ""},
		{"public", addrs("203.0.113.7", "2001:db8::7"), ""},
		{"opened by --egress-allow", addrs("10.214.0.7"), ""},
		{"no address", nil, ""},
	} {
		err := hostRefused(g, "db.example.test", c.addrs)
		s, ok := asStalled(err)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && !ok:
			t.Errorf("%s: got %v, want URLRefused", c.name, err)
		case c.want != "" && (s.Reason != v1.ReasonURLRefused || !strings.Contains(s.Message, c.want) || !errors.Is(err, egress.ErrRefused)):
			t.Errorf("%s: got %s %q, want URLRefused with %q", c.name, s.Reason, s.Message, c.want)
		}
	}
}

func TestURLRefusedResolving(t *testing.T) {
	table := hostTable{
		"db.example.test":    addrs("10.1.2.3"),
		"crm.example.test":   addrs("203.0.113.7"),
		"mixed.example.test": addrs("10.1.2.3", "203.0.113.7"),
		"receiver":           addrs("10.1.2.3"), // never asked: relative
	}
	var asked []string
	lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
		asked = append(asked, host)
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > egressLookupTimeout {
			t.Errorf("lookup of %s: deadline %v (set: %v), want at most %s", host, dl, ok, egressLookupTimeout)
		}
		if host == "slow.example.test" {
			return nil, &net.DNSError{Err: "i/o timeout", Name: host, IsTimeout: true}
		}
		return table.lookup(ctx, host)
	}
	for _, c := range []struct {
		url    string
		want   string // "" means not refused
		lookup bool   // whether the host is resolved
	}{
		{"https://db.example.test/hook", `host "db.example.test" resolves only to addresses the egress guard refuses: 10.1.2.3 (a private range)`, true},
		{"https://db.example.test:8443/?a=b#c", "--egress-allow=10.1.2.3/32", true},
		{"https://crm.example.test/hook", "", true},
		{"https://mixed.example.test/", "", true}, // the dialer tries the allowed one
		{"https://gone.example.test/", "", true},  // NXDOMAIN: the dispatcher decides when it dials
		{"https://slow.example.test/", "", true},  // a timeout decides nothing either
		{"http://receiver:8080/", "", false},      // relative: the manager's search domains are not the tenant's
		{"http://169.254.169.254/latest", "egress to 169.254.169.254 refused", false},
		{"http://[fd00::1]:8080/", "egress to fd00::1 refused", false},
		{"https://10.214.0.7/", "egress to 10.214.0.7 refused", false},
		{"https://203.0.113.7/", "", false},
	} {
		asked = nil
		err := urlRefusedResolving(context.Background(), defaultEgress, lookup, c.url)
		s, ok := asStalled(err)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.url, err)
		case c.want != "" && !ok:
			t.Errorf("%s: got %v, want URLRefused", c.url, err)
		case c.want != "" && (s.Reason != v1.ReasonURLRefused || !strings.Contains(s.Message, c.want)):
			t.Errorf("%s: got %s %q, want URLRefused with %q", c.url, s.Reason, s.Message, c.want)
		}
		if got := len(asked) > 0; got != c.lookup {
			t.Errorf("%s: looked up %q, want a lookup: %v", c.url, asked, c.lookup)
		}
	}
}

var _ = Describe("WebhookEndpoint egress", func() {
	Context("when the URL is an address the egress guard refuses", func() {
		It("is Stalled URLRefused, naming the address and the flag, and does not deliver until the URL is fixed", func() {
			ns := newNamespace("egress")
			ep := newEndpoint(ns, "crm")
			ep.Spec.URL = "http://169.254.169.254/latest/meta-data"
			create(newSecret(ns, "crm-signing"), ep)
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:   "False/URLRefused",
				v1.StalledCondition: "True/URLRefused",
			})
			msg := conditionMessage(getEndpoint(Default, ns, "crm"), v1.StalledCondition)
			Expect(msg).To(ContainSubstring("egress to 169.254.169.254 refused"))
			Expect(msg).To(ContainSubstring("--egress-allow=169.254.169.254/32"))
			Consistently(func() bool { return fake.delivering(ns, "crm") }, time.Second, poll).Should(BeFalse(), "a refused URL must not be delivered to")

			updateEndpoint(ns, "crm", func(e *v1.WebhookEndpoint) { e.Spec.URL = "http://127.0.0.1:8090/crm" })
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func() bool { return fake.delivering(ns, "crm") }, eventually, poll).Should(BeTrue())
		})
	})

	// These passes run against the real API server and NATS with a
	// reconciler of the spec's own (its guard, its resolver) and are
	// summarised without writing: the suite's controller, whose guard
	// opens loopback, owns the object's status. The URL is changed in the
	// pass only, so the suite's controller never resolves the fake names.
	Context("when the URL's hostname resolves only to addresses the egress guard refuses", func() {
		var ns string
		BeforeEach(func() {
			ns = newNamespace("egress-dns")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", readyAndDelivering)
		})
		pass := func(url string, g *egress.Guard, lookup HostLookup) *v1.WebhookEndpoint {
			GinkgoHelper()
			r := &WebhookEndpointReconciler{Client: mgrClient, APIReader: k8sClient, JS: js, Mode: DispatchInProcess,
				EventsRetention: streams.DefaultLimits().EventsMaxAge, Egress: g, LookupNetIP: lookup,
				secrets: newSecretReader(k8sClient, nil)}
			ep := getEndpoint(Default, ns, "crm")
			ep.Spec.URL = url
			obs := r.newObservation()
			Expect(r.runSteps(ctx, ep, obs)).To(Succeed())
			summarise(ep, obs)
			return ep
		}
		table := hostTable{"crm.example.test": addrs("10.1.2.3")}

		It("is Stalled URLRefused for localhost, as the system resolver answers, naming the loopback address", func() {
			ep := pass("http://localhost:8090/crm", nil, nil)
			Expect(condition(ep, v1.StalledCondition)).To(Equal("True/URLRefused"))
			Expect(condition(ep, v1.ReadyCondition)).To(Equal("False/URLRefused"))
			msg := conditionMessage(ep, v1.StalledCondition)
			GinkgoWriter.Println(msg)
			Expect(msg).To(HavePrefix(`spec.url: host "localhost" resolves only to addresses the egress guard refuses: `))
			Expect(msg).To(MatchRegexp(`(127\.0\.0\.1|::1) \(a loopback address\)`))
			Expect(msg).To(MatchRegexp(`--egress-allow=(127\.0\.0\.1/32|::1/128)`))
		})

		It("is Stalled URLRefused for a name that resolves to a private address, naming the host, the address and the flag", func() {
			ep := pass("https://crm.example.test/hook", nil, table.lookup)
			Expect(condition(ep, v1.StalledCondition)).To(Equal("True/URLRefused"))
			Expect(conditionMessage(ep, v1.StalledCondition)).To(Equal(`spec.url: host "crm.example.test" resolves only to addresses the egress guard refuses: ` +
				`10.1.2.3 (a private range); an administrator can allow it with --egress-allow=10.1.2.3/32`))

			By("resolving again on the next pass: a new DNS answer clears it without an edit")
			moved := hostTable{"crm.example.test": addrs("203.0.113.7")}
			ep = pass("https://crm.example.test/hook", nil, moved.lookup)
			Expect(condition(ep, v1.StalledCondition)).To(Equal("absent"))
			Expect(condition(ep, v1.ReadyCondition)).To(Equal("True/Ready"))
		})

		It("is not stalled when --egress-allow opens the range the name resolves to", func() {
			g := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
			ep := pass("https://crm.example.test/hook", g, table.lookup)
			Expect(condition(ep, v1.StalledCondition)).To(Equal("absent"))
			Expect(condition(ep, v1.ReadyCondition)).To(Equal("True/Ready"))
		})

		It("is not stalled when the name does not resolve: the dispatcher checks each connection", func() {
			ep := pass("https://gone.example.test/hook", nil, table.lookup)
			Expect(condition(ep, v1.StalledCondition)).To(Equal("absent"))
			Expect(condition(ep, v1.ReadyCondition)).To(Equal("True/Ready"))
		})
	})
})

var _ = Describe("Dispatcher egress NetworkPolicy", func() {
	It("is accepted by the API server as built, and applying it again changes nothing", func() {
		ns := newNamespace("egress-netpol")
		cfg := networkPolicyConfig{
			NATSNamespace: "nats",
			APIServer:     []netip.Prefix{netip.MustParsePrefix("10.213.0.1/32")},
			EgressAllow:   []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24"), netip.MustParsePrefix("10.215.0.0/24")},
			EgressDeny:    []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("fd00:10:96::/112")},
		}
		applyIt := func() *networkingv1.NetworkPolicy {
			GinkgoHelper()
			// Under another name: the dispatcher reconciler removes its own
			// policy from a namespace without endpoints, such as this one.
			const name = "netpol-spec"
			Expect(k8sClient.Apply(ctx, dispatcherNetworkPolicy(ns, nil, cfg).WithName(name), client.FieldOwner(FieldOwner), client.ForceOwnership)).To(Succeed())
			np := &networkingv1.NetworkPolicy{}
			Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, np)).To(Succeed())
			return np
		}
		first := applyIt()
		Expect(first.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}))
		Expect(first.Spec.Egress).To(HaveLen(5), "DNS, NATS, the API server, the internet, --egress-allow")
		internet := first.Spec.Egress[3].To
		Expect(internet).To(HaveLen(2))
		Expect(internet[0].IPBlock.Except).To(ContainElements("10.0.0.0/8", "169.254.0.0/16", "198.18.0.0/15"))
		Expect(internet[1].IPBlock.Except).To(ContainElements("fc00::/7", "::1/128"), "fd00:10:96::/112 is inside fc00::/7")
		Expect(applyIt().ResourceVersion).To(Equal(first.ResourceVersion))
	})
})
