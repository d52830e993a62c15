package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
)

// Records are small keyed values kept by a shard beside its messages, for state that belongs
// with them: package session keeps each durable session in the shard of its client ID, so
// that a session's state and the messages its client publishes are written by one command
// (one Pebble batch, one Raft entry), replicated and snapshotted with the shard.
//
// A record has a version: the shard numbers every record write (put or delete) in apply
// order, so a version never repeats, even for a key deleted and written again. A Txn applies
// its writes (and stores its messages) only if each of its conditions names the current
// version of its key (0: absent), which gives compare-and-set, "create if absent" and owner
// fences, decided by the deterministic apply: every replica decides alike.
//
// # Format
//
//	record:          | P | 'm' | 'r' | key |  →  | version(u64) | value |
//	last version:    | P | 'm' | 'v' |       →  | version(u64) |
//
// # Invariants
//
//  1. versions holds the version of every record on disk (the applier's view), and
//     lastVersion the highest version ever assigned; both change only by apply and go back
//     on Abort.
//  2. A Txn whose conditions fail writes nothing and stores none of its messages; the
//     timestamps and versions it would have taken are not consumed.
//  3. A record read (Record, ScanRecords) waits until every write applied before it began
//     is durable, so what it returns survives a crash — except a write applied while the
//     read runs, which it may see before that write is durable (embedded mode only: a
//     replica applies only committed entries). Its writer is then still waiting for it.
var (
	metaRecord      = []byte{layout.KeyspaceMeta, 'r'}
	metaLastVersion = []byte{layout.KeyspaceMeta, 'v'}
)

// MaxRecordKey and MaxRecordValue bound a record.
const (
	MaxRecordKey   = 1024
	MaxRecordValue = 4 << 20
)

// ErrConditionFailed is the outcome of a Txn whose condition did not hold: nothing of it was
// applied. TxnResult.Failed names the condition.
var ErrConditionFailed = errors.New("strata: condition failed")

// Cond holds when the record Key has version Version (0: the record does not exist).
type Cond struct {
	Key     []byte
	Version uint64
}

// RecordWrite puts Value under Key, or deletes Key when Delete is set.
type RecordWrite struct {
	Key    []byte
	Value  []byte
	Delete bool
	// Version is the version the write got; set by apply (0 for a delete).
	Version uint64
}

// Txn is a conditional unit of a command: if every condition holds, its writes are applied
// and its messages stored, all in the command's batch; otherwise nothing of it is.
type Txn struct {
	Conds    []Cond
	Writes   []RecordWrite
	Messages []*message.Message

	// Result is set by apply.
	Result TxnResult
}

// TxnResult is the outcome of a Txn, alike on every replica.
type TxnResult struct {
	// Failed is the index+1 of the first condition that did not hold; 0 if the Txn applied.
	Failed int
	// FirstVersion is the version of the first write; write i got FirstVersion+i (deletes
	// take a version too, though the record is gone).
	FirstVersion uint64
	// FirstTS is the timestamp of the first message; message i got FirstTS+i.
	FirstTS uint64
}

// Err returns ErrConditionFailed (wrapped, naming the condition) if the Txn did not apply.
func (t *Txn) Err() error {
	if t.Result.Failed == 0 {
		return nil
	}
	i := t.Result.Failed - 1
	if i < len(t.Conds) {
		return fmt.Errorf("%w: record %q is not at version %d", ErrConditionFailed, t.Conds[i].Key, t.Conds[i].Version)
	}
	return ErrConditionFailed
}

// SetResults fills the versions of t's writes and the timestamps of its messages from its
// Result (a proposer does this with a result decoded from the log).
func (t *Txn) SetResults(shard uint16) {
	if t.Result.Failed != 0 {
		return
	}
	for i := range t.Writes {
		if t.Writes[i].Delete {
			t.Writes[i].Version = 0
		} else {
			t.Writes[i].Version = t.Result.FirstVersion + uint64(i)
		}
	}
	for i, m := range t.Messages {
		m.Timestamp, m.Shard = t.Result.FirstTS+uint64(i), shard
	}
}

// validate checks a Txn's bounds, so that a replica never applies what a proposer should have
// refused.
func (t *Txn) validate() error {
	for _, c := range t.Conds {
		if len(c.Key) == 0 || len(c.Key) > MaxRecordKey {
			return fmt.Errorf("%w: condition key of %d bytes", ErrInvalidCommand, len(c.Key))
		}
	}
	for _, w := range t.Writes {
		if len(w.Key) == 0 || len(w.Key) > MaxRecordKey || len(w.Value) > MaxRecordValue {
			return fmt.Errorf("%w: record of %d+%d bytes", ErrInvalidCommand, len(w.Key), len(w.Value))
		}
		if w.Delete && len(w.Value) > 0 {
			return fmt.Errorf("%w: a delete with a value", ErrInvalidCommand)
		}
	}
	return nil
}

// records is a core's record state (invariant 1).
type records struct {
	versions    map[string]uint64
	lastVersion uint64

	// Invariant 3: applied is lastVersion as the applier left it; durable is the highest
	// version whose batch is durable. Readers wait on cond for durable to reach what applied
	// was when they began.
	mu      sync.Mutex
	applied uint64
	durable uint64
	changed chan struct{} // closed and replaced when durable moves
}

func (c *core) recordKey(key []byte) []byte {
	k := make([]byte, 0, len(c.prefix)+len(metaRecord)+len(key))
	return append(append(append(k, c.prefix...), metaRecord...), key...)
}

