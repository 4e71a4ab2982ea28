package v1alpha1_test

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

func replay(name string, mutate func(*v1.WebhookReplay)) *v1.WebhookReplay {
	r := &v1.WebhookReplay{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       v1.WebhookReplaySpec{Endpoint: "crm", EventIDs: []string{"evt_1"}},
	}
	if mutate != nil {
		mutate(r)
	}
	return r
}

var _ = Describe("WebhookReplay validation", func() {
	It("accepts a replay of one event and fills in the limits", func() {
		r := replay("one", nil)
		Expect(k8sClient.Create(ctx, r)).To(Succeed())
		Expect(r.Spec.Limit).To(BeEquivalentTo(v1.DefaultReplayLimit))
		Expect(r.Spec.Rate).To(BeEquivalentTo(10))
		Expect(*r.Spec.TTLSecondsAfterFinished).To(BeEquivalentTo(v1.DefaultReplayTTL))
	})

	It("accepts a time range and a dead-letter selection", func() {
		now := time.Now()
		Expect(k8sClient.Create(ctx, replay("range", func(r *v1.WebhookReplay) {
			r.Spec.EventIDs = nil
			r.Spec.TimeRange = &v1.ReplayTimeRange{From: metav1.NewTime(now.Add(-time.Hour)), To: metav1.NewTime(now)}
			r.Spec.Limit, r.Spec.Rate = 10000, 1000
		}))).To(Succeed())
		since := metav1.NewTime(now.Add(-time.Hour))
		Expect(k8sClient.Create(ctx, replay("dead", func(r *v1.WebhookReplay) {
			r.Spec.EventIDs = nil
			r.Spec.DeadLetters = &v1.ReplayDeadLetters{Reasons: []string{"TerminalResponse", "WindowExhausted"}, Since: &since}
			r.Spec.DryRun = true
		}))).To(Succeed())
	})

	It("refuses any change to a replay's spec", func() {
		r := replay("frozen", nil)
		Expect(k8sClient.Create(ctx, r)).To(Succeed())
		r.Spec.EventIDs = []string{"evt_2"}
		err := k8sClient.Update(ctx, r)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("a replay's spec cannot be changed"))
	})

	manyIDs := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("evt_%d", i)
		}
		return out
	}
	now := time.Now()
	DescribeTable("refuses an invalid replay with a message a person understands",
		func(name string, mutate func(*v1.WebhookReplay), message string) {
			err := k8sClient.Create(ctx, replay(name, mutate))
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(message))
		},
		Entry("no selection", "none",
			func(r *v1.WebhookReplay) { r.Spec.EventIDs = nil }, "name exactly one of eventIDs, timeRange or deadLetters"),
		Entry("two selections", "two",
			func(r *v1.WebhookReplay) { r.Spec.DeadLetters = &v1.ReplayDeadLetters{} }, "name exactly one of eventIDs, timeRange or deadLetters"),
		Entry("a range that ends before it starts", "backwards",
			func(r *v1.WebhookReplay) {
				r.Spec.EventIDs = nil
				r.Spec.TimeRange = &v1.ReplayTimeRange{From: metav1.NewTime(now), To: metav1.NewTime(now.Add(-time.Minute))}
			}, "from must be before to"),
		Entry("more than 1,000 ids", "many-ids",
			func(r *v1.WebhookReplay) { r.Spec.EventIDs = manyIDs(1001) }, "spec.eventIDs: Too many"),
		Entry("an id that is not an event id", "bad-id",
			func(r *v1.WebhookReplay) { r.Spec.EventIDs = []string{"evt.1>"} }, "spec.eventIDs[0]"),
		Entry("a limit over 10,000", "limit",
			func(r *v1.WebhookReplay) { r.Spec.Limit = 10001 }, "spec.limit"),
		Entry("a rate over 1,000", "rate",
			func(r *v1.WebhookReplay) { r.Spec.Rate = 1001 }, "spec.rate"),
		Entry("an endpoint name with a dot", "endpoint",
			func(r *v1.WebhookReplay) { r.Spec.Endpoint = "crm.other" }, "spec.endpoint"),
		Entry("an unknown dead-letter reason", "reason",
			func(r *v1.WebhookReplay) {
				r.Spec.EventIDs = nil
				r.Spec.DeadLetters = &v1.ReplayDeadLetters{Reasons: []string{"Whatever"}}
			}, "spec.deadLetters.reasons[0]"),
	)
})
