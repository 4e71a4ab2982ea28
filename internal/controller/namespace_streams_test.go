package controller

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// namespaceStreams are a namespace's four streams and its two buckets'.
func namespaceStreams(ns string) []string {
	return []string{events.StreamName(ns), streams.AttemptsStream(ns), streams.DeadLetterStream(ns), streams.ReplayStream(ns),
		streams.KVStream(streams.VersionsBucket(ns)), streams.KVStream(streams.HealthBucket(ns))}
}

// streamsOf lists which of them exist.
func streamsOf(g Gomega, ns string) []string {
	var out []string
	for _, name := range namespaceStreams(ns) {
		_, err := js.Stream(context.Background(), name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		g.Expect(err).NotTo(HaveOccurred())
		out = append(out, name)
	}
	return out
}

var _ = Describe("A namespace's streams", func() {
	pass := func(g Gomega) {
		s := &NamespaceStreams{Client: mgrClient, JS: js, Limits: streams.DefaultLimits()}
		g.Expect(s.Pass(context.Background())).To(Succeed())
	}
	all := namespaceStreams

	It("come with its first endpoint, come back when NATS lost them, and go once empty after its last endpoint", func() {
		ns := newNamespace("streams")
		Expect(streamsOf(Default, ns)).To(BeEmpty())
		create(newSecret(ns, "billing-signing"), newEndpoint(ns, "billing"))
		expectConditions(ns, "billing", readyAndDelivering)
		Expect(streamsOf(Default, ns)).To(ConsistOf(all(ns)))

		By("recreating them when NATS lost them")
		for _, name := range all(ns) {
			Expect(js.DeleteStream(context.Background(), name)).To(Succeed())
		}
		Eventually(func(g Gomega) {
			pass(g)
			g.Expect(streamsOf(g, ns)).To(ConsistOf(all(ns)))
		}, eventually, poll).Should(Succeed())

		By("keeping streams that still hold something after the last endpoint is gone, and the buckets with the events")
		Eventually(func(g Gomega) { _, err := consumerInfo(ns, "billing"); g.Expect(err).NotTo(HaveOccurred()) }, eventually, poll).Should(Succeed())
		publish(ns, "invoice.paid")
		deleteAndWaitGone(newEndpoint(ns, "billing"))
		Eventually(func(g Gomega) {
			pass(g)
			g.Expect(streamsOf(g, ns)).To(ConsistOf(events.StreamName(ns), streams.KVStream(streams.VersionsBucket(ns)), streams.KVStream(streams.HealthBucket(ns))))
		}, eventually, poll).Should(Succeed())

		By("removing the events stream and the buckets once its events have aged out, though the health watcher follows the bucket")
		st, err := js.Stream(context.Background(), events.StreamName(ns))
		Expect(err).NotTo(HaveOccurred())
		Expect(st.Purge(context.Background())).To(Succeed())
		Eventually(func(g Gomega) {
			pass(g)
			g.Expect(streamsOf(g, ns)).To(BeEmpty())
		}, eventually, poll).Should(Succeed())
	})
})
