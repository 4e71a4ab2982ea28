// Package events is Herald's producer contract: how an application puts an
// event into NATS JetStream so that Herald delivers it.
//
// An event is published to the subject herald.events.<namespace>.<type>
// on the HERALD_EVENTS stream. Its body is the JSON envelope receivers get,
// byte for byte; its headers carry what the dispatcher needs without parsing
// the body:
//
//	Nats-Msg-Id     <namespace>:<event id> (required); JetStream drops a
//	                second publish with the same value inside the duplicate
//	                window. The namespace prefix keeps one tenant's ids
//	                from colliding with another's: deduplication is
//	                stream-wide.
//	Herald-Key      the ordering key, the record the event is about (optional)
//	Herald-Version  an integer that grows per key; newer versions win (optional)
//	Herald-Time     the event time, RFC 3339
//
// Publish validates before it sends and returns errors that wrap the
// sentinels below, so callers can tell their users what to fix.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// NATS names of the producer contract.
const (
	// StreamPrefix starts the name of every namespace's events stream.
	StreamPrefix = "HERALD_EVENTS_"
	// SubjectPrefix is the first two tokens of every event subject.
	SubjectPrefix = "herald.events"

	HeaderID      = "Nats-Msg-Id"
	HeaderKey     = "Herald-Key"
	HeaderVersion = "Herald-Version"
	HeaderTime    = "Herald-Time"

	// DefaultMaxBodyBytes is the largest envelope accepted by default.
	DefaultMaxBodyBytes = 64 << 10
	// HeaderAllowance is added to the body limit for the stream's
	// max_msg_size, which counts headers too.
	HeaderAllowance = 4 << 10

	maxIDLength  = 128
	maxKeyLength = 256
	maxTypeLen   = 255
)

// Errors returned by Validate and Publish, matched with errors.Is.
var (
	ErrMissingID        = errors.New("event id is required")
	ErrInvalidID        = errors.New("event id must be 1-128 characters of letters, digits, '_' and '-'")
	ErrInvalidType      = errors.New("event type must be dot-separated parts of letters, digits, '_' and '-', such as invoice.paid")
	ErrInvalidNamespace = errors.New("namespace must be a Kubernetes namespace name (a DNS label)")
	ErrInvalidKey       = errors.New("ordering key must be at most 256 printable characters")
	ErrInvalidVersion   = errors.New("version must not be negative")
	ErrBodyNotJSON      = errors.New("event data must be valid JSON")
	ErrBodyTooLarge     = errors.New("event is over the size limit")
	ErrInvalidTime      = errors.New("event time must be RFC 3339")
	ErrHeadersTooLarge  = errors.New("event headers are over the size limit")
	// ErrStreamFull is returned when the events stream has reached its
	// byte budget: it refuses new events rather than drop stored ones.
	ErrStreamFull = errors.New("the events stream is full (its byte budget is reached); nothing was stored, try again later")
	// ErrNoStream is returned when the namespace has no events stream:
	// Herald creates it with the namespace's first WebhookEndpoint.
	ErrNoStream = errors.New("the namespace has no events stream (Herald creates it with the namespace's first WebhookEndpoint); nothing was stored")
)

var (
	idPattern        = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	typePattern      = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	namespacePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// Event is one change to deliver.
type Event struct {
	// ID identifies the event across every attempt and replay (webhook-id).
	ID string
	// Namespace is the Kubernetes namespace whose endpoints receive it.
	Namespace string
	// Type such as subscription.updated; its dots are subject tokens.
	Type string
	// Key is the record the event is about (sub_123); events of one key are
	// delivered in order. Empty means unordered.
	Key string
	// Version grows per key; 0 means none given, and then stream order
	// decides which event of a key is newer.
	Version int64
	// Time is when the change happened; zero means now.
	Time time.Time
	// Data is the JSON the receiver needs.
	Data json.RawMessage
}

// Envelope is the JSON body every receiver gets.
type Envelope struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	Timestamp time.Time       `json:"timestamp"`
	Key       string          `json:"key,omitempty"`
	Version   int64           `json:"version,omitempty"`
	Data      json.RawMessage `json:"data"`
}

// Subject is the NATS subject an event of this namespace and type goes to.
func Subject(namespace, eventType string) string {
	return SubjectPrefix + "." + namespace + "." + eventType
}

// StreamName is the stream that holds one namespace's events. Each
// namespace has its own, so JetStream's deduplication by Nats-Msg-Id, its
// byte budget and its consumers are the namespace's alone: a producer of
// another namespace can neither suppress nor crowd out its events.
func StreamName(namespace string) string { return StreamPrefix + namespace }

// NamespaceSubjects matches every event of one namespace.
func NamespaceSubjects(namespace string) string {
	return SubjectPrefix + "." + namespace + ".>"
}

// Validate checks the event's fields, not its size (see Encode).
func (e Event) Validate() error {
	switch {
	case e.ID == "":
		return ErrMissingID
	case len(e.ID) > maxIDLength || !idPattern.MatchString(e.ID):
		return fmt.Errorf("%w: %q", ErrInvalidID, e.ID)
	case len(e.Type) > maxTypeLen || !typePattern.MatchString(e.Type):
		return fmt.Errorf("%w: %q", ErrInvalidType, e.Type)
	case !namespacePattern.MatchString(e.Namespace):
		return fmt.Errorf("%w: %q", ErrInvalidNamespace, e.Namespace)
	case !validKey(e.Key):
		return fmt.Errorf("%w: %q", ErrInvalidKey, clip(e.Key))
	case e.Version < 0:
		return fmt.Errorf("%w: %d", ErrInvalidVersion, e.Version)
	case len(e.Data) == 0 || !json.Valid(e.Data):
		return ErrBodyNotJSON
	}
	return nil
}

