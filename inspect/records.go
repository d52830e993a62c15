package inspect

import (
	"fmt"

	"github.com/strata-mq/strata/ds"

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
func (in *Inspector) ScanRecords(sh ds.ShardID, prefix []byte, f func(key, value []byte, version uint64) bool) (err error) {
	if int(sh) >= len(in.shards) {
		return fmt.Errorf("%w: shard %d of %d", ds.ErrShardNotFound, sh, len(in.shards))
	}
	s := in.shards[sh]
	if s.db == nil {
		return s.err
	}
	defer recoverRead(fmt.Sprintf("shard %d records", sh), &err)
	lo, hi, base := shard.RecordSpan(s.prefix, prefix)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
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
			return fmt.Errorf("shard %d: record %s: %w", sh, EscapeBytes(k[base:]), err)
		}
		version, value, err := shard.DecodeRecordValue(v)
		if err != nil {
			return fmt.Errorf("shard %d: record %s (%s): %w", sh, EscapeBytes(k[base:]), s.path, err)
		}
		if !f(k[base:], value, version) {
			return nil
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("shard %d records: %w", sh, err)
	}
	return nil
}
