package ds

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/fsutil"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// embedded is the Backend of Open: the shards of package shard over Pebble in one directory,
// either one Pebble instance with shard-prefixed keys or one instance per shard.
type embedded struct {
	opts    *Options
	pebbles []*pebble.DB // one, or one per shard
	shards  []*shard.Shard
	// watch is the DB's notification, set by Watch after the shards are open (they need their
	// OnChange before the DB exists); a change before that has nobody to tell.
	watch   atomic.Pointer[func()]
	durable atomic.Pointer[func(shard.Durable)]
	quota   struct {
		sync.Mutex
		checked  time.Time
		exceeded bool
	}
}

var (
	_ Backend        = (*embedded)(nil)
	_ StorageStatser = (*embedded)(nil)
	_ ShardBackend   = embeddedShard{}
)

// openEmbedded opens the embedded storage in dir, creating it if it does not exist. opts has
// its defaults and is valid; openEmbedded sets its NShards and Expert.PebblePerShard to the
// values stored in dir, which win over the caller's when the DB exists.
func openEmbedded(dir string, opts *Options) (*embedded, error) {
	fs := opts.Expert.FS
	if err := fsutil.MkdirAllSynced(fs, dir); err != nil {
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
	e := &embedded{opts: opts}
	if err := e.open(dir); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// open opens the Pebble instances and the shards over them. On error, Close releases what was
// opened.
func (e *embedded) open(dir string) error {
	o := e.opts
	n := 1
	if o.Expert.PebblePerShard {
		n = o.NShards
	}
	cache := pebble.NewCache(o.Expert.CacheBytes)
	defer cache.Unref()
	for i := 0; i < n; i++ {
		path := o.Expert.FS.PathJoin(dir, sharedPebbleDir)
		if o.Expert.PebblePerShard {
			path = o.Expert.FS.PathJoin(dir, shardPebbleDir(i))
		}
		p, err := openPebble(path, pebbleOptions(o, n, cache))
		if err != nil {
			return fmt.Errorf("strata: open %s: %w", path, err)
		}
		e.pebbles = append(e.pebbles, p)
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
			OnChange:            e.notifyChanged,
			OnDurable:           e.notifyDurable,
			Logger:              o.Logger,
		}
		if o.StorageQuota > 0 {
			cfg.QuotaExceeded = e.quotaExceeded
		}
		if o.Expert.PebblePerShard {
			cfg.DB = e.pebbles[i]
		} else {
			cfg.DB, cfg.Prefix = e.pebbles[0], layout.ShardPrefix(id)
		}
		s, err := shard.Open(cfg)
		if err != nil {
			return fmt.Errorf("strata: open shard %d: %w", i, err)
		}
		e.shards = append(e.shards, s)
	}
	return nil
}

// Shards returns the shards, adapted to ShardBackend.
func (e *embedded) Shards() []ShardBackend {
	out := make([]ShardBackend, len(e.shards))
	for i, s := range e.shards {
		out[i] = embeddedShard{s}
	}
	return out
}

// Watch registers the DB's notification of new streams and generations.
func (e *embedded) Watch(f func()) { e.watch.Store(&f) }

// WatchDurable registers the DB's feed of durable commits.
func (e *embedded) WatchDurable(f func(shard.Durable)) { e.durable.Store(&f) }

func (e *embedded) notifyDurable(d shard.Durable) {
	if f := e.durable.Load(); f != nil {
		(*f)(d)
	}
}

func (e *embedded) notifyChanged() {
	if f := e.watch.Load(); f != nil {
		(*f)()
	}
}

// Close stops the shards, which commit every accepted request first, then closes Pebble.
func (e *embedded) Close() error {
	var errs []error
	for _, s := range e.shards {
		errs = append(errs, s.Close())
	}
	for _, p := range e.pebbles {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

// StorageStats sums the Pebble instances' disk usage and bytes written, and collects their
// reports.
func (e *embedded) StorageStats() StorageStats {
	var st StorageStats
	for _, p := range e.pebbles {
		disk, written, report := pebbleopts.Usage(p)
		st.DiskBytes += disk
		st.BytesWritten += written
		st.Pebble = append(st.Pebble, report)
	}
	return st
}

// quotaExceeded reports whether the DB's files exceed the quota, measuring at most every 100ms.
func (e *embedded) quotaExceeded() bool {
	e.quota.Lock()
	defer e.quota.Unlock()
	if time.Since(e.quota.checked) >= 100*time.Millisecond {
		var used uint64
		for _, p := range e.pebbles {
			used += pebbleopts.QuotaUsage(p.Metrics())
		}
		e.quota.exceeded = used > uint64(e.opts.StorageQuota)
		e.quota.checked = time.Now()
	}
	return e.quota.exceeded
}

// embeddedShard adapts *shard.Shard to ShardBackend: its Submit returns the concrete
// shard.Waiter, and its counters are a field, not a method. Everything else is the shard's own.
type embeddedShard struct{ *shard.Shard }

// Submit is the shard's Submit with the Waiter as an interface. shard.Waiter is a struct of one
// pointer, so the conversion does not allocate on Store's path.
func (s embeddedShard) Submit(ctx context.Context, msgs []*message.Message, bytes int) (Waiter, error) {
	w, err := s.Shard.Submit(ctx, msgs, bytes)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// SubmitTxns is the shard's SubmitTxns with the Waiter as an interface.
func (s embeddedShard) SubmitTxns(ctx context.Context, txns []*shard.Txn, bytes int) (Waiter, error) {
	w, err := s.Shard.SubmitTxns(ctx, txns, bytes)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Streams is the shard's Streams; an embedded shard is always available.
func (s embeddedShard) Streams(filter []string, since uint64) ([]stream.Stream, error) {
	return s.Shard.Streams(filter, since), nil
}

// ReadLimit is the shard's read limit; an embedded shard is always available.
func (s embeddedShard) ReadLimit() (uint64, error) { return s.Shard.ReadLimit(), nil }

// Generations is the shard's Generations; an embedded shard is always available.
func (s embeddedShard) Generations() ([]generation.Info, error) { return s.Shard.Generations(), nil }

// ShardMetrics returns the shard's counters.
func (s embeddedShard) ShardMetrics() *shard.Metrics { return &s.Metrics }

// pebbleOptions returns Pebble's options for one of n instances: the memtable budget is
// shared among them.
func pebbleOptions(o *Options, n int, cache *pebble.Cache) *pebble.Options {
	return pebbleopts.New(pebbleopts.Config{
		FS: o.Expert.FS, Cache: cache, MemTableBytes: o.Expert.MemTableBytes / n, Logger: pebbleopts.SlogLogger{L: o.Logger},
	})
}

// openPebble is pebble.Open with a fatal storage error during the open (say, a MANIFEST that
// cannot be created on a full disk) returned as an error wrapping ErrFailed instead of a panic
// in the broker's goroutine.
func openPebble(path string, opts *pebble.Options) (db *pebble.DB, err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case pebbleopts.Fatal:
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
