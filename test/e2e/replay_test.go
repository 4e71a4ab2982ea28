//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("Replays", func() {
	It("let a tenant replay its own dead letters, and reach no other namespace's endpoint of the same name", func() {
		a, b := tenantA, tenantB
		as := map[string][]string{}
		for _, t := range []*tenant{a, b} {
			apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: replayer, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: replayer-edits, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{kind: ServiceAccount, name: replayer, namespace: %[1]s}]
`, t.ns))
			as[t.ns] = []string{"--as", "system:serviceaccount:" + t.ns + ":replayer", "--as-group", "system:serviceaccounts", "--as-group", "system:serviceaccounts:" + t.ns}
		}
		can := func(verb, resource, ns, who string) string {
			out, _ := tryKubectl(append([]string{"auth", "can-i", verb, resource, "-n", ns}, as[who]...)...)
			return strings.TrimSpace(out)
		}
		Eventually(func() string { return can("create", "webhookreplays.webhooks.herald.dev", a.ns, a.ns) }).Should(Equal("yes"))
		Expect(can("create", "webhookreplays.webhooks.herald.dev", b.ns, a.ns)).To(Equal("no"))

		By("an endpoint of the same name in A and in B, each dead-lettering one event")
		ids := map[string]string{}
		for _, t := range []*tenant{a, b} {
			t.create(endpoint{name: "crm-replay", path: "/crm-replay", types: []string{"replay.>"}})
			t.behave("/crm-replay", 410, 0)
			ids[t.ns] = "replay-" + t.ns + "-" + runID
			publish(t.ns, "replay.test", ids[t.ns], ids[t.ns], 1)
		}
		for _, t := range []*tenant{a, b} {
			Eventually(func(g Gomega) {
				out, err := tryKubectl("get", "deadletters", "-n", t.ns, "--field-selector", "endpoint=crm-replay")
				g.Expect(err).NotTo(HaveOccurred(), out)
				g.Expect(out).To(ContainSubstring(ids[t.ns]))
			}).WithTimeout(time.Minute).Should(Succeed())
			t.behave("/crm-replay", 200, 0)
		}

		replay := func(t *tenant, name string) (string, error) {
			return kubectlIn(fmt.Sprintf(`apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookReplay
metadata: {name: %s, namespace: %s}
spec:
  endpoint: crm-replay
  deadLetters: {}
`, name, t.ns), append([]string{"apply", "-f", "-"}, as[t.ns]...)...)
		}
		By("A's tenant replaying A's dead letters")
		out, err := replay(a, "fixed")
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func() string {
			out, _ := tryKubectl("get", "whr", "-n", a.ns, "fixed", "-o", "jsonpath={.status.phase}/{.status.delivered}")
			return out
		}).WithTimeout(time.Minute).Should(Equal("Succeeded/1"))
		Eventually(countOf(a, "/crm-replay", ids[a.ns])).Should(Equal(2), "the 410, then the replay")
		out = kubectl("get", "whr", "-n", a.ns)
		Expect(strings.Fields(strings.Split(out, "\n")[0])).To(Equal([]string{"NAME", "ENDPOINT", "MATCHED", "DELIVERED", "FAILED", "PHASE", "AGE"}))
		Expect(out).To(MatchRegexp(`(?m)^fixed\s+crm-replay\s+1\s+1\s+0\s+Succeeded\s`))
		out = kubectl("get", "deadletters", "-n", a.ns, "--field-selector", "endpoint=crm-replay")
		Expect(out).To(MatchRegexp(`(?m)^`+ids[a.ns]+`\s.*\sfixed\s*$`), "the dead letter says which replay delivered it")

		By("B's tenant replaying the endpoint of the same name in B")
		out, err = replay(b, "fixed")
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func() string {
			out, _ := tryKubectl("get", "whr", "-n", b.ns, "fixed", "-o", "jsonpath={.status.phase}/{.status.delivered}")
			return out
		}).WithTimeout(time.Minute).Should(Equal("Succeeded/1"))
		Eventually(countOf(b, "/crm-replay", ids[b.ns])).Should(Equal(2))
		Consistently(func() (map[string]int, error) { return a.counts("/crm-replay") }, 3*time.Second).
			Should(Equal(map[string]int{ids[a.ns]: 2}), "B's replay reached A's receiver")

		By("a replay that tries to name another namespace: there is no field for it")
		out, err = kubectlIn(fmt.Sprintf(`apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookReplay
metadata: {name: across, namespace: %s}
spec:
  endpoint: crm-replay
  endpointNamespace: %s
  deadLetters: {}
`, b.ns, a.ns), append([]string{"apply", "--validate=strict", "-f", "-"}, as[b.ns]...)...)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring(`unknown field "spec.endpointNamespace"`))
		out, err = kubectlIn(fmt.Sprintf(`apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookReplay
metadata: {name: across, namespace: %s}
spec:
  endpoint: crm-replay
  deadLetters: {}
`, a.ns), append([]string{"apply", "-f", "-"}, as[b.ns]...)...)
		Expect(err).To(HaveOccurred(), "B's tenant created a replay in A")
		Expect(out).To(ContainSubstring("forbidden"))
	})
})
