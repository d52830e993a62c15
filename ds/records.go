package ds

import (
	"context"
	"fmt"
	"sync"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/shard"
)

// Records are small keyed values a shard keeps beside its messages, written by conditional
// transactions (Update) that may also store messages, all in one atomic command of the shard
// (one batch, one Raft entry). Package session keeps its durable sessions in them; a broker
// normally uses that package, not records directly. The format and invariants are drawn in
// package shard (record.go).
type (
	// Cond holds when the record Key has version Version (0: the record does not exist).
	Cond = shard.Cond
	// RecordWrite puts Value under Key, or deletes Key (Delete); Update sets Version.
	RecordWrite = shard.RecordWrite
)

// ErrConditionFailed is returned by Update when a condition of the Txn did not hold: nothing
// of it was applied.
var ErrConditionFailed = shard.ErrConditionFailed

// Txn is what Update applies atomically to one shard: if every condition holds, the record
// writes and the messages (stored in order, with timestamps after every earlier one of the
// shard), otherwise nothing.
type Txn struct {
	Conds    []Cond
	Writes   []RecordWrite
	Messages []Message
}

// TxnResult is what an applied Txn did.
type TxnResult struct {
	// Versions are the versions the writes got, in order (0 for a delete).
	Versions []uint64
	// Refs are the stored messages' references, in order.
	Refs []Ref
}

// Update applies t to shard sh and returns once it is durable (as Store). Messages are
// validated as by Store, whatever their ClientID (they go to sh). A Txn whose condition did
// not hold returns an error wrapping ErrConditionFailed. On a replicated site, a proposal
// retried after it was committed makes the outcome unknown (ErrOutcomeUnknown): read the
// records to find out.
func (db *DB) Update(ctx context.Context, sh ShardID, t *Txn) (TxnResult, error) {
	res, errs, err := db.UpdateAll(ctx, sh, []*Txn{t})
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		return TxnResult{}, err
	}
	return res[0], nil
}

// UpdateAll applies txns to shard sh in one command (one batch; one Raft entry): each Txn
// applies, in order, or not on its own, as if by Update. errs[i] is Txn i's outcome (nil or
// wrapping ErrConditionFailed); err is an error of the whole call (nothing applied, or for
// ErrFailed and ErrOutcomeUnknown: unknown). Package session writes its checkpoints with it:
// many sessions' records in one command.
func (db *DB) UpdateAll(ctx context.Context, sh ShardID, txns []*Txn) (res []TxnResult, errs []error, err error) {
	exit, err := db.enter()
	if err != nil {
		return nil, nil, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return nil, nil, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	sts := make([]*shard.Txn, len(txns))
	bytes := 0
	for k, t := range txns {
		st := &shard.Txn{Conds: t.Conds, Writes: make([]RecordWrite, len(t.Writes))}
		copy(st.Writes, t.Writes)
		if len(t.Messages) > 0 {
			copies := make([]message.Message, len(t.Messages))
			copy(copies, t.Messages)
			for i := range copies {
				size, err := db.validate(&copies[i])
				if err != nil {
					return nil, nil, fmt.Errorf("txn %d: message %d of %d: %w", k, i, len(copies), err)
				}
				bytes += size
				st.Messages = append(st.Messages, &copies[i])
			}
		}
		for _, w := range t.Writes {
			bytes += len(w.Key) + len(w.Value)
		}
		sts[k] = st
	}
	w, err := db.shards[sh].SubmitTxns(ctx, sts, bytes)
	if err == nil {
		err = w.Wait()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("shard %d: %w", sh, err)
	}
	res, errs = make([]TxnResult, len(sts)), make([]error, len(sts))
	for k, st := range sts {
		if err := st.Err(); err != nil {
			errs[k] = fmt.Errorf("shard %d: %w", sh, err)
			continue
		}
		r := TxnResult{Versions: make([]uint64, len(st.Writes)), Refs: make([]Ref, len(st.Messages))}
		for i, w := range st.Writes {
			r.Versions[i] = w.Version
		}
		for i, m := range st.Messages {
			r.Refs[i] = Ref{Shard: sh, Timestamp: m.Timestamp}
		}
		res[k] = r
	}
	return res, errs, nil
}

// Record returns the durable value and version of the record key of shard sh (version 0 and
// no error if it does not exist). On a replicated site it is this site's replica's view,
// which may lag the group's leader.
func (db *DB) Record(ctx context.Context, sh ShardID, key []byte) ([]byte, uint64, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, 0, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return nil, 0, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	v, ver, err := db.shards[sh].Record(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("shard %d: %w", sh, err)
	}
	return v, ver, nil
}

// ScanRecords calls f, in key order, for every durable record of shard sh whose key starts
// with prefix, until f returns false. key and value are valid during the call only.
func (db *DB) ScanRecords(ctx context.Context, sh ShardID, prefix []byte, f func(key, value []byte, version uint64) bool) error {
	exit, err := db.enter()
	if err != nil {
		return err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	if err := db.shards[sh].ScanRecords(ctx, prefix, f); err != nil {
		return fmt.Errorf("shard %d: %w", sh, err)
	}
	return nil
}

// RecordWatch receives the record writes of every shard as they become durable (on a
// replicated site: as its replica applies them, whichever site proposed them), in order per
// shard. Package session keeps its view of every session (the durable filters, owner fences)
// current with it.
type RecordWatch struct {
	db *DB
	f  func(ShardID, []RecordWrite, bool)
}

// WatchRecords calls f with each durable step's record writes, per shard in order, from the
// committing goroutine: f must return quickly and must not call into the DB's write path.
// reset is set (and writes empty) when the shard's state was replaced without its writes
// being listed (a replica recovered from a snapshot): read the shard's records again. Stop
// it with Close.
func (db *DB) WatchRecords(f func(sh ShardID, writes []RecordWrite, reset bool)) (*RecordWatch, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	w := &RecordWatch{db: db, f: f}
	db.recWatch.Lock()
	defer db.recWatch.Unlock()
	db.recWatch.all = append(append([]*RecordWatch(nil), db.recWatch.all...), w)
	return w, nil
}

// Close stops the watch; f is not called after Close returned.
func (w *RecordWatch) Close() {
	db := w.db
	db.recWatch.Lock()
	out := make([]*RecordWatch, 0, len(db.recWatch.all))
	for _, x := range db.recWatch.all {
		if x != w {
			out = append(out, x)
		}
	}
	db.recWatch.all = out
	db.recWatch.Unlock()
	// A call in progress holds the step lock for reading (onDurable): wait for it.
	db.recWatch.step.Lock()
	//lint:ignore SA2001 the empty critical section waits for the calls in progress
	db.recWatch.step.Unlock()

}

// recordWatches is the DB's list of record watches, copied on write.
type recordWatches struct {
	sync.Mutex
	all  []*RecordWatch
	step sync.RWMutex // held for reading while f runs (shards call concurrently)
}

func (db *DB) notifyRecords(d shard.Durable) {
	if len(d.Records) == 0 && !d.Reset {
		return
	}
	// The step lock first: a Close that removed a watch before this loads the list waits for
	// nothing, and one after waits for this call.
	db.recWatch.step.RLock()
	defer db.recWatch.step.RUnlock()
	db.recWatch.Lock()
	all := db.recWatch.all
	db.recWatch.Unlock()
	for _, w := range all {
		w.f(d.Shard, d.Records, d.Reset)
	}
}
