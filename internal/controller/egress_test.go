package controller

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/egress"
)

// loopbackEgress opens 127.0.0.0/8, where the suite's receivers listen.
var loopbackEgress = egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})

func TestURLRefused(t *testing.T) {
	g := egress.New(egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24")}})
	for url, want := range map[string]string{
		"http://169.254.169.254/latest/meta-data": "spec.url: egress to 169.254.169.254 refused: a link-local address (cloud metadata services live there); an administrator can allow it with --egress-allow=169.254.169.254/32",
		"http://127.0.0.1:8081/healthz":           "egress to 127.0.0.1 refused",
		"https://[::1]:8443/":                     "egress to ::1 refused",
		"https://[::ffff:10.0.0.1]/":              "egress to 10.0.0.1 refused",
		"http://10.215.0.1/":                      "--egress-allow=10.215.0.1/32",
		"http://10.214.0.7:8080/":                 "", // allowed
		"https://8.8.8.8/":                        "",
		"https://example.com/":                    "", // hostnames are the dispatcher's to check
		"http://localhost:8080/":                  "",
	} {
		err := urlRefused(g, url)
		s, ok := asStalled(err)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", url, err)
		case want != "" && !ok:
			t.Errorf("%s: got %v, want URLRefused", url, err)
		case want != "" && (s.Reason != v1.ReasonURLRefused || !strings.Contains(s.Message, want) || !errors.Is(err, egress.ErrRefused)):
			t.Errorf("%s: got %s %q, want URLRefused with %q", url, s.Reason, s.Message, want)
		}
	}
}

var _ = Describe("WebhookEndpoint egress", func() {
	Context("when the URL is an address the egress guard refuses", func() {
		It("is Stalled URLRefused, naming the address and the flag, and does not deliver until the URL is fixed", func() {
			ns := newNamespace("egress")
			ep := newEndpoint(ns, "crm")
			ep.Spec.URL = "http://169.254.169.254/latest/meta-data"
			create(newSecret(ns, "crm-signing"), ep)
			expectConditions(ns, "crm", map[string]string{
				v1.ReadyCondition:   "False/URLRefused",
				v1.StalledCondition: "True/URLRefused",
			})
			msg := conditionMessage(getEndpoint(Default, ns, "crm"), v1.StalledCondition)
			Expect(msg).To(ContainSubstring("egress to 169.254.169.254 refused"))
			Expect(msg).To(ContainSubstring("--egress-allow=169.254.169.254/32"))
			Consistently(func() bool { return fake.delivering(ns, "crm") }, time.Second, poll).Should(BeFalse(), "a refused URL must not be delivered to")

			updateEndpoint(ns, "crm", func(e *v1.WebhookEndpoint) { e.Spec.URL = "http://127.0.0.1:8090/crm" })
			expectConditions(ns, "crm", readyAndDelivering)
			Eventually(func() bool { return fake.delivering(ns, "crm") }, eventually, poll).Should(BeTrue())
		})
	})
})
