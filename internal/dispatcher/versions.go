package dispatcher

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/internal/streams"
)

// mark is the position of an event of one key: its version, and its stream
// sequence to order events that carry no version (or the same one).
type mark struct {
	version int64
	seq     uint64
}

// newer reports whether m comes after o.
func (m mark) newer(o mark) bool {
	if m.version != o.version {
		return m.version > o.version
	}
	return m.seq > o.seq
}

// versionStore remembers, durably in the versions bucket, the newest event
// delivered per endpoint and key, with a cache in front: each endpoint has
// one worker, so the cache is only stale after someone else wrote, and the
// compare-and-set in record catches that.
type versionStore struct {
	kv     jetstream.KeyValue
	prefix string // <namespace>.<endpoint>.

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	m   mark
	rev uint64 // 0: no record yet
}

const versionCacheSize = 100_000

func newVersionStore(kv jetstream.KeyValue, namespace, endpoint string) *versionStore {
	return &versionStore{kv: kv, prefix: streams.EndpointKey(namespace, endpoint) + ".", cache: map[string]cached{}}
}

// kvKey encodes an ordering key into the bucket's key alphabet.
func (s *versionStore) kvKey(key string) string {
	return s.prefix + base64.RawURLEncoding.EncodeToString([]byte(key))
}

func (s *versionStore) load(ctx context.Context, key string) (cached, error) {
	s.mu.Lock()
	c, ok := s.cache[key]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	e, err := s.kv.Get(ctx, s.kvKey(key))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		c = cached{}
	case err != nil:
		return cached{}, fmt.Errorf("reading delivered version: %w", err)
	default:
		m, perr := parseMark(string(e.Value()))
		if perr != nil {
			return cached{}, perr
		}
		c = cached{m: m, rev: e.Revision()}
	}
	s.put(key, c)
	return c, nil
}

func (s *versionStore) put(key string, c cached) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cache) >= versionCacheSize {
		clear(s.cache)
	}
	s.cache[key] = c
}

// delivered returns the newest mark delivered for key.
func (s *versionStore) delivered(ctx context.Context, key string) (mark, error) {
	c, err := s.load(ctx, key)
	return c.m, err
}

// record raises key's delivered mark to m unless something newer is there.
func (s *versionStore) record(ctx context.Context, key string, m mark) error {
	for range 3 {
		c, err := s.load(ctx, key)
		if err != nil {
			return err
		}
		if !m.newer(c.m) && c.rev != 0 {
			return nil
		}
		val := []byte(strconv.FormatInt(m.version, 10) + ":" + strconv.FormatUint(m.seq, 10))
		var rev uint64
		if c.rev == 0 {
			rev, err = s.kv.Create(ctx, s.kvKey(key), val)
		} else {
			rev, err = s.kv.Update(ctx, s.kvKey(key), val, c.rev)
		}
		if err == nil {
			s.put(key, cached{m: m, rev: rev})
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return fmt.Errorf("recording delivered version: %w", err)
		}
		// Someone else wrote: forget the cache and compare again.
		s.mu.Lock()
		delete(s.cache, key)
		s.mu.Unlock()
	}
	return fmt.Errorf("recording delivered version: concurrent writers kept winning")
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

func parseMark(s string) (mark, error) {
	v, q, ok := strings.Cut(s, ":")
	ver, err1 := strconv.ParseInt(v, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return mark{}, fmt.Errorf("delivered version record %q is malformed", s)
	}
	return mark{version: ver, seq: seq}, nil
}
