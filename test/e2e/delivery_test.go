//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("The delivery API", func() {
	It("is Available, shows a tenant's ServiceAccount its own deliveries and dead letters only, and prints the support row", func() {
		a, b := tenantA, tenantB
		Eventually(func() string {
			out, _ := tryKubectl("get", "apiservice", "v1alpha1.delivery.herald.dev", "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`)
			return out
		}).WithTimeout(2 * time.Minute).Should(Equal("True"))

		for _, t := range []*tenant{a, b} {
			apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: support, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: support-views, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: support, namespace: %[1]s}]
`, t.ns))
		}
		asA := []string{"--as", "system:serviceaccount:" + a.ns + ":support", "--as-group", "system:serviceaccounts", "--as-group", "system:serviceaccounts:" + a.ns}
		can := func(verb, resource, ns string) string {
			out, _ := tryKubectl(append([]string{"auth", "can-i", verb, resource, "-n", ns}, asA...)...)
			return strings.TrimSpace(out)
		}
		Eventually(func() string { return can("list", "webhookdeliveries.delivery.herald.dev", a.ns) }).Should(Equal("yes"))
		Expect(can("get", "deadletters.delivery.herald.dev", a.ns)).To(Equal("yes"))
		Expect(can("list", "webhookdeliveries.delivery.herald.dev", b.ns)).To(Equal("no"))

		a.create(endpoint{name: "support", path: "/support", types: []string{"support.>"}})
		a.create(endpoint{name: "support-gone", path: "/support-gone", types: []string{"support.>"}})
		a.waitReady("support")
		a.waitReady("support-gone")
		a.behave("/support-gone", 404, 0)
		id := "support-" + runID
		publish(a.ns, "support.ticket", id, id, 1)

		Eventually(func(g Gomega) {
			out, err := tryKubectl(append([]string{"get", "whd", "-n", a.ns, "--field-selector", "eventID=" + id}, asA...)...)
			g.Expect(err).NotTo(HaveOccurred(), out)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			g.Expect(strings.Fields(lines[0])).To(Equal([]string{"EVENT", "ENDPOINT", "PHASE", "ATTEMPTS", "CODE", "LAST", "ERROR", "NEXT", "RETRY", "AGE"}))
			g.Expect(out).To(MatchRegexp(`(?m)^` + id + `\s+support\s+Sent\s+1\s+200\s`))
			g.Expect(out).To(MatchRegexp(`(?m)^` + id + `\s+support-gone\s+Failed\s+1\s+404\s+HTTP 404`))
		}).WithTimeout(time.Minute).Should(Succeed())

		out := kubectl(append([]string{"get", "deadletters", "-n", a.ns, "--field-selector", "endpoint=support-gone"}, asA...)...)
		Expect(out).To(MatchRegexp(`(?m)^` + id + `\s+support-gone\s+TerminalResponse\s+1\s+404\s`))

		By("refusing A's ServiceAccount B's deliveries, in a real list")
		out, err := tryKubectl(append([]string{"get", "whd", "-n", b.ns}, asA...)...)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("Forbidden"))
		out, err = tryKubectl(append([]string{"get", "whd", "-A"}, asA...)...)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("Forbidden"))
	})
})