// loadRecords reads every record's version (invariant 1).
func (c *core) loadRecords() error {
	c.rec.versions = map[string]uint64{}
	c.rec.changed = make(chan struct{})
	var err error
	if c.rec.lastVersion, err = LoadLastRecordVersion(c.db, c.prefix); err != nil {
		return fmt.Errorf("shard %d: %w", c.id, err)
	}
	lo := c.recordKey(nil)
	it, err := c.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		version, _, err := DecodeRecordValue(it.Value())
		if err == nil && version > c.rec.lastVersion {
			err = fmt.Errorf("%w: version %d after the last record version %d", ErrCorruption, version, c.rec.lastVersion)
		}
		if err != nil {
			return fmt.Errorf("shard %d: record %q: %w", c.id, it.Key()[len(lo):], err)
		}
		c.rec.versions[string(it.Key()[len(lo):])] = version
	}
	if err := it.Error(); err != nil {
		return err
	}
	c.rec.applied, c.rec.durable = c.rec.lastVersion, c.rec.lastVersion
	return nil
}

// recordUndo restores one record's version on Abort.
type recordUndo struct {
	key     string
	version uint64 // 0: absent
}

// applyTxn applies t into b if its conditions hold (invariant 2), with its messages stored by
// store. It records what Abort must undo in a.
func (c *core) applyTxn(b *pebble.Batch, a *Applied, t *Txn, store func(*message.Message) (uint64, error)) error {
	t.Result = TxnResult{}
	for i, cond := range t.Conds {
		if c.rec.versions[string(cond.Key)] != cond.Version {
			t.Result.Failed = i + 1
			return nil
		}
	}
	for i := range t.Writes {
		w := &t.Writes[i]
		c.rec.lastVersion++
		if i == 0 {
			t.Result.FirstVersion = c.rec.lastVersion
		}
		k := string(w.Key)
		a.recUndo = append(a.recUndo, recordUndo{key: k, version: c.rec.versions[k]})
		if w.Delete {
			w.Version = 0
			delete(c.rec.versions, k)
			if err := b.Delete(c.recordKey(w.Key), nil); err != nil {
				return err
			}
		} else {
			w.Version = c.rec.lastVersion
			c.rec.versions[k] = w.Version
			v := make([]byte, 8, 8+len(w.Value))
			binary.BigEndian.PutUint64(v, w.Version)
			if err := b.Set(c.recordKey(w.Key), append(v, w.Value...), nil); err != nil {
				return err
			}
		}
		a.Records = append(a.Records, *w)
	}
	for i, m := range t.Messages {
		ts, err := store(m)
		if err != nil {
			return err
		}
		if i == 0 {
			t.Result.FirstTS = ts
		}
	}
	return nil
}

// RecordVersion returns the last record version made durable (0: none yet).
func (c *core) RecordVersion() uint64 {
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	return c.rec.durable
}

// publishRecords marks every version up to v durable (invariant 3).
func (c *core) publishRecords(v uint64) {
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	if v > c.rec.durable {
		c.rec.durable = v
		close(c.rec.changed)
		c.rec.changed = make(chan struct{})
	}
}

// awaitRecords waits until every record write applied before the call is durable.
func (c *core) awaitRecords(ctx context.Context) error {
	c.rec.mu.Lock()
	target := c.rec.applied
	c.rec.mu.Unlock()
	for {
		c.rec.mu.Lock()
		ok, ch := c.rec.durable >= target, c.rec.changed
		c.rec.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Record returns the durable value and version of the record key; version 0 if it does not
// exist. The value is the caller's.
func (c *core) Record(ctx context.Context, key []byte) (value []byte, version uint64, err error) {
	if err := c.awaitRecords(ctx); err != nil {
		return nil, 0, err
	}
	v, closer, err := c.db.Get(c.recordKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer closer.Close()
	version, value, err = DecodeRecordValue(v)
	if err != nil {
		return nil, 0, fmt.Errorf("shard %d: record %q: %w", c.id, key, err)
	}
	return bytes.Clone(value), version, nil
}

// ScanRecords calls f, in key order, for every durable record whose key starts with prefix,
// until f returns false. key and value are valid during the call only.
func (c *core) ScanRecords(ctx context.Context, prefix []byte, f func(key, value []byte, version uint64) bool) error {
	if err := c.awaitRecords(ctx); err != nil {
		return err
	}
	lo := c.recordKey(prefix)
	it, err := c.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return err
	}
	defer it.Close()
	base := len(c.recordKey(nil))
	for it.First(); it.Valid(); it.Next() {
		version, value, err := DecodeRecordValue(it.Value())
		if err != nil {
			return fmt.Errorf("shard %d: record %q: %w", c.id, it.Key()[base:], err)
		}
		if !f(it.Key()[base:], value, version) {
			break
		}
	}
	return it.Error()
}

// DecodeRecordValue splits a stored record value into its version and value (which shares
// v's bytes). An error wrapping ErrCorruption if v is shorter than a version, or the version
// is 0.
func DecodeRecordValue(v []byte) (version uint64, value []byte, err error) {
	if len(v) < 8 {
		return 0, nil, fmt.Errorf("%w: record value of %d bytes, want at least 8 (its version)", ErrCorruption, len(v))
	}
	if version = binary.BigEndian.Uint64(v); version == 0 {
		return 0, nil, fmt.Errorf("%w: record of version 0", ErrCorruption)
	}
	return version, v[8:], nil
}

// DecodeLastVersion decodes the value of the last record version key (LoadLastRecordVersion).
func DecodeLastVersion(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: last record version of %d bytes, want 8", ErrCorruption, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// prefixEnd returns the smallest key after every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
