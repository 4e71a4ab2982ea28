//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// streamText is every message of a stream, as text, for a grep.
func streamText(ctx context.Context, name string) string {
	GinkgoHelper()
	s, err := js.Stream(ctx, name)
	Expect(err).NotTo(HaveOccurred())
	var b strings.Builder
	info, err := s.Info(ctx)
	Expect(err).NotTo(HaveOccurred())
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted or aged out
		}
		b.Write(m.Data)
		for k, vs := range m.Header {
			b.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
	}
	return b.String()
}

var _ = Describe("Auth headers from Secrets", func() {
	It("reach the receiver and appear nowhere else: not in status, Events, logs, the delivery log or dead letters", func(ctx SpecContext) {
		a := tenantA
		raw := make([]byte, 16)
		_, _ = rand.Read(raw)
		secret := "hdr-" + hex.EncodeToString(raw)
		apply(fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: crm-auth, namespace: %[1]s}
stringData: {token: "Bearer %[2]s"}
---
apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: authed, namespace: %[1]s}
spec:
  url: %[3]s
  eventTypes: ["headers.>"]
  signingSecretRef: {name: signing}
  retryPolicyRef: {name: fast}
  headersFrom:
  - name: Authorization
    secretKeyRef: {name: crm-auth, key: token}
`, a.ns, secret, a.url("/authed")))
		a.waitReady("authed")

		By("delivering with the header")
		publish(a.ns, "headers.ok", "hdr_ok", "k", 1)
		sum := sha256.Sum256([]byte("Bearer " + secret))
		Eventually(func(g Gomega) {
			got, err := a.arrivals("/authed")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(ContainElement(And(HaveField("ID", "hdr_ok"), HaveField("Authorization", "sha256:"+hex.EncodeToString(sum[:])))))
		}).Should(Succeed())

		By("failing until the event is dead, so that status, Events, the log and a dead letter all speak of it")
		a.behave("/authed", 401, 0)
		publish(a.ns, "headers.dead", "hdr_dead", "k2", 1)
		Eventually(func(g Gomega) {
			st, err := eventState(a.ns, "authed", "hdr_dead")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st).To(Equal("dead"))
		}).Should(Succeed())

		By("grepping everything a tenant or an operator can read for the value")
		places := map[string]string{
			"endpoint status": kubectl("-n", a.ns, "get", "webhookendpoint", "authed", "-o", "yaml"),
			"events":          kubectl("get", "events", "-A", "-o", "yaml"),
			"manager logs":    kubectl("logs", "-n", "herald-system", "-l", "app.kubernetes.io/component=manager", "--all-containers", "--tail=-1"),
			"dispatcher logs": kubectl("logs", "-n", a.ns, "-l", "app.kubernetes.io/component=dispatcher", "--all-containers", "--tail=-1"),
			"deployment":      kubectl("-n", a.ns, "get", "deployments,pods", "-o", "yaml"),
			"delivery log":    streamText(ctx, streams.AttemptsStream(a.ns)),
			"dead letters":    streamText(ctx, streams.DeadLetterStream(a.ns)),
			"events stream":   streamText(ctx, events.StreamName(a.ns)),
		}
		for where, text := range places {
			Expect(text).NotTo(BeEmpty(), where)
			Expect(text).NotTo(ContainSubstring(secret), "the header's value in %s", where)
		}
	})
})

var _ jetstream.Stream
