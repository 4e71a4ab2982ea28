package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herald-dev/herald/pkg/signing"
)

const testToken = "0123456789abcdef0123456789abcdef"

// do sends one request to the receiver; token "" sends no Authorization.
func do(t *testing.T, srv *httptest.Server, method, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReceiverControlNeedsToken: every control endpoint refuses a request
// without the bearer token, or with another, and accepts it with the
// token; webhooks themselves need no token.
func TestReceiverControlNeedsToken(t *testing.T) {
	srv := httptest.NewServer(newReceiver(receiverConfig{token: testToken, status: 200}))
	t.Cleanup(srv.Close)

	control := []struct{ method, path string }{
		{http.MethodPut, "/_herald/behaviour?path=/crm&status=500"},
		{http.MethodGet, "/_herald/received"},
		{http.MethodGet, "/_herald/arrivals?path=/crm"},
		{http.MethodGet, "/_herald/unknown"},
	}
	for _, c := range control {
		for _, token := range []string{"", "wrong", testToken + "x", strings.ToUpper(testToken)} {
			if code, _ := do(t, srv, c.method, c.path, token); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d, want 401", c.method, c.path, token, code)
			}
		}
	}
	// Refused: the behaviour did not change.
	if code, _ := do(t, srv, http.MethodPost, "/crm", ""); code != http.StatusOK {
		t.Fatalf("webhook after refused control requests: %d, want 200", code)
	}

	if code, body := do(t, srv, http.MethodPut, control[0].path, testToken); code != http.StatusOK {
		t.Fatalf("PUT behaviour with the token: %d %s", code, body)
	}
	if code, _ := do(t, srv, http.MethodPost, "/crm", ""); code != http.StatusInternalServerError {
		t.Fatalf("webhook after the behaviour change: %d, want 500", code)
	}
	for _, c := range control[1:3] {
		if code, body := do(t, srv, c.method, c.path, testToken); code != http.StatusOK || !strings.Contains(body, "/crm") {
			t.Errorf("%s %s with the token: %d %s", c.method, c.path, code, body)
		}
	}
	// The probe path reveals nothing and needs no token.
	if code, _ := do(t, srv, http.MethodGet, "/_herald/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /_herald/healthz: %d, want 200", code)
	}
}

// TestReceiverControlDisabledWithoutToken: a receiver started without a
// token serves webhooks and refuses every control request.
func TestReceiverControlDisabledWithoutToken(t *testing.T) {
	srv := httptest.NewServer(newReceiver(receiverConfig{status: 200}))
	t.Cleanup(srv.Close)
	for _, token := range []string{"", testToken} {
		if code, _ := do(t, srv, http.MethodPut, "/_herald/behaviour?path=/crm&status=500", token); code != http.StatusForbidden {
			t.Errorf("PUT behaviour with token %q on a receiver without one: %d, want 403", token, code)
		}
	}
	if code, _ := do(t, srv, http.MethodPost, "/crm", ""); code != http.StatusOK {
		t.Errorf("webhook: %d, want 200", code)
	}
}

// TestReceiverSecrets: the signing secrets come from HERALD_RECEIVER_SECRET
// or --secret-file, never from the command line, and verify signatures.
func TestReceiverSecrets(t *testing.T) {
	key, err := signing.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "secrets")
	if err := os.WriteFile(file, []byte("whsec_c2Vjb25kIHNlY3JldCBvZiAyNCBieXRlcyE=\n"+key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if _, err := receiverSettings([]string{"--secret=" + key.String()}); err == nil || !strings.Contains(err.Error(), "--secret-file") {
		t.Errorf("--secret on the command line: %v, want a refusal naming --secret-file", err)
	}

	cfg, err := receiverSettings([]string{"--secret-file=" + file, "--token-file=" + tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.secrets) != 2 || cfg.token != testToken {
		t.Fatalf("from files: %d secrets, token %q", len(cfg.secrets), cfg.token)
	}

	t.Setenv("HERALD_RECEIVER_SECRET", key.String())
	t.Setenv("HERALD_RECEIVER_TOKEN", testToken)
	cfg, err = receiverSettings(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.secrets) != 1 || cfg.token != testToken {
		t.Fatalf("from the environment: %d secrets, token %q", len(cfg.secrets), cfg.token)
	}
	if _, err := receiverSettings([]string{"--secret-file=" + file}); err == nil {
		t.Error("HERALD_RECEIVER_SECRET and --secret-file together: accepted, want a refusal")
	}
	t.Setenv("HERALD_RECEIVER_TOKEN", "short")
	if _, err := receiverSettings(nil); err == nil {
		t.Error("a 5-character token: accepted, want a refusal")
	}

	srv := httptest.NewServer(newReceiver(receiverConfig{secrets: []string{key.String()}, status: 200}))
	t.Cleanup(srv.Close)
	body := []byte(`{"type":"t","id":"evt_1","data":{}}`)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/crm", strings.NewReader(string(body)))
	signing.SetHeaders(req.Header, []signing.Key{key}, "evt_1", time.Now(), body)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("signed webhook: %d, want 200", resp.StatusCode)
	}
	if code, _ := do(t, srv, http.MethodPost, "/crm", ""); code != http.StatusUnauthorized {
		t.Errorf("unsigned webhook: %d, want 401", code)
	}
}

// TestReceiverShowsAuthorizationOnlyAsADigest: the arrivals prove an auth
// header arrived without repeating it.
func TestReceiverShowsAuthorizationOnlyAsADigest(t *testing.T) {
	srv := httptest.NewServer(newReceiver(receiverConfig{token: testToken, status: 200}))
	t.Cleanup(srv.Close)
	if code, _ := do(t, srv, http.MethodPost, "/crm", "receiver-secret-value"); code != http.StatusOK {
		t.Fatalf("webhook: %d", code)
	}
	_, body := do(t, srv, http.MethodGet, "/_herald/arrivals?path=/crm", testToken)
	if strings.Contains(body, "receiver-secret-value") {
		t.Fatalf("arrivals repeat the Authorization header: %s", body)
	}
	if want := digest("Bearer receiver-secret-value"); !strings.Contains(body, want) {
		t.Fatalf("arrivals %s lack %s", body, want)
	}
}
