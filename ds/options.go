package ds

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Durability says when Store returns.
type Durability uint8

const (
	// Sync: Store returns once the messages are fsynced (one fsync per group commit). Default.
	Sync Durability = iota
	// NoSync: Store returns once the messages are in the OS page cache. A process crash loses
	// nothing; a machine crash may lose the last writes. For tests and benchmarks.
	NoSync
)

func (d Durability) String() string {
	if d == NoSync {
		return "nosync"
	}
	return "sync"
}

// RetainForever, as Options.Retention, keeps every generation.
const RetainForever time.Duration = -1

// MaxShards is the largest NShards.
const MaxShards = 1024

// MaxQueueLength is the largest QueueLength.
const MaxQueueLength = 1 << 20

// MaxMessageBytesLimit is the largest MaxMessageBytes: MQTT's own packet limit.
const MaxMessageBytesLimit = 256 << 20

// Options configure a DB. The zero value of every field means its documented default; see
// DefaultOptions. Open works on a copy, so the caller may reuse its Options. OpenBackend, whose
// Backend comes with its shards and storage configured, uses only NShards, MaxMessageBytes and
// Logger.
type Options struct {
	// NShards is the number of shards. Fixed when the DB is created and stored in it; reopening
	// with another value fails with ErrShardMismatch. 0 means the stored value when reopening
	// and 16 when creating.
	NShards int

	// Retention is how long a sealed generation is kept after its end: a generation is dropped
	// once until + Retention < now. Default 24h; RetainForever keeps everything.
	Retention time.Duration

	// GenerationSpan is how often a new generation is started. Default Retention/4 (so a message
	// lives between Retention and 1.25×Retention), or 6h with RetainForever.
	GenerationSpan time.Duration

	// Layout is the layout of new generations. Default LayoutLTS.
	Layout stream.LayoutKind

	// WildcardThresholds of the learned topic structure: a trie node at depth i keeps up to
	// WildcardThresholds[i] distinct literal children (the last value repeats deeper) before new
	// children are folded into '+'. Default [100, 10].
	WildcardThresholds []int

	// FlushInterval is an extra group-commit window: a shard's writer waits up to this long
	// after the first waiting message for more before it commits. Default 0: no wait — the
	// writer commits whatever is queued, and the messages that arrive during a commit's fsync
	// (which overlaps the next batch) form the next group. Measured: a 500µs window gave the
	// same throughput and twice the p99 Store latency. Negative is the same as 0.
	FlushInterval time.Duration

	// MaxBatchMessages and MaxBatchBytes bound one shard commit. Defaults 1000 and 1 MiB. A
	// single Store larger than that is still committed as one batch.
	MaxBatchMessages int
	MaxBatchBytes    int

	// QueueLength is how many Store calls may wait per shard before Store blocks (back-pressure).
	// Default 1024; at most MaxQueueLength.
	QueueLength int

	// Durability: Sync (default) or NoSync.
	Durability Durability

	// MaxMessageBytes bounds one message (topic + payload + client ID + properties). Default
	// 1 MiB; at most MaxMessageBytesLimit.
	MaxMessageBytes int

	// StorageQuota: once the DB's files take more bytes, Store fails with ErrQuotaExceeded
	// until generations are dropped. Reads and drops keep working. Default 0: no quota.
	StorageQuota int64

	// Logger receives the DB's logs. Default: discard.
	Logger *slog.Logger

	// Expert settings; the defaults are right for almost everyone.
	Expert ExpertOptions
}

// ExpertOptions are knobs for tests, benchmarks and unusual deployments.
type ExpertOptions struct {
	// FS is the filesystem. Default: the OS's.
	FS vfs.FS
	// PebblePerShard gives every shard its own Pebble instance (own WAL, own memtable) instead
	// of one instance with shard-prefixed keys. Used when the DB is created; a reopen uses the
	// stored mode whatever this says. See docs/design-changes.md for the measured trade-off.
	PebblePerShard bool
	// MemTableBytes is the memtable budget over all Pebble instances. Default 128 MiB.
	MemTableBytes int
	// CacheBytes is the block cache size. Default 64 MiB.
	CacheBytes int64
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// MaintenanceInterval is how often rotation and retention are checked. Default 1s, or
	// GenerationSpan/10 when that is shorter. (The quota is checked at each commit, measured at
	// most every 100ms.)
	MaintenanceInterval time.Duration
}

