package ds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// DB is an embedded Strata store: NShards shards in one directory. All methods are safe for
// concurrent use.
type DB struct {
	dir     string
	opts    *Options
	man     manifest
	pebbles []*pebble.DB // one, or one per shard
	shards  []*shard.Shard

	mu struct {
		sync.RWMutex // held for reading by every call, for writing by Close
		closed       bool
	}
	changed struct {
		sync.Mutex
		ch     chan struct{}
		closed bool // ch stays closed: the DB is closed
	}
	quota struct {
		sync.Mutex
		checked  time.Time
		exceeded bool
	}
	usage atomic.Uint64
}

// Open opens the DB in dir, creating it if it does not exist. opts may be nil for the defaults.
func Open(dir string, opts *Options) (*DB, error) {
	if opts == nil {
		opts = &Options{}
	}
	opts = opts.Clone()
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	fs := opts.Expert.FS
	if err := mkdirAllSynced(fs, dir); err != nil {
		return nil, fmt.Errorf("strata: open %s: %w", dir, err)
	}
	m, found, err := readManifest(fs, dir)
	if err != nil {
		return nil, fmt.Errorf("strata: open %s: %w", dir, err)
	}
	if found {
		if opts.NShards != 0 && opts.NShards != m.NShards {
			return nil, fmt.Errorf("%w: %s was created with NShards %d, Options.NShards is %d",
				ErrShardMismatch, dir, m.NShards, opts.NShards)
		}
		opts.NShards = m.NShards
		opts.Expert.PebblePerShard = m.PebblePerShard
	} else {
		if opts.NShards == 0 {
			opts.NShards = 16
		}
		m = manifest{Format: formatVersion, NShards: opts.NShards, PebblePerShard: opts.Expert.PebblePerShard,
			Created: opts.Expert.Now().UTC().Format(time.RFC3339)}
		if err := writeManifest(fs, dir, m); err != nil {
			return nil, fmt.Errorf("strata: create %s: %w", dir, err)
		}
	}
	db := &DB{dir: dir, opts: opts, man: m}
	db.changed.ch = make(chan struct{})
	if err := db.open(); err != nil {
		db.closeAll()
		return nil, err
	}
	return db, nil
}

func (db *DB) open() error {
	o := db.opts
	n := 1
	if o.Expert.PebblePerShard {
		n = o.NShards
	}
	cache := pebble.NewCache(o.Expert.CacheBytes)
	defer cache.Unref()
	for i := 0; i < n; i++ {
		path := o.Expert.FS.PathJoin(db.dir, "pebble")
		if o.Expert.PebblePerShard {
			path = o.Expert.FS.PathJoin(db.dir, fmt.Sprintf("shard-%04d", i))
		}
		p, err := openPebble(path, pebbleOptions(o, n, cache))
		if err != nil {
			return fmt.Errorf("strata: open %s: %w", path, err)
		}
		db.pebbles = append(db.pebbles, p)
	}
	params := layout.Params{Kind: o.Layout, Thresholds: o.WildcardThresholds}
	for i := 0; i < o.NShards; i++ {
		id := stream.ShardID(i)
		cfg := shard.Config{
			ID: id, Layout: params,
			Sync:                o.Durability == Sync,
			FlushInterval:       o.FlushInterval,
			MaxBatchMessages:    o.MaxBatchMessages,
			MaxBatchBytes:       o.MaxBatchBytes,
			QueueLength:         o.QueueLength,
			GenerationSpan:      o.GenerationSpan,
			Retention:           o.Retention,
			MaintenanceInterval: o.Expert.MaintenanceInterval,
			Now:                 o.Expert.Now,
			OnChange:            db.notifyChanged,
			Logger:              o.Logger,
		}
		if o.StorageQuota > 0 {
			cfg.QuotaExceeded = db.quotaExceeded
		}
		if o.Expert.PebblePerShard {
			cfg.DB = db.pebbles[i]
		} else {
			cfg.DB, cfg.Prefix = db.pebbles[0], layout.ShardPrefix(id)
		}
		s, err := shard.Open(cfg)
		if err != nil {
			return fmt.Errorf("strata: open shard %d: %w", i, err)
		}
		db.shards = append(db.shards, s)
	}
	return nil
}

