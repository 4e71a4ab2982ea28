package dispatcher

import (
	"context"
	"crypto/sha256"
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
// compare-and-set in flush catches that. The cache also holds marks whose
// write failed: they are what reads see (so an older version never gets
// through while the bucket is down) until flush stores them.
type versionStore struct {
	kv     jetstream.KeyValue
	prefix string // <namespace>.<endpoint>.

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	m      mark   // newest delivered; may be ahead of the record
	stored mark   // what the record holds
	rev    uint64 // the record's revision; 0: no record yet
}

// dirty reports whether m still has to be written.
func (c cached) dirty() bool { return c.rev == 0 && c.m != (mark{}) || c.m.newer(c.stored) }

const versionCacheSize = 100_000

// maxKeyToken bounds the bucket key token an ordering key becomes: longer
// keys are hashed, so no tenant's key can make a subject NATS refuses.
const maxKeyToken = 64

func newVersionStore(kv jetstream.KeyValue, namespace, endpoint string) *versionStore {
	return &versionStore{kv: kv, prefix: streams.EndpointKey(namespace, endpoint) + ".", cache: map[string]cached{}}
}

// kvKey encodes an ordering key into the bucket's key alphabet.
func (s *versionStore) kvKey(key string) string {
	tok := base64.RawURLEncoding.EncodeToString([]byte(key))
	if len(tok) > maxKeyToken {
		sum := sha256.Sum256([]byte(key))
		tok = "h-" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return s.prefix + tok
}

func (s *versionStore) load(ctx context.Context, key string) (cached, error) {
	s.mu.Lock()
	c, ok := s.cache[key]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := s.read(ctx, key)
	if err != nil {
		return cached{}, err
	}
	return s.merge(key, c, false), nil
}

// read gets key's record from the bucket.
func (s *versionStore) read(ctx context.Context, key string) (cached, error) {
	e, err := s.kv.Get(ctx, s.kvKey(key))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return cached{}, nil
	case err != nil:
		return cached{}, fmt.Errorf("reading delivered version: %w", err)
	}
	m, err := parseMark(string(e.Value()))
	if err != nil {
		return cached{}, err
	}
	return cached{m: m, stored: m, rev: e.Revision()}, nil
}

// merge folds c into the cache and returns the result: the newest mark
// wins; the record's state is c's when c is a fresher write of it, or
// always when authoritative (a read after a conflict: the record may have
// aged out or been purged, so its revision can go down).
func (s *versionStore) merge(key string, c cached, authoritative bool) cached {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.cache[key]
	if ok {
		if old.m.newer(c.m) {
			c.m = old.m
		}
		if !authoritative && old.rev > c.rev {
			c.stored, c.rev = old.stored, old.rev
		}
	} else if len(s.cache) >= versionCacheSize {
		for k, v := range s.cache {
			if !v.dirty() {
				delete(s.cache, k)
			}
		}
	}
	s.cache[key] = c
	return c
}

// delivered returns the newest mark delivered for key.
func (s *versionStore) delivered(ctx context.Context, key string) (mark, error) {
	c, err := s.load(ctx, key)
	return c.m, err
}

// record raises key's delivered mark to m, in memory at once and then in
// the bucket. When the write fails the mark stays in memory and flush
// writes it later.
func (s *versionStore) record(ctx context.Context, key string, m mark) error {
	c, err := s.load(ctx, key)
	if err != nil {
		// Unknown record: remember m alone; flush reads before it writes.
		c = cached{}
	}
	c.m = m
	s.merge(key, c, false)
	if err != nil {
		return err
	}
	return s.flush(ctx, key)
}

// flush writes key's cached mark unless the record already holds it or
// something newer.
func (s *versionStore) flush(ctx context.Context, key string) error {
	for range 3 {
		s.mu.Lock()
		c := s.cache[key]
		s.mu.Unlock()
		if !c.dirty() {
			return nil
		}
		val := []byte(strconv.FormatInt(c.m.version, 10) + ":" + strconv.FormatUint(c.m.seq, 10))
		var rev uint64
		var err error
		if c.rev == 0 {
			rev, err = s.kv.Create(ctx, s.kvKey(key), val)
		} else {
			rev, err = s.kv.Update(ctx, s.kvKey(key), val, c.rev)
		}
		if err == nil {
			s.merge(key, cached{m: c.m, stored: c.m, rev: rev}, false)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return fmt.Errorf("recording delivered version: %w", err)
		}
		// Someone else wrote: read the record and compare again.
		fresh, rerr := s.read(ctx, key)
		if rerr != nil {
			return rerr
		}
		s.merge(key, fresh, true)
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
		return mark{}, fmt.Errorf("delivered version record %q is malformed", clip(s))
	}
	return mark{version: ver, seq: seq}, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
