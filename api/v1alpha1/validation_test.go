package v1alpha1_test

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

func endpoint(name string, mutate func(*v1.WebhookEndpoint)) *v1.WebhookEndpoint {
	e := &v1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1.WebhookEndpointSpec{
			URL:              "https://crm.example.com/hooks",
			SigningSecretRef: v1.LocalObjectReference{Name: "crm-signing"},
		},
	}
	if mutate != nil {
		mutate(e)
	}
	return e
}

func policy(name string, mutate func(*v1.RetryPolicy)) *v1.RetryPolicy {
	p := &v1.RetryPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
	if mutate != nil {
		mutate(p)
	}
	return p
}

func d(s string) metav1.Duration {
	v, err := time.ParseDuration(s)
	Expect(err).NotTo(HaveOccurred())
	return metav1.Duration{Duration: v}
}

func pd(s string) *metav1.Duration {
	v := d(s)
	return &v
}

func fromSecret(header string) v1.HeaderFromSecret {
	return v1.HeaderFromSecret{Name: header, SecretKeyRef: v1.SecretKeyReference{Name: "crm-auth", Key: "token"}}
}

func manyHeaders(n int) map[string]v1.HeaderValue {
	h := map[string]v1.HeaderValue{}
	for i := range n {
		h[fmt.Sprintf("X-Static-%d", i)] = "v"
	}
	return h
}