// pebbleOptions returns Pebble's options for one of n instances: the memtable budget is
// shared among them.
func pebbleOptions(o *Options, n int, cache *pebble.Cache) *pebble.Options {
	return pebbleopts.New(pebbleopts.Config{
		FS: o.Expert.FS, Cache: cache, MemTableBytes: o.Expert.MemTableBytes / n, Logger: pebbleLogger{o.Logger},
	})
}

// pebbleLogger routes Pebble's logs into slog: its info lines (flushes, compactions) at
// debug level, so a DB does not flood the broker's log.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble", "fatal", true)
	panic(pebbleFatal(msg))
}

// pebbleFatal is the panic value of pebbleLogger.Fatalf. Pebble calls Fatalf where it cannot
// go on (a MANIFEST that cannot be written); its default would exit the process.
type pebbleFatal string

// openPebble is pebble.Open with a fatal storage error during the open (say, a MANIFEST that
// cannot be created on a full disk) returned as an error wrapping ErrFailed instead of a panic
// in the broker's goroutine.
func openPebble(path string, opts *pebble.Options) (db *pebble.DB, err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case pebbleFatal:
			db, err = nil, fmt.Errorf("%w: pebble: %s", ErrFailed, string(r))
		case runtime.Error:
			panic(r) // a bug, not a storage failure
		case error:
			// Pebble panics with the I/O error where it cannot go on (moving its MANIFEST
			// marker, for one).
			db, err = nil, fmt.Errorf("%w: pebble open: %w", ErrFailed, r)
		default:
			panic(r)
		}
	}()
	return pebble.Open(path, opts)
}

// Close commits every accepted Store, stops the shards and closes the storage. Calls after
// Close return ErrClosed. Close waits for calls in progress.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.mu.closed {
		return ErrClosed
	}
	db.mu.closed = true
	err := db.closeAll()
	// Wake whoever waits for new streams: there will be none.
	db.changed.Lock()
	close(db.changed.ch)
	db.changed.closed = true
	db.changed.Unlock()
	return err
}

func (db *DB) closeAll() error {
	var errs []error
	for _, s := range db.shards {
		errs = append(errs, s.Close())
	}
	for _, p := range db.pebbles {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

// enter starts a call; the returned function ends it.
func (db *DB) enter() (func(), error) {
	db.mu.RLock()
	if db.mu.closed {
		db.mu.RUnlock()
		return nil, ErrClosed
	}
	return db.mu.RUnlock, nil
}

// NShards returns the number of shards.
func (db *DB) NShards() int { return len(db.shards) }

// ShardOf returns the shard that stores the messages of a publisher: xxhash64 of the client ID
// bytes modulo NShards. The function is part of the on-disk format and never changes.
func ShardOf(clientID string, nShards int) stream.ShardID {
	return stream.ShardID(xxhash.Sum64String(clientID) % uint64(nShards))
}

// Ref identifies a stored message: its shard and its timestamp there.
type Ref struct {
	Shard     stream.ShardID
	Timestamp uint64 // µs since the Unix epoch
}

// Store stores msgs and returns once they are durable (per Options.Durability), with each
// message's Ref in order.
//
// Every message is validated first; if one is invalid (ErrInvalidTopic, ErrMessageTooLarge,
// ErrInvalidMessage) nothing is stored. Messages go to their publisher's shard; the messages of
// one shard are stored atomically, in order. If a shard fails, the error names it and that
// shard stored none of the call's messages, while other shards' messages may be stored (their
// Refs are set). ctx bounds the wait for room in a full queue (back-pressure); once queued,
// Store waits for the outcome, so a returned error says the messages were not stored, with
// one exception: ErrFailed (a failed fsync) means durability is unknown. The Message values
// are not retained.
func (db *DB) Store(ctx context.Context, msgs ...Message) ([]Ref, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := len(db.shards)
	sizes := make([]int, len(msgs))
	for i := range msgs {
		size, err := db.validate(&msgs[i])
		if err != nil {
			return nil, fmt.Errorf("message %d of %d: %w", i, len(msgs), err)
		}
		sizes[i] = size
	}
	copies := make([]message.Message, len(msgs))
	copy(copies, msgs)
	refs := make([]Ref, len(msgs))
	if len(msgs) == 1 {
		// The common case of a broker storing each PUBLISH as it arrives: no grouping.
		m := &copies[0]
		sh := ShardOf(m.ClientID, n)
		if err := db.shards[sh].Store(ctx, []*message.Message{m}, sizes[0]); err != nil {
			return nil, fmt.Errorf("shard %d: %w", sh, err)
		}
		refs[0] = Ref{Shard: sh, Timestamp: m.Timestamp}
		return refs, nil
	}
	type group struct {
		msgs  []*message.Message
		bytes int
		w     shard.Waiter
		err   error
	}
	groups := make(map[stream.ShardID]*group, min(n, len(msgs)))
	order := make([]stream.ShardID, 0, min(n, len(msgs)))
	for i := range copies {
		sh := ShardOf(copies[i].ClientID, n)
		g := groups[sh]
		if g == nil {
			g = &group{}
			groups[sh] = g
			order = append(order, sh)
		}
		g.msgs = append(g.msgs, &copies[i])
		g.bytes += sizes[i]
	}
	for _, sh := range order {
		g := groups[sh]
		g.w, g.err = db.shards[sh].Submit(ctx, g.msgs, g.bytes)
	}
	var errs []error
	for _, sh := range order {
		g := groups[sh]
		if g.err == nil {
			g.err = g.w.Wait()
		}
		if g.err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", sh, g.err))
			for _, m := range g.msgs {
				m.Timestamp = 0
			}
		}
	}
	for i := range copies {
		if copies[i].Timestamp != 0 {
			refs[i] = Ref{Shard: stream.ShardID(copies[i].Shard), Timestamp: copies[i].Timestamp}
		}
	}
	return refs, errors.Join(errs...)
}

// validate checks m and returns its size (message.Size), which Store reuses for the batch
// byte budget.
func (db *DB) validate(m *Message) (int, error) {
	if err := topic.ValidateName(m.Topic); err != nil {
		return 0, err
	}
	if m.QoS > 2 {
		return 0, fmt.Errorf("%w: QoS %d", ErrInvalidMessage, m.QoS)
	}
	if m.Properties.PayloadFormat > 1 {
		return 0, fmt.Errorf("%w: payload format indicator %d", ErrInvalidMessage, m.Properties.PayloadFormat)
	}
	size := message.Size(m)
	if size > db.opts.MaxMessageBytes {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, size, db.opts.MaxMessageBytes)
	}
	return size, nil
}