// DefaultOptions returns Options with every default filled in.
func DefaultOptions() *Options {
	o := &Options{}
	o.EnsureDefaults()
	return o
}

// Clone returns a copy of o that shares no slices with it.
func (o *Options) Clone() *Options {
	c := *o
	c.WildcardThresholds = slices.Clone(o.WildcardThresholds)
	return &c
}

// EnsureDefaults fills every zero field with its default. NShards stays 0 (Open decides).
func (o *Options) EnsureDefaults() {
	if o.Retention == 0 {
		o.Retention = 24 * time.Hour
	}
	if o.GenerationSpan == 0 {
		if o.Retention > 0 {
			o.GenerationSpan = o.Retention / 4
		} else {
			o.GenerationSpan = 6 * time.Hour
		}
	}
	if o.Layout == 0 {
		o.Layout = stream.LayoutLTS
	}
	if len(o.WildcardThresholds) == 0 {
		o.WildcardThresholds = slices.Clone(layout.DefaultThresholds)
	}
	if o.MaxBatchMessages == 0 {
		o.MaxBatchMessages = 1000
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = 1 << 20
	}
	if o.QueueLength == 0 {
		o.QueueLength = 1024
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Expert.FS == nil {
		o.Expert.FS = vfs.Default
	}
	if o.Expert.MemTableBytes == 0 {
		o.Expert.MemTableBytes = 128 << 20
	}
	if o.Expert.CacheBytes == 0 {
		o.Expert.CacheBytes = 64 << 20
	}
	if o.Expert.Now == nil {
		o.Expert.Now = time.Now
	}
	if o.Expert.MaintenanceInterval == 0 {
		o.Expert.MaintenanceInterval = min(time.Second, max(o.GenerationSpan/10, time.Millisecond))
	}
}

// Validate reports every problem with o at once, as one error wrapping ErrInvalidOptions.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.NShards < 0 || o.NShards > MaxShards {
		bad("NShards %d is outside [1, %d]", o.NShards, MaxShards)
	}
	if o.Retention < 0 && o.Retention != RetainForever {
		bad("Retention %v is negative (use RetainForever)", o.Retention)
	}
	if o.GenerationSpan < 0 || o.GenerationSpan > 0 && o.GenerationSpan < time.Millisecond {
		bad("GenerationSpan %v is negative or below 1ms", o.GenerationSpan)
	}
	if o.Retention > 0 && o.GenerationSpan > 0 && o.GenerationSpan > o.Retention {
		bad("GenerationSpan %v exceeds Retention %v", o.GenerationSpan, o.Retention)
	}
	kind := o.Layout
	if kind == 0 {
		kind = stream.LayoutLTS // the default
	}
	if err := (layout.Params{Kind: kind, Thresholds: o.WildcardThresholds}).Validate(); err != nil {
		bad("layout: %v", err)
	}
	if o.MaxBatchMessages < 0 {
		bad("MaxBatchMessages %d is negative", o.MaxBatchMessages)
	}
	if o.MaxBatchBytes < 0 {
		bad("MaxBatchBytes %d is negative", o.MaxBatchBytes)
	}
	if o.QueueLength < 0 || o.QueueLength > MaxQueueLength {
		bad("QueueLength %d is outside [1, %d]", o.QueueLength, MaxQueueLength)
	}
	if o.Durability != Sync && o.Durability != NoSync {
		bad("Durability %d is unknown", o.Durability)
	}
	if o.MaxMessageBytes < 0 || o.MaxMessageBytes > MaxMessageBytesLimit {
		bad("MaxMessageBytes %d is outside [1, %d]", o.MaxMessageBytes, MaxMessageBytesLimit)
	}
	if o.StorageQuota < 0 {
		bad("StorageQuota %d is negative", o.StorageQuota)
	}
	if o.Expert.MemTableBytes < 0 {
		bad("Expert.MemTableBytes %d is negative", o.Expert.MemTableBytes)
	}
	if o.Expert.CacheBytes < 0 {
		bad("Expert.CacheBytes %d is negative", o.Expert.CacheBytes)
	}
	if o.Expert.MaintenanceInterval < 0 || o.Expert.MaintenanceInterval > 0 && o.Expert.MaintenanceInterval < 100*time.Microsecond {
		bad("Expert.MaintenanceInterval %v is negative or below 100µs", o.Expert.MaintenanceInterval)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
}
