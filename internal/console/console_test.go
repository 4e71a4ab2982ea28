package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

func TestChartsBinByLatestAttempt(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 30, 20, 0, time.UTC)
	at := func(ago time.Duration, phase deliveryv1.Phase, latency time.Duration) deliveryv1.WebhookDelivery {
		t := metav1.NewTime(now.Add(-ago))
		d := deliveryv1.WebhookDelivery{Status: deliveryv1.WebhookDeliveryStatus{Phase: phase, LastAttemptTime: &t}}
		if latency > 0 {
			d.Status.LastLatency = &metav1.Duration{Duration: latency}
		}
		return d
	}
	ds := []deliveryv1.WebhookDelivery{
		at(10*time.Second, deliveryv1.PhaseSent, 10*time.Millisecond),
		at(11*time.Second, deliveryv1.PhaseSent, 30*time.Millisecond),
		at(5*time.Minute, deliveryv1.PhaseRetrying, 300*time.Millisecond),
		at(59*time.Minute, deliveryv1.PhaseFailed, 0),
		at(61*time.Minute, deliveryv1.PhaseSent, time.Second), // before the hour
		at(time.Minute, deliveryv1.PhaseSuperseded, 0),        // nothing was sent
		{Status: deliveryv1.WebhookDeliveryStatus{Phase: deliveryv1.PhaseQueued}},
	}
	attempts, latency := charts(ds, now)
	if want := "Last hour: 2 delivered, 1 retrying, 1 dead."; attempts.Summary != want {
		t.Errorf("attempts summary = %q, want %q", attempts.Summary, want)
	}
	if want := "Last hour: p50 30ms, p99 300ms, slowest 300ms over 3 answers."; latency.Summary != want {
		t.Errorf("latency summary = %q, want %q", latency.Summary, want)
	}
	// One group per minute with attempts: now's (2 delivered), -5m, -59m.
	if n := strings.Count(string(attempts.SVG), "<g><title>"); n != 3 {
		t.Errorf("%d bars, want 3:\n%s", n, attempts.SVG)
	}
	if !strings.Contains(string(attempts.SVG), "10:30: 2 delivered, 0 retrying, 0 dead") {
		t.Errorf("the current minute's bar is missing:\n%s", attempts.SVG)
	}
}

func TestGuardRefusesOtherHostsAndForeignPosts(t *testing.T) {
	s := &Server{csrf: "token", key: "k"}
	h := s.guard(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	for _, c := range []struct {
		name, method, host, body, origin, site string
		want                                   int
		noSession                              bool
	}{
		{name: "no key", method: http.MethodGet, host: "127.0.0.1:8042", want: http.StatusUnauthorized, noSession: true},
		{"loopback get", http.MethodGet, "127.0.0.1:8042", "", "", "", http.StatusNoContent, false},
		{"localhost get", http.MethodGet, "localhost:8042", "", "", "", http.StatusNoContent, false},
		{"rebound name", http.MethodGet, "evil.example:8042", "", "", "", http.StatusMisdirectedRequest, false},
		{"post with token", http.MethodPost, "127.0.0.1:8042", "csrf=token", "http://127.0.0.1:8042", "same-origin", http.StatusNoContent, false},
		{"post without token", http.MethodPost, "127.0.0.1:8042", "", "", "", http.StatusForbidden, false},
		{"post from another origin", http.MethodPost, "127.0.0.1:8042", "csrf=token", "http://evil.example", "", http.StatusForbidden, false},
		{"post from another site", http.MethodPost, "127.0.0.1:8042", "csrf=token", "", "cross-site", http.StatusForbidden, false},
		{"post with Origin null", http.MethodPost, "127.0.0.1:8042", "csrf=token", "null", "", http.StatusForbidden, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, "http://"+c.host+"/", strings.NewReader(c.body))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if c.origin != "" {
				r.Header.Set("Origin", c.origin)
			}
			if c.site != "" {
				r.Header.Set("Sec-Fetch-Site", c.site)
			}
			if !c.noSession {
				r.AddCookie(&http.Cookie{Name: "herald-console-8042", Value: "k"})
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != c.want {
				t.Errorf("got %d, want %d", w.Code, c.want)
			}
			if csp := w.Header().Get("Content-Security-Policy"); c.want != http.StatusMisdirectedRequest && !strings.Contains(csp, "frame-ancestors 'none'") {
				t.Errorf("no framing guard: %q", csp)
			}
		})
	}
}

func TestKeyInTheAddressBecomesACookie(t *testing.T) {
	s := &Server{key: "k"}
	h := s.guard(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8042/events/x?key=k&y=1", nil))
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/events/x?y=1" {
		t.Fatalf("got %d to %q, want 303 to /events/x?y=1", w.Code, w.Header().Get("Location"))
	}
	c := w.Result().Cookies()
	if len(c) != 1 || c[0].Name != "herald-console-8042" || c[0].Value != "k" || !c[0].HttpOnly || c[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookie = %+v", c)
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8042/?key=wrong", nil))
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("a wrong key: got %d, want 401", w.Code)
	}
}
