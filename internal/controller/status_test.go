package controller

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

var _ = Describe("WebhookEndpoint status", func() {
	Context("when the dispatcher reports failures and then recovers", func() {
		It("shows Failing with the code, then Delivering, with Events on each transition", func() {
			ns := newNamespace("health")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm"))
			expectConditions(ns, "crm", readyAndDelivering)

			By("a receiver answering 500")
			failedAt := time.Now().Add(-10 * time.Second)
			retryAt := time.Now().Add(50 * time.Second)
			writeHealth(ns, "crm", dispatcher.Health{
				ConsecutiveFailures: 3, NextRetry: &retryAt, FailedAttempts: 3,
				LastFailure: &dispatcher.Failure{Time: failedAt, StatusCode: 500, Reason: "HTTPError", Message: "internal error", EventID: "evt_1"},
			})
			expectConditions(ns, "crm", map[string]string{v1.ReadyCondition: "True/Ready", v1.HealthyCondition: "False/Failing"})
			Eventually(func(g Gomega) {
				ep := getEndpoint(g, ns, "crm")
				g.Expect(ep.Status.LastFailure).NotTo(BeNil())
				g.Expect(ep.Status.LastFailure.StatusCode).To(BeEquivalentTo(500))
				g.Expect(ep.Status.LastFailure.EventID).To(Equal("evt_1"))
				g.Expect(ep.Status.NextRetryTime).NotTo(BeNil())
				g.Expect(ep.Status.NextRetryTime.Unix()).To(Equal(retryAt.Unix()))
				g.Expect(ep.Status.ConsecutiveFailures).To(BeEquivalentTo(3))
				g.Expect(ep.Status.Totals.FailedAttempts).To(BeEquivalentTo(3))
			}, eventually, poll).Should(Succeed())
			out := kubectl("get", "webhookendpoints", "-n", ns, "-o", "wide")
			GinkgoWriter.Println(out)
			Expect(parseTable(out)[0]["NEXT RETRY"]).To(MatchRegexp(`^in \d+s$`), "a future retry reads as a duration: %s", out)
			Expect(getEndpoint(Default, ns, "crm").Status.NextRetryIn).To(MatchRegexp(`^in \d+s$`))
			Eventually(func(g Gomega) string { return eventNotes(g, ns, "crm", "DeliveryFailing") }, eventually, poll).
				Should(ContainSubstring("HTTP 500"))

			By("the receiver recovering, with two events dead-lettered meanwhile")
			okAt := time.Now()
			writeHealth(ns, "crm", dispatcher.Health{
				LastSuccess: &okAt, Delivered: 5, FailedAttempts: 3, DeadLettered: 2,
				ConcurrencyLimit: 4, AdaptiveRate: 24.2,
				LastFailure: &dispatcher.Failure{Time: failedAt, StatusCode: 500, Reason: "HTTPError", EventID: "evt_1"},
			})
			expectConditions(ns, "crm", map[string]string{v1.HealthyCondition: "True/Delivering"})
			Eventually(func(g Gomega) {
				ep := getEndpoint(g, ns, "crm")
				g.Expect(ep.Status.LastSuccessTime).NotTo(BeNil())
				g.Expect(ep.Status.ConsecutiveFailures).To(BeZero())
				g.Expect(ep.Status.NextRetryTime).To(BeNil())
				g.Expect(ep.Status.Totals.Delivered).To(BeEquivalentTo(5))
				g.Expect(ep.Status.AdaptiveLimits).To(Equal(&v1.AdaptiveLimits{Concurrency: 4, RequestsPerSecond: ptr.To[int32](25)}))
			}, eventually, poll).Should(Succeed())
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm") }, eventually, poll).
				Should(ContainElements("DeliveryFailing", "DeliveryRecovered", "DeadLettered"))
			Expect(eventNotes(Default, ns, "crm", "DeadLettered")).To(ContainSubstring("2 events moved to the dead-letter queue"))
		})
	})

	Context("when events wait longer than warnAfter", func() {
		It("shows the backlog, the oldest pending time and Lagging", func() {
			ns := newNamespace("lag")
			create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm", withWarnAfter(2*time.Second)))
			expectConditions(ns, "crm", readyAndDelivering)
			before := time.Now().Add(-time.Second)
			publish(ns, "subscription.updated")
			publish(ns, "subscription.updated")
			publish(ns, "invoice.paid")
			Eventually(func(g Gomega) {
				ep := getEndpoint(g, ns, "crm")
				g.Expect(ep.Status.Backlog).To(BeEquivalentTo(3))
				g.Expect(ep.Status.OldestPendingTime).NotTo(BeNil())
				g.Expect(ep.Status.OldestPendingTime.Time).To(BeTemporally(">=", before.Truncate(time.Second)))
			}, eventually, poll).Should(Succeed())
			expectConditions(ns, "crm", map[string]string{v1.HealthyCondition: "False/Lagging"})
			Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm") }, eventually, poll).Should(ContainElement("Lagging"))
		})
	})

	Context("when the oldest waiting event has used half its retry window", func() {
		It("reports BacklogExpiring with both ages, and an Event", func() {
			ns := newNamespace("expiring")
			p := newPolicy(ns, "short")
			p.Spec.Schedule = []metav1.Duration{{Duration: time.Second}}
			p.Spec.Window = &metav1.Duration{Duration: 4 * time.Second}
			create(p, newSecret(ns, "crm-signing"), newEndpoint(ns, "crm", withPolicy("short")))
			expectConditions(ns, "crm", map[string]string{v1.ReadyCondition: "True/Ready", v1.BacklogExpiringCondition: "absent"})
			// Nothing delivers here (the dispatcher is a fake), so the event
			// waits until it is older than half of the 4s window.
			publish(ns, "invoice.paid")
			expectConditions(ns, "crm", map[string]string{v1.BacklogExpiringCondition: "True/NearRetryWindow"})
			msg := conditionMessage(getEndpoint(Default, ns, "crm"), v1.BacklogExpiringCondition)
			GinkgoWriter.Println("BacklogExpiring:", msg)
			Expect(msg).To(And(MatchRegexp(`oldest waiting event is \d+s old`), ContainSubstring("4s"), ContainSubstring(`RetryPolicy "short"`)))
			Eventually(func(g Gomega) string { return eventNotes(g, ns, "crm", "BacklogExpiring") }, eventually, poll).Should(ContainSubstring("4s"))
		})
	})

	Context("when kubectl lists endpoints", func() {
		It("prints the status columns", func() {
			ns := newNamespace("kubectl")
			create(newSecret(ns, "billing-signing"), newEndpoint(ns, "billing"))
			expectConditions(ns, "billing", readyAndDelivering)
			okAt := time.Now()
			writeHealth(ns, "billing", dispatcher.Health{LastSuccess: &okAt, Delivered: 1})
			publish(ns, "invoice.paid")
			expectConditions(ns, "billing", map[string]string{v1.HealthyCondition: "True/Delivering"})
			Eventually(func(g Gomega) int64 { return getEndpoint(g, ns, "billing").Status.Backlog }, eventually, poll).Should(BeEquivalentTo(1))

			out := kubectl("get", "webhookendpoints", "-n", ns, "-o", "wide")
			rows := parseTable(out)
			Expect(rows).To(HaveLen(1), out)
			row := rows[0]
			Expect(row).To(HaveKeyWithValue("NAME", "billing"))
			Expect(row).To(HaveKeyWithValue("URL", "http://127.0.0.1:8090/billing"))
			Expect(row).To(HaveKeyWithValue("READY", "True"))
			Expect(row).To(HaveKeyWithValue("HEALTH", "Delivering"))
			Expect(row).To(HaveKeyWithValue("BACKLOG", "1"))
			Expect(row["LAST SUCCESS"]).To(MatchRegexp(`^\d+s$`), "last success is an age: %s", out)
			Expect(row).To(HaveKeyWithValue("FAILURES", "0"))
			Expect(row).To(HaveKeyWithValue("NEXT RETRY", ""))
			Expect(row["AGE"]).To(MatchRegexp(`^\d+s$`))
			GinkgoWriter.Println(out)
		})
	})

	Context("when health records change many times a second", func() {
		It("writes status at most once per write interval", func() {
			ns := newNamespace("rate")
			create(newSecret(ns, "busy-signing"), newEndpoint(ns, "busy"))
			expectConditions(ns, "busy", readyAndDelivering)
			okAt := time.Now()
			writeHealth(ns, "busy", dispatcher.Health{LastSuccess: &okAt, Delivered: 1})
			expectConditions(ns, "busy", map[string]string{v1.HealthyCondition: "True/Delivering"})

			w, err := k8sClient.Watch(ctx, &v1.WebhookEndpointList{}, client.InNamespace(ns))
			Expect(err).NotTo(HaveOccurred())
			defer w.Stop()
			writes := 0
			delivered := int64(1)
			start := time.Now()
			// A dispatcher writing its record every 100ms (10x its real
			// rate), with the delivered counter moving each time.
			window := 3*testWriteInterval + time.Second
			Consistently(func(g Gomega) {
				delivered++
				now := time.Now()
				writeHealth(ns, "busy", dispatcher.Health{LastSuccess: &now, Delivered: delivered})
				for drained := false; !drained; {
					select {
					case e := <-w.ResultChan():
						if e.Type == watch.Modified {
							writes++
						}
					default:
						drained = true
					}
				}
			}, window, 100*time.Millisecond).Should(Succeed())
			elapsed := time.Since(start)
			rate := float64(writes) / elapsed.Seconds()
			GinkgoWriter.Printf("status writes: %d in %s (%.2f/s per endpoint; %d health updates)\n", writes, elapsed.Round(time.Millisecond), rate, delivered-1)
			AddReportEntry("status write rate", fmt.Sprintf("%d writes in %s, %d health updates", writes, elapsed.Round(time.Millisecond), delivered-1))
			// One write per interval, plus one for the window's edges.
			Expect(writes).To(BeNumerically("<=", int(elapsed/testWriteInterval)+1))
			Expect(writes).To(BeNumerically(">=", 2), "status must still follow the counters")
		})
	})
})

func kubectl(args ...string) string {
	GinkgoHelper()
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	Expect(cmd.Run()).To(Succeed(), errOut.String())
	return out.String()
}

// parseTable reads kubectl's table output into rows keyed by header,
// cutting at the header's column starts so blank cells stay blank.
func parseTable(out string) []map[string]string {
	GinkgoHelper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	Expect(lines).NotTo(BeEmpty())
	header := lines[0]
	var starts []int
	var names []string
	for i := 0; i < len(header); {
		if header[i] == ' ' {
			i++
			continue
		}
		// A column name may hold one space ("LAST SUCCESS"); columns are
		// separated by at least two.
		j := i
		for j < len(header) && (header[j] != ' ' || j+1 < len(header) && header[j+1] != ' ') {
			j++
		}
		starts = append(starts, i)
		names = append(names, header[i:j])
		i = j
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		row := map[string]string{}
		for k, s := range starts {
			end := len(l)
			if k+1 < len(starts) && starts[k+1] < end {
				end = starts[k+1]
			}
			if s < len(l) {
				row[names[k]] = strings.TrimSpace(l[s:end])
			} else {
				row[names[k]] = ""
			}
		}
		rows = append(rows, row)
	}
	return rows
}
