package dispatcher

import (
	"errors"
	"fmt"
)

// ErrHeaderValueInvalid is wrapped when a header value read from a Secret
// cannot be sent. The error says why, never what the value is.
var ErrHeaderValueInvalid = errors.New("header value invalid")

// MaxHeaderValueBytes caps one header value, as the CRD caps spec.headers
// values: larger ones are refused by many receivers' servers, so every
// attempt would fail.
const MaxHeaderValueBytes = 8192

// CheckHeaderValue reports whether v can be sent as an HTTP header value:
// not empty, at most MaxHeaderValueBytes, and no control characters other
// than tab (net/http refuses them, so every attempt would fail, and a CR
// or LF would otherwise split the request). The error never quotes v.
func CheckHeaderValue(v []byte) error {
	if len(v) == 0 {
		return fmt.Errorf("%w: the value is empty", ErrHeaderValueInvalid)
	}
	if len(v) > MaxHeaderValueBytes {
		return fmt.Errorf("%w: the value is %d bytes, more than %d", ErrHeaderValueInvalid, len(v), MaxHeaderValueBytes)
	}
	for i, b := range v {
		if (b < ' ' && b != '\t') || b == 0x7f {
			what := fmt.Sprintf("control character 0x%02x", b)
			switch b {
			case '\r':
				what = "a carriage return (CR)"
			case '\n':
				what = "a line feed (LF)"
				if i == len(v)-1 {
					what = "a trailing line feed (LF; written with `echo` instead of `echo -n`?)"
				}
			case 0:
				what = "a NUL byte"
			}
			return fmt.Errorf("%w: the value contains %s at byte %d", ErrHeaderValueInvalid, what, i)
		}
	}
	return nil
}

// requestHeaders merges the static headers of the spec with the values
// resolved from Secrets (the API refuses a name in both).
func requestHeaders[V ~string](static map[string]V, fromSecrets map[string]string) map[string]string {
	if len(static) == 0 && len(fromSecrets) == 0 {
		return nil
	}
	h := make(map[string]string, len(static)+len(fromSecrets))
	for k, v := range static {
		h[k] = string(v)
	}
	for k, v := range fromSecrets {
		h[k] = v
	}
	return h
}