var _ = Describe("WebhookEndpoint validation", func() {
	It("accepts a minimal endpoint and fills in the defaults", func() {
		e := endpoint("minimal", nil)
		Expect(k8sClient.Create(ctx, e)).To(Succeed())
		Expect(e.Spec.Timeout.Duration).To(Equal(10 * time.Second))
		Expect(e.Spec.Ordering).To(Equal(v1.OrderingPerKey))
		Expect(e.Spec.MaxInFlight).To(BeEquivalentTo(16))
		Expect(e.Spec.Latency.Target.Duration).To(Equal(5 * time.Second))
		Expect(e.Spec.Latency.WarnAfter.Duration).To(Equal(60 * time.Second))
	})

	It("accepts everything a full spec may say", func() {
		e := endpoint("full", func(e *v1.WebhookEndpoint) {
			e.Spec.URL = "http://127.0.0.1:8080/hooks?tenant=a"
			e.Spec.EventTypes = []string{"invoice.paid", "subscription.*", "audit.>"}
			e.Spec.RetryPolicyRef = &v1.LocalObjectReference{Name: "fast"}
			e.Spec.Timeout = pd("60s")
			e.Spec.Ordering = v1.OrderingNone
			e.Spec.MaxInFlight = 64
			e.Spec.RateLimit = &v1.RateLimit{RequestsPerSecond: 50, Burst: ptr.To[int32](10)}
			e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a\tb", "X-Static": "Bearer static"}
			e.Spec.HeadersFrom = []v1.HeaderFromSecret{
				{Name: "Authorization", SecretKeyRef: v1.SecretKeyReference{Name: "crm-auth", Key: "token"}},
				{Name: "X-Api-Key", SecretKeyRef: v1.SecretKeyReference{Name: "crm-auth", Key: "api.key"}},
			}
			e.Spec.Suspend = true
		})
		Expect(k8sClient.Create(ctx, e)).To(Succeed())
	})

	DescribeTable("refuses an invalid spec with a message a person understands",
		func(name string, mutate func(*v1.WebhookEndpoint), message string) {
			err := k8sClient.Create(ctx, endpoint(name, mutate))
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(message))
		},
		Entry("an empty url", "empty-url",
			func(e *v1.WebhookEndpoint) { e.Spec.URL = "" }, "spec.url"),
		Entry("a url with user:password", "userinfo",
			func(e *v1.WebhookEndpoint) { e.Spec.URL = "https://bob:hunter2@crm.example.com/" }, "send them with spec.headersFrom instead"),
		Entry("a scheme other than http or https", "ftp",
			func(e *v1.WebhookEndpoint) { e.Spec.URL = "ftp://crm.example.com/" }, "url must be an absolute http:// or https:// URL"),
		Entry("a relative url", "relative",
			func(e *v1.WebhookEndpoint) { e.Spec.URL = "/hooks" }, "url must be an absolute http:// or https:// URL"),
		Entry("a fragment", "fragment",
			func(e *v1.WebhookEndpoint) { e.Spec.URL = "https://crm.example.com/hooks#x" }, "url must not have a fragment"),
		Entry("a reserved header", "reserved-header",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"Webhook-Signature": "forged"} }, "headers must not set reserved names"),
		Entry("a reserved header in any case", "reserved-host",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"HOST": "evil"} }, "headers must not set reserved names"),
		Entry("a header name that is not a token", "bad-header",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"X Tenant": "a"} }, "header names must be HTTP tokens"),
		Entry("a header value with CR LF", "header-crlf",
			func(e *v1.WebhookEndpoint) {
				e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a\r\nX-Injected: 1"}
			}, "header values must not contain control characters"),
		Entry("a header value with NUL", "header-nul",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a\x00"} }, "must not contain control characters (CR, LF, NUL, ...)"),
		Entry("a header value with a bare LF", "header-lf",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a\n"} }, "must not contain control characters"),
		Entry("a header value too long", "header-long",
			func(e *v1.WebhookEndpoint) {
				e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": v1.HeaderValue(strings.Repeat("a", 8193))}
			}, "Too long: may not be more than 8192 bytes"),
		Entry("the same header name twice in different case", "header-dup",
			func(e *v1.WebhookEndpoint) {
				e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a", "x-tenant": "b"}
			}, "header names must be unique regardless of case"),
		Entry("proxy-* in headers", "header-proxy",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"Proxy-Foo": "a"} }, "headers must not set reserved names"),
		Entry("more than 32 headers", "header-many",
			func(e *v1.WebhookEndpoint) { e.Spec.Headers = manyHeaders(33) }, "spec.headers: Too many"),
		Entry("a reserved name in headersFrom, in any case", "from-reserved",
			func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("WEBHOOK-ID")} }, "headersFrom must not set reserved names"),
		Entry("User-Agent in headersFrom", "from-agent",
			func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("user-agent")} }, "headersFrom must not set reserved names"),
		Entry("Accept-Encoding in headersFrom", "from-encoding",
			func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("Accept-Encoding")} }, "headersFrom must not set reserved names"),
		Entry("a headersFrom name that is not a token", "from-token",
			func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("X Auth:")} }, "header names must be HTTP tokens"),
		Entry("an empty headersFrom name", "from-empty",
			func(e *v1.WebhookEndpoint) { e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("")} }, "spec.headersFrom[0].name"),
		Entry("a headersFrom name twice in different case", "from-dup",
			func(e *v1.WebhookEndpoint) {
				e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("Authorization"), fromSecret("authorization")}
			}, "headersFrom names must be unique regardless of case"),
		Entry("a name in both headers and headersFrom", "both",
			func(e *v1.WebhookEndpoint) {
				e.Spec.Headers = map[string]v1.HeaderValue{"AUTHORIZATION": "Bearer static"}
				e.Spec.HeadersFrom = []v1.HeaderFromSecret{fromSecret("Authorization")}
			}, "a header name may not appear in both headers and headersFrom"),
		Entry("more than 32 headers and headersFrom together", "both-many",
			func(e *v1.WebhookEndpoint) {
				e.Spec.Headers = manyHeaders(20)
				for i := range 13 {
					e.Spec.HeadersFrom = append(e.Spec.HeadersFrom, fromSecret(fmt.Sprintf("X-From-%d", i)))
				}
			}, "headers and headersFrom together may have at most 32 entries"),
		Entry("a headersFrom Secret key that is not a data key name", "from-key",
			func(e *v1.WebhookEndpoint) {
				h := fromSecret("Authorization")
				h.SecretKeyRef.Key = "../token"
				e.Spec.HeadersFrom = []v1.HeaderFromSecret{h}
			}, "spec.headersFrom[0].secretKeyRef.key"),
		Entry("a headersFrom without a Secret name", "from-no-secret",
			func(e *v1.WebhookEndpoint) {
				h := fromSecret("Authorization")
				h.SecretKeyRef.Name = ""
				e.Spec.HeadersFrom = []v1.HeaderFromSecret{h}
			}, "spec.headersFrom[0].secretKeyRef.name"),
		Entry("an unknown ordering", "ordering",
			func(e *v1.WebhookEndpoint) { e.Spec.Ordering = "Global" }, `supported values: "PerKey", "None"`),
		Entry("a timeout over the cap", "timeout-cap",
			func(e *v1.WebhookEndpoint) { e.Spec.Timeout = pd("61s") }, "timeout must be more than 0s and at most 60s"),
		Entry("a zero timeout", "timeout-zero",
			func(e *v1.WebhookEndpoint) { e.Spec.Timeout = pd("0s") }, "timeout must be more than 0s and at most 60s"),
		Entry("an event type pattern with spaces", "types-space",
			func(e *v1.WebhookEndpoint) { e.Spec.EventTypes = []string{"invoice paid"} }, "spec.eventTypes[0]"),
		Entry("an event type pattern with an empty token", "types-empty",
			func(e *v1.WebhookEndpoint) { e.Spec.EventTypes = []string{"invoice..paid"} }, "spec.eventTypes[0]"),
		Entry("a > that is not last", "types-gt",
			func(e *v1.WebhookEndpoint) { e.Spec.EventTypes = []string{">.paid"} }, "spec.eventTypes[0]"),
		Entry("maxInFlight of zero", "inflight",
			func(e *v1.WebhookEndpoint) { e.Spec.MaxInFlight = -1 }, "spec.maxInFlight"),
		Entry("a warning threshold below the target", "latency",
			func(e *v1.WebhookEndpoint) { e.Spec.Latency = v1.Latency{Target: pd("10s"), WarnAfter: pd("5s")} }, "latency.warnAfter must not be shorter than latency.target"),
		Entry("a missing signing secret", "no-secret",
			func(e *v1.WebhookEndpoint) { e.Spec.SigningSecretRef.Name = "" }, "spec.signingSecretRef.name"),
		Entry("a name with dots", "crm.example",
			nil, "metadata.name must be a DNS label"),
	)
})

