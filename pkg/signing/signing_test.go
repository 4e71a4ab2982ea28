package signing_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/herald-dev/herald/pkg/signing"
)

const (
	oldSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	newSecret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
)

func keys(t *testing.T, secrets ...string) []signing.Key {
	t.Helper()
	var out []signing.Key
	for _, s := range secrets {
		k, err := signing.ParseSecret(s)
		if err != nil {
			t.Fatalf("ParseSecret: %v", err)
		}
		out = append(out, k)
	}
	return out
}

func signed(t *testing.T, body []byte, secrets ...string) http.Header {
	t.Helper()
	h := http.Header{}
	signing.SetHeaders(h, keys(t, secrets...), "evt_1", time.Now(), body)
	return h
}

func TestReferenceLibraryVerifiesEverySecretDuringRotation(t *testing.T) {
	body := []byte(`{"type":"invoice.paid","id":"evt_1","data":{}}`)
	h := signed(t, body, oldSecret, newSecret)
	if n := len(strings.Fields(h.Get(signing.HeaderSignature))); n != 2 {
		t.Fatalf("want two signatures during rotation, got %d", n)
	}
	for _, s := range []string{oldSecret, newSecret} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(body, h); err != nil {
			t.Errorf("reference library refused a signature: %v", err)
		}
		if _, err := signing.Verify(s, h, body, 0); err != nil {
			t.Errorf("signing.Verify refused a signature: %v", err)
		}
	}
}

func TestMatchesReferenceSignature(t *testing.T) {
	body := []byte(`{"a":1}`)
	ts := time.Unix(1700000000, 0)
	wh, err := standardwebhooks.NewWebhook(oldSecret)
	if err != nil {
		t.Fatal(err)
	}
	want, err := wh.Sign("msg_1", ts, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := signing.Sign(keys(t, oldSecret), "msg_1", ts, body); got != want {
		t.Fatalf("signature differs from the reference library:\n got %s\nwant %s", got, want)
	}
}

func TestVerifyRefuses(t *testing.T) {
	body := []byte(`{"a":1}`)
	for _, tc := range []struct {
		name   string
		secret string
		header func(http.Header)
		body   []byte
		want   error
	}{
		{"a tampered body", oldSecret, nil, []byte(`{"a":2}`), signing.ErrNoMatchingSignature},
		{"another secret", newSecret, nil, body, signing.ErrNoMatchingSignature},
		{"a stale timestamp", oldSecret, func(h http.Header) {
			signing.SetHeaders(h, keys(t, oldSecret), "evt_1", time.Now().Add(-time.Hour), body)
		}, body, signing.ErrTimestampTooOld},
		{"a missing id", oldSecret, func(h http.Header) { h.Del(signing.HeaderID) }, body, signing.ErrMissingHeaders},
		{"a malformed secret", "hunter2", nil, body, signing.ErrMalformedSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := signed(t, body, oldSecret)
			if tc.header != nil {
				tc.header(h)
			}
			_, err := signing.Verify(tc.secret, h, tc.body, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseSecretErrorNeverShowsTheSecret(t *testing.T) {
	_, err := signing.ParseSecret("whsec_not base64 at all!")
	if err == nil || strings.Contains(err.Error(), "not base64") {
		t.Fatalf("want an error without the secret, got %v", err)
	}
}
