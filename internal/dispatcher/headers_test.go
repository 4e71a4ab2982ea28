package dispatcher_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/internal/testenv"
)

var _ = Describe("Headers from Secrets", func() {
	It("sends the resolved value to the receiver and keeps it out of the delivery log, dead letters and logs", func() {
		ns := newNamespace()
		const tok = "Bearer tok-5c1f9e0d7a3b4c2e8f6a1d0b9c7e5a3f"
		rc := newReceiver(func(n int, r request) (int, http.Header, time.Duration) {
			if r.Envelope.ID == "evt_gone" {
				return http.StatusNotFound, nil, 0
			}
			return http.StatusOK, nil, 0
		})
		spec := endpointSpec()
		spec.URL = rc.URL
		spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a"}
		spec.HeadersFrom = []v1.HeaderFromSecret{{Name: "Authorization", SecretKeyRef: v1.SecretKeyReference{Name: "crm-auth", Key: "token"}}}
		ep, err := dispatcher.EndpointFromSpec(ns, "crm", &spec,
			map[string][]byte{"v1": []byte(secretA)}, map[string]string{"Authorization": tok}, nil)
		Expect(err).NotTo(HaveOccurred())
		Expect(ep.Headers).To(Equal(map[string]string{"Authorization": tok, "X-Tenant": "a"}))
		ep.Policy = fastPolicy()

		var logs testenv.LogBuffer
		dctx, cancel := context.WithCancel(context.Background())
		d, err := dispatcher.New(dctx, js,
			dispatcher.WithLogger(zap.New(zap.WriteTo(&logs), zap.UseDevMode(true))),
			dispatcher.WithHealthInterval(100*time.Millisecond), dispatcher.WithDrainTimeout(5*time.Second), allowLoopback)
		Expect(err).NotTo(HaveOccurred())
		createConsumer(ns, "crm")
		d.Upsert(ep)
		done := make(chan struct{})
		go func() { defer close(done); _ = d.Run(dctx) }()
		DeferCleanup(func() { cancel(); <-done })

		publish(ns, "invoice.paid", "evt_ok", "inv_1", 1, map[string]any{"amount": 42})
		publish(ns, "invoice.paid", "evt_gone", "inv_2", 1, map[string]any{"amount": 7})

		Eventually(rc.count, 10*time.Second).Should(Equal(2))
		for _, r := range rc.requests() {
			Expect(r.Header.Get("Authorization")).To(Equal(tok))
			Expect(r.Header.Get("X-Tenant")).To(Equal("a"))
		}

		var attempts, dead []string
		Eventually(func(g Gomega) {
			attempts = nil
			for _, m := range readAll(g, streams.AttemptsStream(ns), streams.AttemptSubject(ns, "crm", "*"), false) {
				attempts = append(attempts, string(m.Data()))
			}
			g.Expect(attempts).To(HaveLen(2))
			dead = nil
			for _, m := range readAll(g, streams.DeadLetterStream(ns), streams.DeadLetterSubject(ns, "crm", "*"), false) {
				dead = append(dead, string(m.Data()))
			}
			g.Expect(dead).To(HaveLen(1))
		}, 10*time.Second).Should(Succeed())
		Expect(dead[0]).To(ContainSubstring(`"evt_gone"`))
		secret := strings.TrimPrefix(tok, "Bearer ")
		for _, a := range attempts {
			Expect(a).NotTo(ContainSubstring(secret), "delivery log")
		}
		Expect(dead[0]).NotTo(ContainSubstring(secret), "dead letter")
		// Whatever the dispatcher logged up to its stop (it logs little on
		// the happy path) must not carry the value either.
		cancel()
		<-done
		Expect(logs.Contains(secret)).To(BeFalse(), "logs")
	})

	It("refuses a resolved value that cannot be a header, without quoting it", func() {
		spec := endpointSpec()
		spec.URL = "http://127.0.0.1:1/"
		_, err := dispatcher.EndpointFromSpec("ns", "crm", &spec,
			map[string][]byte{"v1": []byte(secretA)}, map[string]string{"Authorization": "tok-secret\r\nX-Evil: 1"}, nil)
		Expect(errors.Is(err, dispatcher.ErrHeaderValueInvalid)).To(BeTrue())
		Expect(err.Error()).NotTo(ContainSubstring("tok-secret"))
	})

	DescribeTable("CheckHeaderValue",
		func(v string, want string) {
			err := dispatcher.CheckHeaderValue([]byte(v))
			if want == "" {
				Expect(err).NotTo(HaveOccurred())
				return
			}
			Expect(errors.Is(err, dispatcher.ErrHeaderValueInvalid)).To(BeTrue())
			Expect(err.Error()).To(ContainSubstring(want))
		},
		Entry("a bearer token", "Bearer abc.def-ghi", ""),
		Entry("a tab inside", "a\tb", ""),
		Entry("empty", "", "the value is empty"),
		Entry("a CR", "a\rb", "carriage return (CR) at byte 1"),
		Entry("an LF inside", "a\nb", "a line feed (LF) at byte 1"),
		Entry("a trailing LF", "abc\n", "trailing line feed"),
		Entry("a NUL", "a\x00", "a NUL byte at byte 1"),
		Entry("DEL", "a\x7f", "control character 0x7f"),
		Entry("too long", strings.Repeat("a", dispatcher.MaxHeaderValueBytes+1), "more than 8192"),
	)
})
