package ds

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/shard"
)

// ScanRecords calls f, in key order, for every record of shard sh whose key starts with
// prefix, until f returns false, as DB.ScanRecords does for a running DB (package session's
// InspectSessions decodes the durable sessions from it; ds-info sessions). key and value are
// valid during the call only; version is the record's version.
//
// The shard's records are read even when its generation table or layouts did not load (they
// do not depend on them). It fails for a shard out of range or without a store
// (ErrShardNotFound), and with an error wrapping ErrCorruption at a record whose value is too
// short to hold its version, after calling f for the records before it.
func (in *Inspector) ScanRecords(sh ShardID, prefix []byte, f func(key, value []byte, version uint64) bool) (err error) {
	if int(sh) >= len(in.shards) {
		return fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(in.shards))
	}
	s := in.shards[sh]
	if s.db == nil {
		return s.err
	}
	defer recoverRead(fmt.Sprintf("shard %d records", sh), &err)
	base := append(slices.Clone(s.prefix), inspectMetaRecord...)
	lo := append(slices.Clone(base), prefix...)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: inspectPrefixEnd(lo)})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := it.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("shard %d records: %w", sh, cerr)
		}
	}()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("shard %d: record %s: %w", sh, EscapeBytes(k[len(base):]), err)
		}
		version, value, err := shard.DecodeRecordValue(v)
		if err != nil {
			return fmt.Errorf("shard %d: record %s (%s): %w", sh, EscapeBytes(k[len(base):]), s.path, err)
		}
		if !f(k[len(base):], value, version) {
			return nil
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("shard %d records: %w", sh, err)
	}
	return nil
}

// inspectPrefixEnd returns the smallest key after every key with prefix p (nil: none).
func inspectPrefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
