//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/herald-dev/herald/internal/natsauth"
	"github.com/herald-dev/herald/internal/natsauth/natsauthtest"
	"github.com/herald-dev/herald/pkg/events"
)

// tokenFor is a ServiceAccount token for NATS's audience, as the kubelet
// projects it into a pod of the namespace.
func tokenFor(ctx context.Context, ns, sa string) string {
	GinkgoHelper()
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{natsauth.DefaultAudience}, ExpirationSeconds: ptr.To(int64(600))}}
	Expect(k8s.SubResource("token").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}}, tr)).To(Succeed())
	return tr.Status.Token
}

var _ = Describe("Tenant isolation in NATS", func() {
	It("refuses every NATS credential of tenant A everything of tenant B, and B's deliveries stay complete and unaltered", func(ctx SpecContext) {
		a, b := tenantA, tenantB
		a.create(endpoint{name: "isolation", path: "/isolation", types: []string{"isolation.>"}})
		b.create(endpoint{name: "victim", path: "/victim", types: []string{"isolation.>"}})
		// A's credentials: its dispatcher's ServiceAccount, and a producer
		// bound to herald-producer as the docs say.
		apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: billing, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: billing-publishes, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: herald-producer}
subjects: [{kind: ServiceAccount, name: billing, namespace: %[1]s}]
`, a.ns))

		var want []string
		publishB := func(id string) {
			GinkgoHelper()
			publish(b.ns, "isolation.test", id, id, 1)
			want = append(want, id)
		}
		publishB("iso_before")

		for _, sa := range []string{natsauth.DispatcherServiceAccount, "billing"} {
			By("trying everything on " + b.ns + " as " + a.ns + "/" + sa)
			errs := make(chan error, 100)
			var c *nats.Conn
			Eventually(func() (err error) {
				c, err = tenantConn(a.ns, tokenFor(ctx, a.ns, sa), errs)
				return err
			}).Should(Succeed(), "%s/%s connects with its token", a.ns, sa)
			for _, attack := range natsauthtest.Against(b.ns, "victim") {
				natsauthtest.Drain(errs)
				_ = attack.Try(c)
				Eventually(errs).Should(Receive(WithTransform(func(e error) string { return e.Error() },
					MatchRegexp(natsauthtest.Violation(attack.Subject)))), "NATS must refuse %s %s", attack.Kind, attack.Subject)
			}
			c.Close()
			publishB("iso_during_" + regexp.MustCompile(`[^a-z]`).ReplaceAllString(sa, ""))
		}

		By("publishing A's events with B's message ids")
		errs := make(chan error, 1)
		c, err := tenantConn(a.ns, tokenFor(ctx, a.ns, "billing"), errs)
		Expect(err).NotTo(HaveOccurred())
		defer c.Close()
		forged := &nats.Msg{Subject: events.Subject(a.ns, "isolation.test"), Data: []byte(`{"forged":true}`),
			Header: nats.Header{events.HeaderID: []string{events.MsgID(b.ns, "iso_after")}}}
		pubCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		js, err := jetstreamOn(c)
		Expect(err).NotTo(HaveOccurred())
		_, err = js.PublishMsg(pubCtx, forged)
		Expect(err).NotTo(HaveOccurred(), "A publishes its own events, whatever id it picks")
		publishB("iso_after")

		By("counting B's deliveries at B's receiver")
		Eventually(func(g Gomega) {
			got, err := b.arrivals("/victim")
			g.Expect(err).NotTo(HaveOccurred())
			seen := map[string]bool{}
			for _, r := range got {
				g.Expect(want).To(ContainElement(r.ID), "only B's own events reach B")
				g.Expect(r.Key).To(Equal(r.ID), "unaltered: the key it was published with")
				g.Expect(r.Version).To(BeEquivalentTo(1))
				seen[r.ID] = true
			}
			g.Expect(seen).To(HaveLen(len(want)))
		}).Should(Succeed())
	})
})
