// Package signing signs and verifies webhooks per the Standard Webhooks
// specification: headers webhook-id, webhook-timestamp (unix seconds of the
// attempt) and webhook-signature, a space-separated list of
// v1,<base64 HMAC-SHA256 of "id.timestamp.body">, one per active secret.
// Secrets are written whsec_<base64 key>.
//
// Herald signs with it; Go receivers can verify with it (any Standard
// Webhooks library verifies the same requests).
package signing

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"

	secretPrefix = "whsec_"
)

// DefaultTolerance is how far a webhook-timestamp may be from now before
// Verify refuses it as a possible replay.
const DefaultTolerance = 5 * time.Minute

// Errors from ParseSecret and Verify.
var (
	ErrMalformedSecret     = errors.New("signing secret must be whsec_ followed by base64 of at least 24 bytes")
	ErrMissingHeaders      = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrTimestampTooOld     = errors.New("webhook-timestamp is too far in the past")
	ErrTimestampTooNew     = errors.New("webhook-timestamp is too far in the future")
	ErrInvalidTimestamp    = errors.New("webhook-timestamp is not unix seconds")
	ErrNoMatchingSignature = errors.New("no signature matches")
)

// Key is a parsed signing secret.
type Key []byte

// ParseSecret parses a whsec_<base64> secret. The error never contains the
// secret.
func ParseSecret(s string) (Key, error) {
	s = strings.TrimSpace(s)
	raw, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return nil, ErrMalformedSecret
	}
	k, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || len(k) < 24 {
		return nil, ErrMalformedSecret
	}
	return Key(k), nil
}

// String renders the key in whsec_ form.
func (k Key) String() string { return secretPrefix + base64.StdEncoding.EncodeToString(k) }

// Sign returns the webhook-signature value for one message: one v1
// signature per key, space-separated.
func Sign(keys []Key, id string, ts time.Time, body []byte) string {
	var b strings.Builder
	prefix := id + "." + strconv.FormatInt(ts.Unix(), 10) + "."
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(signature(k, prefix, body))
	}
	return b.String()
}

func signature(k Key, prefix string, body []byte) string {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(prefix))
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// SetHeaders sets the three Standard Webhooks headers on h.
func SetHeaders(h http.Header, keys []Key, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, Sign(keys, id, ts, body))
}

// Verify checks a received webhook against the receiver's secret: one
// matching v1 signature and a timestamp within tolerance of now (0 means
// DefaultTolerance). It returns the event id.
func Verify(secret string, h http.Header, body []byte, tolerance time.Duration) (string, error) {
	k, err := ParseSecret(secret)
	if err != nil {
		return "", err
	}
	id, tsRaw, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || tsRaw == "" || sigs == "" {
		return "", ErrMissingHeaders
	}
	sec, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil {
		return "", ErrInvalidTimestamp
	}
	if tolerance == 0 {
		tolerance = DefaultTolerance
	}
	switch age := time.Since(time.Unix(sec, 0)); {
	case age > tolerance:
		return "", ErrTimestampTooOld
	case age < -tolerance:
		return "", ErrTimestampTooNew
	}
	want := signature(k, id+"."+tsRaw+".", body)
	for _, s := range strings.Fields(sigs) {
		v, sig, ok := strings.Cut(s, ",")
		if ok && v == "v1" && hmac.Equal([]byte(sig), []byte(want)) {
			return id, nil
		}
	}
	return "", fmt.Errorf("%w for webhook %q", ErrNoMatchingSignature, id)
}
