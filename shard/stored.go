package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// This file is the read-only side of the shard's on-disk state: the loaders that the shard
// itself uses when it opens, exported for operators' tools (package inspect) that read a store
// without opening it, and the check of the shard's meta keys. The meta key constants are in
// shard.go and record.go; nothing outside this package spells them.

// Stored is a shard's state as it is on disk.
type Stored struct {
	Found   bool // a generation table exists (false: a shard never written)
	Table   generation.Table
	LastTS  uint64 // the last assigned timestamp
	Layouts map[stream.GenerationID]layout.Generation
}

// LoadStored reads a shard's generation table, last timestamp and every generation's learned
// layout from r; prefix is the shard's key prefix (nil when it has its Pebble instance to
// itself). A shard never written gives Found false and no error. Bytes that do not decode give
// an error wrapping ErrCorruption.
func LoadStored(r pebble.Reader, id stream.ShardID, prefix []byte) (Stored, error) {
	st := Stored{Layouts: map[stream.GenerationID]layout.Generation{}}
	v, closer, err := r.Get(metaKey(prefix, metaTable))
	if errors.Is(err, pebble.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return st, readError(fmt.Sprintf("shard %d: generation table", id), err)
	}
	table, err := generation.Decode(v)
	closer.Close()
	if err != nil {
		return st, fmt.Errorf("%w: shard %d: generation table: %w", ErrCorruption, id, err)
	}
	if len(table.Gens) == 0 {
		return st, fmt.Errorf("%w: shard %d: empty generation table", ErrCorruption, id)
	}
	st.Found, st.Table = true, table
	last, found, err := loadU64(r, metaKey(prefix, metaLast), fmt.Sprintf("shard %d: last timestamp", id))
	switch {
	case err != nil:
		return st, err
	case found:
		st.LastTS = last
	default:
		st.LastTS = table.Current().Since - 1
	}
	for _, g := range table.Gens {
		l, err := layout.Load(r, g.Layout, prefix, g.ID)
		if err != nil {
			// Bytes layout cannot decode, or a block Pebble finds damaged: both are corruption.
			if errors.Is(err, layout.ErrCorrupt) || pebble.IsCorruptionError(err) {
				return st, fmt.Errorf("%w: shard %d: %w", ErrCorruption, id, err)
			}
			return st, fmt.Errorf("shard %d: %w", id, err)
		}
		st.Layouts[g.ID] = l
	}
	return st, nil
}

// LoadMessageCount reads a generation's message count (invariant 5); counted is false for a
// generation created before counts existed.
func LoadMessageCount(r pebble.Reader, prefix []byte, gen stream.GenerationID) (n uint64, counted bool, err error) {
	return loadU64(r, countKey(prefix, gen), fmt.Sprintf("generation %d: message count", gen))
}

// LoadAppliedIndex reads the last Raft log index a replica applied (0: none yet).
func LoadAppliedIndex(r pebble.Reader, prefix []byte) (uint64, error) {
	v, _, err := loadU64(r, metaKey(prefix, metaApplied), "applied index")
	return v, err
}

// IsAppliedIndexKey reports whether k is a replica's applied-index key (a replica has its
// Pebble instance to itself: no prefix); its value is the index, u64 big-endian.
func IsAppliedIndexKey(k []byte) bool { return bytes.Equal(k, metaApplied) }

// LoadLastRecordVersion reads the version of the shard's last record write (0: none).
func LoadLastRecordVersion(r pebble.Reader, prefix []byte) (uint64, error) {
	v, _, err := loadU64(r, metaKey(prefix, metaLastVersion), "last record version")
	return v, err
}

// RecordSpan returns the key range [start, end) of the shard's records whose keys begin with
// keyPrefix, and the length of the part of each key before the record's own key.
func RecordSpan(prefix, keyPrefix []byte) (start, end []byte, base int) {
	start = append(metaKey(prefix, metaRecord), keyPrefix...)
	return start, prefixEnd(start), len(prefix) + len(metaRecord)
}

// loadU64 reads one of the shard's u64 big-endian values; found is false when the key is
// absent. A value of another length is ErrCorruption, named by what.
func loadU64(r pebble.Reader, key []byte, what string) (v uint64, found bool, err error) {
	b, closer, err := r.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return 0, false, nil
	case err != nil:
		return 0, false, readError(what, err)
	}
	defer closer.Close()
	if len(b) != 8 {
		return 0, false, fmt.Errorf("%w: %s of %d bytes, want 8", ErrCorruption, what, len(b))
	}
	return binary.BigEndian.Uint64(b), true, nil
}

// readError names what a read of the shard's state failed on; a block Pebble found damaged
// is corruption (ErrCorruption), like bytes that do not decode.
func readError(what string, err error) error {
	if pebble.IsCorruptionError(err) {
		return fmt.Errorf("%w: %s: %w", ErrCorruption, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func metaKey(prefix, key []byte) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(key)+4), prefix...), key...)
}

func countKey(prefix []byte, gen stream.GenerationID) []byte {
	return binary.BigEndian.AppendUint32(metaKey(prefix, metaCount), uint32(gen))
}

// MetaKind names a meta key of a shard.
type MetaKind int

