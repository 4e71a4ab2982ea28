package controller

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

func withHeaderFrom(header, secret, key string) endpointOpt {
	return func(e *v1.WebhookEndpoint) {
		e.Spec.HeadersFrom = append(e.Spec.HeadersFrom,
			v1.HeaderFromSecret{Name: header, SecretKeyRef: v1.SecretKeyReference{Name: secret, Key: key}})
	}
}

// token is a value that cannot appear anywhere by chance.
func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "tok" + hex.EncodeToString(b)
}

func tokenSecret(ns, name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func setSecretKey(ns, name, key, value string) {
	GinkgoHelper()
	var s corev1.Secret
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s)).To(Succeed())
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	s.Data[key] = []byte(value)
	Expect(k8sClient.Update(ctx, &s)).To(Succeed())
}

// expectNowhere checks that none of the values appear in the endpoint's
// status, in the Events of its namespace, or in the manager's logs.
func expectNowhere(ns, name string, values ...string) {
	GinkgoHelper()
	status, err := json.Marshal(getEndpoint(Default, ns, name).Status)
	Expect(err).NotTo(HaveOccurred())
	var evs eventsv1.EventList
	Expect(k8sClient.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
	events, err := json.Marshal(evs)
	Expect(err).NotTo(HaveOccurred())
	for _, v := range values {
		Expect(string(status)).NotTo(ContainSubstring(v), "status")
		Expect(string(events)).NotTo(ContainSubstring(v), "events")
		Expect(suiteLogs.Contains(v)).To(BeFalse(), "logs")
	}
}

var _ = Describe("WebhookEndpoint headersFrom", func() {
	It("hands the dispatcher the Secret's value as a header, follows a rotation and shows the value nowhere", func() {
		ns := newNamespace("hdrfrom")
		first, second := token(), token()
		create(newSecret(ns, "crm-signing"),
			tokenSecret(ns, "crm-auth", map[string]string{"token": "Bearer " + first}),
			newEndpoint(ns, "crm",
				withHeaderFrom("Authorization", "crm-auth", "token"),
				func(e *v1.WebhookEndpoint) { e.Spec.Headers = map[string]v1.HeaderValue{"X-Tenant": "a"} }))

		Eventually(func(g Gomega) map[string]string {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue())
			g.Expect(ep.Keys).To(HaveLen(1))
			return ep.Headers
		}, eventually, poll).Should(Equal(map[string]string{"Authorization": "Bearer " + first, "X-Tenant": "a"}))
		expectConditions(ns, "crm", readyAndDelivering)

		By("rotating the token in the Secret")
		setSecretKey(ns, "crm-auth", "token", "Bearer "+second)
		Eventually(func(g Gomega) string {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue())
			return ep.Headers["Authorization"]
		}, eventually, poll).Should(Equal("Bearer " + second))

		expectNowhere(ns, "crm", first, second)
	})

	It("is Stalled HeaderSecretMissing, then HeaderSecretInvalid, naming the Secret and key but never the value", func() {
		ns := newNamespace("hdrmissing")
		tok := token()
		create(newSecret(ns, "crm-signing"), newEndpoint(ns, "crm", withHeaderFrom("Authorization", "crm-auth", "token")))
		expectConditions(ns, "crm", map[string]string{
			v1.ReadyCondition:       "False/HeaderSecretMissing",
			v1.StalledCondition:     "True/HeaderSecretMissing",
			v1.ReconcilingCondition: "absent",
		})
		Expect(conditionMessage(getEndpoint(Default, ns, "crm"), v1.StalledCondition)).
			To(ContainSubstring(`Secret "crm-auth" named by spec.headersFrom[0] (header Authorization) not found`))
		Eventually(func(g Gomega) []string { return eventReasons(g, ns, "crm") }, eventually, poll).Should(ContainElement("HeaderSecretMissing"))
		Consistently(func() bool { return fake.delivering(ns, "crm") }, time.Second, poll).Should(BeFalse(), "a stalled endpoint must not deliver")

		By("creating the Secret without the key")
		create(tokenSecret(ns, "crm-auth", map[string]string{"other": tok}))
		Eventually(func(g Gomega) string {
			return conditionMessage(getEndpoint(g, ns, "crm"), v1.StalledCondition)
		}, eventually, poll).Should(ContainSubstring(`Secret "crm-auth" has no data key "token"`))

		By("adding the key with a trailing line feed")
		setSecretKey(ns, "crm-auth", "token", tok+"\n")
		expectConditions(ns, "crm", map[string]string{v1.StalledCondition: "True/HeaderSecretInvalid"})
		Expect(conditionMessage(getEndpoint(Default, ns, "crm"), v1.StalledCondition)).
			To(ContainSubstring(`Secret "crm-auth" data key "token"`))
		Consistently(func() bool { return fake.delivering(ns, "crm") }, time.Second, poll).Should(BeFalse())

		By("fixing the value")
		setSecretKey(ns, "crm-auth", "token", tok)
		expectConditions(ns, "crm", readyAndDelivering)
		Eventually(func(g Gomega) string {
			ep, ok := fake.get(ns, "crm")
			g.Expect(ok).To(BeTrue())
			g.Expect(ep.Suspend).To(BeFalse())
			return ep.Headers["Authorization"]
		}, eventually, poll).Should(Equal(tok))
		expectNowhere(ns, "crm", tok)
	})
})