var _ = Describe("RetryPolicy validation", func() {
	It("fills in the documented defaults", func() {
		p := policy("defaults", nil)
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		Expect(p.Spec.Schedule).To(Equal([]metav1.Duration{d("10s"), d("30s"), d("2m"), d("10m"), d("1h")}))
		Expect(p.Spec.Window.Duration).To(Equal(24 * time.Hour))
		Expect(*p.Spec.JitterPercent).To(BeEquivalentTo(20))
		Expect(p.Spec.RetryOn.StatusCodes).To(Equal([]string{"408", "429", "5xx"}))
		Expect(*p.Spec.RetryOn.NetworkErrors).To(BeTrue())
		Expect(*p.Spec.RetryAfter.Honor).To(BeTrue())
		Expect(p.Spec.RetryAfter.Max.Duration).To(Equal(time.Hour))
		Expect(p.Spec.MaxAttempts).To(BeNil())
	})

	It("accepts a window of exactly MaxRetryWindow, the default retention less RetentionMargin", func() {
		Expect(v1.MaxRetryWindow).To(Equal(144 * time.Hour))
		p := policy("longest-window", func(p *v1.RetryPolicy) { p.Spec.Window = &metav1.Duration{Duration: v1.MaxRetryWindow} })
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		err := k8sClient.Create(ctx, policy("just-too-long", func(p *v1.RetryPolicy) {
			p.Spec.Window = &metav1.Duration{Duration: v1.MaxRetryWindow + time.Second}
		}))
		Expect(err).To(HaveOccurred(), "the CEL rule on spec.window must repeat MaxRetryWindow")
	})

	DescribeTable("refuses an invalid spec with a message a person understands",
		func(name string, mutate func(*v1.RetryPolicy), message string) {
			err := k8sClient.Create(ctx, policy(name, mutate))
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(message))
		},
		Entry("a zero schedule entry", "zero",
			func(p *v1.RetryPolicy) { p.Spec.Schedule = []metav1.Duration{d("10s"), d("0s")} }, "every schedule delay must be greater than zero"),
		Entry("a negative schedule entry", "negative",
			func(p *v1.RetryPolicy) { p.Spec.Schedule = []metav1.Duration{d("-5s")} }, "spec.schedule[0]"),
		Entry("a window shorter than the first delay", "window",
			func(p *v1.RetryPolicy) {
				p.Spec.Schedule = []metav1.Duration{d("10m")}
				p.Spec.Window = pd("1m")
			}, "window must not be shorter than the first retry delay"),
		Entry("a window beyond the events' retention (9 days)", "window-retention",
			func(p *v1.RetryPolicy) { p.Spec.Window = pd("216h") },
			"window must be at most 144h (6 days): the events stream keeps an event 7 days"),
		Entry("jitter above 100%", "jitter-high",
			func(p *v1.RetryPolicy) { p.Spec.JitterPercent = ptr.To[int32](101) }, "spec.jitterPercent"),
		Entry("jitter below 0%", "jitter-low",
			func(p *v1.RetryPolicy) { p.Spec.JitterPercent = ptr.To[int32](-1) }, "spec.jitterPercent"),
		Entry("a status code that is not one", "code",
			func(p *v1.RetryPolicy) { p.Spec.RetryOn.StatusCodes = []string{"9xx"} }, "spec.retryOn.statusCodes[0]"),
		Entry("zero max attempts", "attempts",
			func(p *v1.RetryPolicy) { p.Spec.MaxAttempts = ptr.To[int32](0) }, "spec.maxAttempts"),
	)
})