const (
	MetaTable       MetaKind = iota // the generation table
	MetaLastTS                      // the last assigned timestamp
	MetaCount                       // a generation's message count
	MetaRecord                      // a record (Store.Put and friends)
	MetaLastVersion                 // the last record version
	MetaApplied                     // a replica's applied index
	MetaProposer                    // a replica's de-duplication record of one proposer
)

// MetaKey is what MetaCheck.Check learned of one meta key.
type MetaKey struct {
	Kind  MetaKind
	Gen   stream.GenerationID // MetaCount: the generation counted
	Count uint64              // MetaCount: the stored count
}

// MetaCheck judges a shard's meta keys as read from disk, against what was loaded of it.
type MetaCheck struct {
	Stored  *Stored // nil when the shard's state did not load: keys that need it are not judged
	Replica bool    // the store is a replica's: applied-index and de-duplication keys belong
	// The applied index (replicas) and the last record version, when they loaded.
	Applied, LastVersion           uint64
	AppliedKnown, LastVersionKnown bool
}

// Check checks one meta key (rest: the key after the shard's prefix, starting with
// layout.KeyspaceMeta) and its value. Errors wrap ErrCorruption.
func (c MetaCheck) Check(rest, v []byte) (MetaKey, error) {
	corrupt := func(format string, args ...any) (MetaKey, error) {
		return MetaKey{}, fmt.Errorf("%w: %s", ErrCorruption, fmt.Sprintf(format, args...))
	}
	switch {
	case bytes.Equal(rest, metaTable):
		if c.Stored != nil && !c.Stored.Found {
			return corrupt("generation table not loaded")
		}
		return MetaKey{Kind: MetaTable}, nil
	case bytes.Equal(rest, metaLast):
		if len(v) != 8 {
			return corrupt("meta value of %d bytes, want 8", len(v))
		}
		return MetaKey{Kind: MetaLastTS}, nil
	case bytes.Equal(rest, metaApplied):
		if !c.Replica {
			return corrupt("replica-only meta key in an embedded data directory")
		}
		if len(v) != 8 {
			return corrupt("applied index of %d bytes, want 8", len(v))
		}
		return MetaKey{Kind: MetaApplied}, nil
	case bytes.HasPrefix(rest, metaProposer):
		if !c.Replica {
			return corrupt("replica-only meta key in an embedded data directory")
		}
		return c.checkProposer(rest, v)
	case bytes.Equal(rest, metaLastVersion):
		if _, err := DecodeLastVersion(v); err != nil {
			return MetaKey{}, err
		}
		return MetaKey{Kind: MetaLastVersion}, nil
	case bytes.HasPrefix(rest, metaRecord):
		if len(rest) == len(metaRecord) {
			return corrupt("record with an empty key")
		}
		ver, _, err := DecodeRecordValue(v)
		switch {
		case err != nil:
			return corrupt("%v", err)
		case c.LastVersionKnown && ver > c.LastVersion:
			return corrupt("record of version %d, after the shard's last record version %d", ver, c.LastVersion)
		}
		return MetaKey{Kind: MetaRecord}, nil
	case bytes.HasPrefix(rest, metaCount):
		if len(rest) != len(metaCount)+4 || len(v) != 8 {
			return corrupt("message count key of %d bytes, value of %d", len(rest), len(v))
		}
		gen := stream.GenerationID(binary.BigEndian.Uint32(rest[len(metaCount):]))
		if c.Stored != nil && c.Stored.Found {
			if _, ok := c.Stored.Table.Get(gen); !ok {
				return corrupt("message count of generation %d, which the table does not hold", gen)
			}
		}
		return MetaKey{Kind: MetaCount, Gen: gen, Count: binary.BigEndian.Uint64(v)}, nil
	default:
		return corrupt("unknown meta key")
	}
}

func (c MetaCheck) checkProposer(rest, v []byte) (MetaKey, error) {
	if want := len(metaProposer) + len(ProposerID{}); len(rest) != want {
		return MetaKey{}, fmt.Errorf("%w: de-duplication key of %d bytes, want %d", ErrCorruption, len(rest), want)
	}
	p := ProposerID(rest[len(metaProposer):])
	rec, err := DecodeProposerRecord(v)
	if err != nil {
		return MetaKey{}, fmt.Errorf("%w: de-duplication record of proposer %s: %w", ErrCorruption, p, err)
	}
	if !c.AppliedKnown {
		return MetaKey{Kind: MetaProposer}, nil // the applied index did not load: its own key is the problem
	}
	if rec.LastIndex > c.Applied {
		return MetaKey{}, fmt.Errorf("%w: de-duplication record of proposer %s: last index %d after the applied index %d",
			ErrCorruption, p, rec.LastIndex, c.Applied)
	}
	if c.Stored != nil && c.Stored.Found {
		for _, seq := range slices.Sorted(maps.Keys(rec.Applied)) {
			if ts := rec.Applied[seq]; ts > c.Stored.LastTS {
				return MetaKey{}, fmt.Errorf("%w: de-duplication record of proposer %s: sequence %d first timestamp %s after the shard's last %s",
					ErrCorruption, p, seq, generation.FormatTS(ts), generation.FormatTS(c.Stored.LastTS))
			}
		}
	}
	return MetaKey{Kind: MetaProposer}, nil
}