// Encode validates the event and returns the body and headers it is
// published with. The body is the receiver's envelope, at most maxBody bytes.
func (e Event) Encode(maxBody int) ([]byte, map[string]string, error) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if err := e.Validate(); err != nil {
		return nil, nil, err
	}
	var data bytes.Buffer
	if err := json.Compact(&data, e.Data); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBodyNotJSON, err)
	}
	body, err := json.Marshal(Envelope{
		Type: e.Type, ID: e.ID, Timestamp: e.Time.UTC(), Key: e.Key, Version: e.Version, Data: data.Bytes(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding envelope: %w", err)
	}
	if len(body) > maxBody {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBodyTooLarge, len(body), maxBody)
	}
	h := map[string]string{
		HeaderID:   MsgID(e.Namespace, e.ID),
		HeaderTime: e.Time.UTC().Format(time.RFC3339Nano),
	}
	if e.Key != "" {
		h[HeaderKey] = e.Key
	}
	if e.Version > 0 {
		h[HeaderVersion] = strconv.FormatInt(e.Version, 10)
	}
	return body, h, nil
}

// CheckID reports whether id is a valid event id (wrapping ErrMissingID or
// ErrInvalidID), for tools that put an id a person typed into a subject.
func CheckID(id string) error {
	switch {
	case id == "":
		return ErrMissingID
	case len(id) > maxIDLength || !idPattern.MatchString(id):
		return fmt.Errorf("%w: %q", ErrInvalidID, clip(id))
	}
	return nil
}

// MsgID is the Nats-Msg-Id of an event. Deduplication is per stream, so
// per namespace already; the namespace in it keeps ids readable in
// mirrors and exports that mix namespaces.
func MsgID(namespace, id string) string { return namespace + ":" + id }

// Meta is what the dispatcher reads from a stored event's subject and
// headers.
type Meta struct {
	ID        string
	Namespace string
	Type      string
	Key       string
	Version   int64
	Time      time.Time
}

// ErrMalformed is wrapped by every error of ParseMeta: a stored event that
// breaks the producer contract. Producers that skip this package can store
// anything the stream accepts, so the dispatcher checks every event by the
// same rules Validate applies before it uses any field.
var ErrMalformed = errors.New("malformed event")

// ParseMeta reads and checks an event's metadata from its stored subject,
// headers and body, by the rules Validate and Encode apply at publish
// time: the id, type, namespace, key, version and time, the headers' total
// size and a JSON body. Errors wrap ErrMalformed and the rule's sentinel.
func ParseMeta(subject string, h map[string][]string, body []byte) (Meta, error) {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	bad := func(err error) (Meta, error) { return Meta{}, fmt.Errorf("%w: %w", ErrMalformed, err) }
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok {
		return bad(fmt.Errorf("subject %q is not an event subject", subject))
	}
	ns, typ, ok := strings.Cut(rest, ".")
	if !ok {
		return bad(fmt.Errorf("%w: subject %q has no event type", ErrInvalidType, subject))
	}
	if !namespacePattern.MatchString(ns) {
		return bad(fmt.Errorf("%w: %q", ErrInvalidNamespace, ns))
	}
	if len(typ) > maxTypeLen || !typePattern.MatchString(typ) {
		return bad(fmt.Errorf("%w: %q", ErrInvalidType, clip(typ)))
	}
	m := Meta{Namespace: ns, Type: typ, Key: get(HeaderKey)}
	// A producer that publishes without this package may leave out the
	// namespace prefix; the id is what follows it either way.
	raw := get(HeaderID)
	m.ID = strings.TrimPrefix(raw, ns+":")
	switch {
	case m.ID == "":
		return bad(ErrMissingID)
	case len(m.ID) > maxIDLength || !idPattern.MatchString(m.ID):
		return bad(fmt.Errorf("%w: %q", ErrInvalidID, clip(raw)))
	case !validKey(m.Key):
		return bad(fmt.Errorf("%w: header %s has %d bytes", ErrInvalidKey, HeaderKey, len(m.Key)))
	}
	if v := get(HeaderVersion); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return bad(fmt.Errorf("%w: header %s=%q", ErrInvalidVersion, HeaderVersion, clip(v)))
		}
		m.Version = n
	}
	if t := get(HeaderTime); t != "" {
		ts, err := time.Parse(time.RFC3339Nano, t)
		if err != nil || len(t) > 64 {
			return bad(fmt.Errorf("%w: header %s=%q is not RFC 3339", ErrInvalidTime, HeaderTime, clip(t)))
		}
		m.Time = ts
	}
	size := 0
	for k, vs := range h {
		size += len(k)
		for _, v := range vs {
			size += len(v)
		}
	}
	if size > HeaderAllowance {
		return bad(fmt.Errorf("%w: headers take %d bytes, limit %d", ErrHeadersTooLarge, size, HeaderAllowance))
	}
	if len(body) == 0 || !json.Valid(body) {
		return bad(ErrBodyNotJSON)
	}
	return m, nil
}

func validKey(k string) bool {
	return len(k) <= maxKeyLength && strings.IndexFunc(k, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

// clip shortens hostile input quoted in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
