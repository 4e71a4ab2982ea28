package dispatcher

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

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
	budget *cacheBudget

	mu     sync.Mutex
	cache  map[string]cached
	bytes  int64 // what cache takes, by entrySize
	closed bool  // the worker ended: cache nothing more
}

type cached struct {
	m      mark   // newest delivered; may be ahead of the record
	stored mark   // what the record holds
	rev    uint64 // the record's revision; 0: no record yet
}

// dirty reports whether m still has to be written.
func (c cached) dirty() bool { return c.rev == 0 && c.m != (mark{}) || c.m.newer(c.stored) }

// cacheBudget bounds the bytes every endpoint's version cache of one
// dispatcher takes together: keys are up to 256 bytes each and endpoints
// run to thousands, so a count per endpoint would bound nothing. Over
// budget, the largest caches give up half their written entries first;
// an entry whose write is pending is never dropped, and a dropped one is
// read back from the bucket when its key comes again.
type cacheBudget struct {
	limit int64
	used  atomic.Int64

	mu     sync.Mutex
	stores map[*versionStore]struct{}
}

// DefaultVersionCacheBytes is a dispatcher's version cache budget: about
// 500,000 keys of 100 bytes.
const DefaultVersionCacheBytes = 128 << 20

func newCacheBudget(limit int64) *cacheBudget {
	return &cacheBudget{limit: limit, stores: map[*versionStore]struct{}{}}
}

// entrySize is what a cached key costs: the key, the entry and its share
// of the map.
func entrySize(key string) int64 { return int64(len(key)) + 80 }

// shed drops written entries, from the largest caches down, until the
// budget has a tenth to spare.
func (b *cacheBudget) shed() {
	if b.used.Load() <= b.limit {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	type sized struct {
		s *versionStore
		n int64
	}
	stores := make([]sized, 0, len(b.stores))
	for s := range b.stores {
		stores = append(stores, sized{s, s.size()})
	}
	slices.SortFunc(stores, func(x, y sized) int { return cmp.Compare(y.n, x.n) })
	for _, x := range stores {
		if b.used.Load() <= b.limit*9/10 {
			return
		}
		x.s.dropHalf()
	}
}

func (s *versionStore) size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// dropHalf forgets about half of the written entries, chosen by map order.
func (s *versionStore) dropHalf() {
	s.mu.Lock()
	defer s.mu.Unlock()
	target := s.bytes / 2
	for k, v := range s.cache {
		if s.bytes <= target {
			return
		}
		if !v.dirty() {
			s.forgetLocked(k)
		}
	}
}

func (s *versionStore) forgetLocked(key string) {
	delete(s.cache, key)
	s.bytes -= entrySize(key)
	s.budget.used.Add(-entrySize(key))
}

// close gives the store's bytes back to the budget.
func (s *versionStore) close() {
	s.budget.mu.Lock()
	delete(s.budget.stores, s)
	s.budget.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for k := range s.cache {
		s.forgetLocked(k)
	}
}

// maxKeyToken bounds the bucket key token an ordering key becomes: longer
// keys are hashed, so no tenant's key can make a subject NATS refuses.
const maxKeyToken = 64

func newVersionStore(kv jetstream.KeyValue, budget *cacheBudget, namespace, endpoint string) *versionStore {
	s := &versionStore{kv: kv, budget: budget, prefix: streams.EndpointKey(namespace, endpoint) + ".", cache: map[string]cached{}}
	budget.mu.Lock()
	budget.stores[s] = struct{}{}
	budget.mu.Unlock()
	return s
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
	if s.closed {
		s.mu.Unlock()
		return c
	}
	old, ok := s.cache[key]
	if ok {
		if old.m.newer(c.m) {
			c.m = old.m
		}
		if !authoritative && old.rev > c.rev {
			c.stored, c.rev = old.stored, old.rev
		}
	} else {
		s.bytes += entrySize(key)
		s.budget.used.Add(entrySize(key))
	}
	s.cache[key] = c
	s.mu.Unlock()
	s.budget.shed()
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
		c, closed := s.cache[key], s.closed
		s.mu.Unlock()
		if closed {
			// Its cache is gone, so "nothing to write" would be a guess.
			return errors.New("recording delivered version: the endpoint's worker has stopped")
		}
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
