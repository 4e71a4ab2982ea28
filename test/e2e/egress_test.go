//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/controller"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/egress"
)

// egressLabel marks what the egress specs create, so they remove it all.
const egressLabel = "e2e.herald.dev/spec=egress"

// The egress guard in the suite's install, which opens the cluster's pod
// range and the receivers' two ClusterIPs (installHerald) and refuses
// everything else inward: NATS's Service, the API server's ClusterIP and
// its own address, the node's ports.
var _ = Describe("Egress guard in a cluster", Ordered, func() {
	a := tenantA
	var (
		nodeIP                  netip.Addr
		nodePort                int32          // the receiver, through a NodePort on the node's address
		apiAddr                 netip.AddrPort // the API server's own address, not its ClusterIP
		apiService, natsService netip.Addr     // ClusterIPs: the API server's, NATS's
		suite                   *egress.Guard  // the install's guard, to check each case's premise
	)

	BeforeAll(func(ctx SpecContext) {
		allowed, err := egress.ParsePrefixes(egressAllow)
		Expect(err).NotTo(HaveOccurred())
		suite = egress.New(egress.Config{Allow: allowed})

		var nodes corev1.NodeList
		Expect(k8s.List(ctx, &nodes)).To(Succeed())
		Expect(nodes.Items).NotTo(BeEmpty())
		for _, addr := range nodes.Items[0].Status.Addresses {
			if addr.Type == corev1.NodeInternalIP {
				nodeIP, err = netip.ParseAddr(addr.Address)
				Expect(err).NotTo(HaveOccurred())
			}
		}
		Expect(nodeIP.IsValid()).To(BeTrue(), "node %s has no InternalIP", nodes.Items[0].Name)

		var slices discoveryv1.EndpointSliceList
		Expect(k8s.List(ctx, &slices, client.InNamespace("default"),
			client.MatchingLabels{discoveryv1.LabelServiceName: "kubernetes"})).To(Succeed())
		Expect(slices.Items).NotTo(BeEmpty())
		s := slices.Items[0]
		Expect(s.Endpoints).NotTo(BeEmpty())
		Expect(s.Ports).NotTo(BeEmpty())
		apiIP, err := netip.ParseAddr(s.Endpoints[0].Addresses[0])
		Expect(err).NotTo(HaveOccurred())
		apiAddr = netip.AddrPortFrom(apiIP, uint16(*s.Ports[0].Port))
		for _, svc := range []struct {
			ns, name string
			addr     *netip.Addr
		}{{"default", "kubernetes", &apiService}, {"nats", "nats", &natsService}} {
			var s corev1.Service
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: svc.ns, Name: svc.name}, &s)).To(Succeed())
			*svc.addr, err = netip.ParseAddr(s.Spec.ClusterIP)
			Expect(err).NotTo(HaveOccurred(), "ClusterIP of %s/%s", svc.ns, svc.name)
		}

		By("reaching the tenant's receiver three more ways: a NodePort, a name for the node, and a name for its pod")
		apply(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: egress-nodeport
  namespace: %[1]s
  labels: {e2e.herald.dev/spec: egress}
spec:
  type: NodePort
  selector: {app: receiver}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
# A name CoreDNS answers with the receiver pod's own address.
apiVersion: v1
kind: Service
metadata:
  name: egress-pods
  namespace: %[1]s
  labels: {e2e.herald.dev/spec: egress}
spec:
  clusterIP: None
  selector: {app: receiver}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
`, a.ns))
		var svc corev1.Service
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: a.ns, Name: "egress-nodeport"}, &svc)).To(Succeed())
		nodePort = svc.Spec.Ports[0].NodePort
		Expect(nodePort).NotTo(BeZero())
		// A name CoreDNS answers with the node's address: a headless
		// Service without a selector, and its EndpointSlice by hand.
		family := discoveryv1.AddressTypeIPv4
		if nodeIP.Is6() {
			family = discoveryv1.AddressTypeIPv6
		}
		apply(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: egress-inward
  namespace: %[1]s
  labels: {e2e.herald.dev/spec: egress}
spec:
  clusterIP: None
  ports:
  - {name: http, port: %[2]d}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: egress-inward
  namespace: %[1]s
  labels:
    e2e.herald.dev/spec: egress
    kubernetes.io/service-name: egress-inward
    endpointslice.kubernetes.io/managed-by: e2e.herald.dev
addressType: %[3]s
endpoints:
- addresses: [%[4]q]
  conditions: {ready: true}
ports:
- {name: http, port: %[2]d, protocol: TCP}
`, a.ns, nodePort, family, nodeIP))
	})

	AfterAll(func() {
		_, _ = tryKubectl("-n", a.ns, "delete", "webhookendpoints,services,endpointslices", "-l", egressLabel, "--wait=true", "--timeout=2m")
	})

	It("stalls endpoints whose URL is, or resolves only to, an address outside --egress-allow, naming it and the flag, and none of their events reaches the receiver", func() {
		hostPort := func(addr netip.Addr, port int32) string {
			return net.JoinHostPort(addr.String(), strconv.Itoa(int(port)))
		}
		loopback := netip.MustParseAddr("127.0.0.1")
		cases := []struct {
			name, url string
			addr      *regexp.Regexp // the address the message names
			hostname  bool           // the dispatcher resolves it, and refuses each attempt
			reaches   bool           // the receiver is behind it
		}{
			// The dispatcher's own metrics server listens there.
			{name: "egress-loopback", url: fmt.Sprintf("http://%s/egress-loopback", hostPort(loopback, controller.DispatcherMetricsPort)),
				addr: regexp.MustCompile(`127\.0\.0\.1`)},
			{name: "egress-metadata", url: "http://169.254.169.254/latest/meta-data/", addr: regexp.MustCompile(`169\.254\.169\.254`)},
			{name: "egress-apiserver", url: "https://" + apiAddr.String() + "/", addr: regexp.MustCompile(regexp.QuoteMeta(apiAddr.Addr().String()))},
			{name: "egress-apiservice", url: "https://" + apiService.String() + "/", addr: regexp.MustCompile(regexp.QuoteMeta(apiService.String()))},
			// NATS's Service, by the name tenants' pods know it.
			{name: "egress-nats", url: "http://nats.nats.svc.cluster.local:4222/", addr: regexp.MustCompile(regexp.QuoteMeta(natsService.String()) + ` \(a private range\)`), hostname: true},
			{name: "egress-nodeport", url: fmt.Sprintf("http://%s/egress-nodeport", hostPort(nodeIP, nodePort)),
				addr: regexp.MustCompile(regexp.QuoteMeta(nodeIP.String())), reaches: true},
			// Resolved by the manager's /etc/hosts, and by the dispatcher's.
			{name: "egress-localhost", url: fmt.Sprintf("http://localhost:%d/egress-localhost", controller.DispatcherMetricsPort),
				addr: regexp.MustCompile(`(127\.0\.0\.1|::1) \(a loopback address\)`), hostname: true},
			// Resolved by CoreDNS, for the manager and the dispatcher alike.
			{name: "egress-inward", url: fmt.Sprintf("http://egress-inward.%s.svc.cluster.local:%d/egress-inward", a.ns, nodePort),
				addr: regexp.MustCompile(regexp.QuoteMeta(nodeIP.String()) + ` \(a private range\)`), hostname: true, reaches: true},
		}
		for _, addr := range []netip.Addr{loopback, netip.MustParseAddr("169.254.169.254"), apiAddr.Addr(), nodeIP, apiService, natsService} {
			Expect(suite.Check(addr)).To(MatchError(egress.ErrRefused), "the spec needs %s outside the install's --egress-allow", addr)
		}

		for _, c := range cases {
			applyEgressEndpoint(a, c.name, c.url, "egress.refused.>")
		}
		By("each is Stalled with URLRefused, before any attempt")
		for _, c := range cases {
			Eventually(func(g Gomega) {
				ep := &v1.WebhookEndpoint{}
				g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: a.ns, Name: c.name}, ep)).To(Succeed())
				s := apimeta.FindStatusCondition(ep.Status.Conditions, v1.StalledCondition)
				g.Expect(s).NotTo(BeNil(), "Stalled; conditions %+v", ep.Status.Conditions)
				g.Expect(s.Reason).To(Equal(v1.ReasonURLRefused))
				g.Expect(s.Message).To(MatchRegexp(c.addr.String()))
				g.Expect(s.Message).To(ContainSubstring(egress.AllowFlag + "="))
				r := apimeta.FindStatusCondition(ep.Status.Conditions, v1.ReadyCondition)
				g.Expect(r).NotTo(BeNil())
				g.Expect(r.Status).To(BeEquivalentTo("False"))
			}).WithTimeout(time.Minute).Should(Succeed(), "endpoint %s (%s)", c.name, c.url)
		}

		id := "egress-refused-" + runID
		publish(a.ns, "egress.refused.created", id, "", 0)
		By("a name is refused again where it is dialled: the attempt fails with EgressRefused and the event is dead at once")
		for _, c := range cases {
			if !c.hostname {
				continue
			}
			Eventually(func(g Gomega) {
				ep := a.get(c.name)
				g.Expect(ep.Status.LastFailure).NotTo(BeNil())
				g.Expect(ep.Status.LastFailure.Reason).To(Equal(dispatcher.ReasonEgressRefused))
				g.Expect(ep.Status.LastFailure.StatusCode).To(BeZero())
			}).WithTimeout(time.Minute).Should(Succeed(), "endpoint %s", c.name)
			Eventually(func() (string, error) { return eventState(a.ns, c.name, id) }).
				WithTimeout(time.Minute).Should(Equal(dispatcher.StateDead), "endpoint %s", c.name)
		}

		By("a literal is not even attempted, and the receiver behind the refused addresses saw nothing")
		Consistently(func(g Gomega) {
			for _, c := range cases {
				if !c.hostname {
					g.Expect(a.get(c.name).Status.LastFailure).To(BeNil(), "endpoint %s was attempted", c.name)
				}
				if c.reaches {
					n, err := countOf(a, "/"+c.name, id)()
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(n).To(BeZero(), "the receiver got %s's event", c.name)
				}
			}
		}).Should(Succeed())
	})

	It("delivers to a name that resolves into a range --egress-allow opens: the receiver's pod, refused above through the node", func() {
		var pods corev1.PodList
		Expect(k8s.List(context.Background(), &pods, client.InNamespace(a.ns), client.MatchingLabels{"app": "receiver"})).To(Succeed())
		Expect(pods.Items).NotTo(BeEmpty())
		pod := netip.MustParsePrefix(podCIDR)
		for _, p := range pods.Items {
			ip, err := netip.ParseAddr(p.Status.PodIP)
			Expect(err).NotTo(HaveOccurred(), "pod %s", p.Name)
			Expect(pod.Contains(ip)).To(BeTrue(), "pod %s at %s, outside the allowed %s", p.Name, ip, podCIDR)
			Expect(egress.New(egress.Config{}).Check(ip)).To(MatchError(egress.ErrRefused), "without --egress-allow, %s is refused", ip)
		}

		applyEgressEndpoint(a, "egress-pod", fmt.Sprintf("http://egress-pods.%s.svc.cluster.local:8080/egress-pod", a.ns), "egress.allowed.>")
		a.waitReady("egress-pod")
		id := "egress-allowed-" + runID
		publish(a.ns, "egress.allowed.created", id, "", 0)
		Eventually(countOf(a, "/egress-pod", id)).WithTimeout(time.Minute).Should(Equal(1))
		Expect(apimeta.FindStatusCondition(a.get("egress-pod").Status.Conditions, v1.StalledCondition)).To(BeNil())
	})
})

// applyEgressEndpoint applies an endpoint at rawURL (tenant.apply always
// points at the tenant's receiver Service), with the fast policy.
func applyEgressEndpoint(t *tenant, name, rawURL, eventType string) {
	GinkgoHelper()
	apply(fmt.Sprintf(`apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookEndpoint
metadata:
  name: %s
  namespace: %s
  labels: {e2e.herald.dev/spec: egress}
spec:
  url: %q
  eventTypes: [%q]
  signingSecretRef: {name: signing}
  retryPolicyRef: {name: fast}
  timeout: 5s
`, name, t.ns, rawURL, eventType))
}