// quotaExceeded reports whether the DB's files exceed the quota, measuring at most every 100ms.
func (db *DB) quotaExceeded() bool {
	db.quota.Lock()
	defer db.quota.Unlock()
	if time.Since(db.quota.checked) >= 100*time.Millisecond {
		var used uint64
		for _, p := range db.pebbles {
			used += quotaUsage(p.Metrics())
		}
		db.usage.Store(used)
		db.quota.exceeded = used > uint64(db.opts.StorageQuota)
		db.quota.checked = time.Now()
	}
	return db.quota.exceeded
}

// quotaUsage is the disk usage that counts against StorageQuota: sstables and blob files (live,
// obsolete and zombie), compactions in progress, and the live data in the WAL. Not the WAL files'
// physical size: Pebble recycles WAL files, so a WAL holding a few bytes can occupy a whole old
// file, and a quota near the memtable size would then stay exceeded forever, whatever is
// dropped.
func quotaUsage(m *pebble.Metrics) uint64 {
	t, b := m.Table.Local, m.BlobFiles.Local
	return t.LiveSize + t.ObsoleteSize + t.ZombieSize + b.LiveSize + b.ObsoleteSize + b.ZombieSize +
		uint64(max(m.Compact.InProgressBytes, 0)) + m.WAL.Size
}

// StreamsChanged returns a channel that is closed the next time the set of streams changes: a
// new topic pattern is learned, or a generation is added or dropped; and when the DB is
// closed. Call Streams then, and StreamsChanged again for the next change. A reader thus
// learns of new streams without polling every stream. It does not fire for new messages in
// existing streams.
func (db *DB) StreamsChanged() <-chan struct{} {
	db.changed.Lock()
	defer db.changed.Unlock()
	return db.changed.ch
}

func (db *DB) notifyChanged() {
	db.changed.Lock()
	defer db.changed.Unlock()
	if db.changed.closed {
		return
	}
	close(db.changed.ch)
	db.changed.ch = make(chan struct{})
}
