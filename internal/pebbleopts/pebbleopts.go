// Package pebbleopts holds the Pebble options Strata runs with, so that the benchmark's raw
// Pebble baseline can use exactly the same ones.
package pebbleopts

import (
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Config is what the options depend on.
type Config struct {
	FS            vfs.FS
	Cache         *pebble.Cache
	MemTableBytes int // for this instance
	Logger        pebble.Logger
}

// New returns Strata's Pebble options.
//
// Why these values (measured with cmd/ds-bench on a 2-core VM, 1 KiB payloads):
//   - Value separation: messages are ~1 KiB values written once and dropped by generation, so
//     keeping values in blob files out of the LSM spares compactions rewriting them; it raised
//     durable ingest by ~35% and replay too.
//   - A large memtable and a high L0 stop threshold: keys arrive as per-stream runs plus small
//     index keys; on 2 cores compaction falls behind in bursts, and stalling writes early costs
//     more than a deeper L0.
//   - At most 2 concurrent compactions: there are only 2 cores.
func New(c Config) *pebble.Options {
	po := &pebble.Options{
		FS:                          c.FS,
		Cache:                       c.Cache,
		MemTableSize:                uint64(max(c.MemTableBytes, 4<<20)),
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       64,
		LBaseMaxBytes:               256 << 20,
		CompactionConcurrencyRange:  func() (int, int) { return 1, 2 },
		FormatMajorVersion:          pebble.FormatValueSeparation,
		Logger:                      c.Logger,
	}
	po.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{
			Enabled:               true,
			MinimumSize:           256,
			MaxBlobReferenceDepth: 10,
			RewriteMinimumAge:     10 * time.Minute,
			TargetGarbageRatio:    0.5,
		}
	}
	po.EnsureDefaults()
	// Pebble's default reaction to a damaged block is Logger.Fatalf, which would take the
	// broker down for one bad block. Log it; the read that found it returns the error (a
	// corruption error, which shard reads wrap in ErrCorruption).
	el := *po.EventListener
	el.DataCorruption = func(info pebble.DataCorruptionInfo) {
		if c.Logger != nil {
			c.Logger.Errorf("data corruption in %s: %v", info.Path, info.Details)
		}
	}
	po.EventListener = &el
	return po
}
