package shard

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Replica is one replica of a replicated shard: the shard's state driven by a replicated log
// (a Raft state machine calls ApplyEntries with committed entries). It has no writer
// goroutine and never reads a clock while applying, so every replica that applies the same
// entries from the same state writes the same bytes.
//
// Reads (Streams, Read, Generations, Layout) work as on a Shard. A committed entry is durable
// on a quorum of replicas' logs, so ApplyEntries publishes it to readers as soon as its Pebble
// batch is committed; Pebble's own WAL is written without fsync (Sync does it, when the log
// asks, before it forgets entries).
//
// Besides the shard's records, a replica keeps in the same batch as the entries: the last
// applied log index, and the de-duplication table of proposers (see dedup).
type Replica struct {
	*core
	cfg     ReplicaConfig
	dedup   dedup
	applied uint64
	keyAppl []byte

	Metrics Metrics

	compact struct {
		sync.WaitGroup
		ctx    context.Context
		cancel context.CancelFunc
	}
}

// ReplicaConfig configures a Replica. DB, Layout and Logger must be set.
type ReplicaConfig struct {
	ID       stream.ShardID
	DB       *pebble.DB // owned by the caller; one per replica, so that a snapshot is a checkpoint
	Layout   layout.Params
	OnChange func() // after new streams or generations became visible; may be nil
	// OnDurable is called after each ApplyEntries made entries readable, in the applying
	// goroutine; it must return quickly. May be nil.
	OnDurable func(Durable)
	Logger    *slog.Logger
}

// Entry is one committed log entry for ApplyEntries. Its outcome is written into Result.
type Entry struct {
	Index uint64 // log index; increases from entry to entry

	// Proposer, Seq and Floor de-duplicate retried proposals: an entry whose (Proposer, Seq)
	// was applied before, or whose Seq is at or below the proposer's highest Floor, is not
	// applied again. Seq 0 means no de-duplication (maintenance commands that are idempotent
	// by their condition).
	Proposer ProposerID
	Seq      uint64
	Floor    uint64

	// IfCurrent, when not zero, makes the command apply only while the current generation is
	// IfCurrent: two sites that both decided to rotate add one generation, not two.
	IfCurrent stream.GenerationID

	// Cmd is the command; nil for an entry that could not be decoded, which every replica
	// rejects alike (with RejectReason as its error).
	Cmd          *Command
	RejectReason error

	Result EntryResult
}

// EntryResult is the outcome of one entry. Every replica computes the same one.
type EntryResult struct {
	// FirstTS is the timestamp of the command's first message; message i has FirstTS+i. For a
	// duplicate it is the original's, or 0 if that is no longer known.
	FirstTS   uint64
	Duplicate bool
	// Skipped: IfCurrent did not hold; nothing was applied.
	Skipped bool
	// Txns are the outcomes of the command's Txns, in order (nil for a duplicate: they are
	// not kept, so a retried proposal's Txn outcome is unknown).
	Txns []TxnResult
	// Err is a rejection that every replica makes alike (a drop of the current or an unknown
	// generation, an invalid topic); nothing of the command was applied.
	Err error
}

// OpenReplica loads the replica stored in cfg.DB, or creates an empty one, and returns it with
// the last log index it applied (0 for a new replica).
//
// A new replica's first generation starts at timestamp 1, not at the local clock: every
// replica must begin from identical state.
func OpenReplica(cfg ReplicaConfig) (*Replica, uint64, error) {
	c := newCore(cfg.ID, cfg.DB, nil, cfg.Layout)
	r := &Replica{core: c, cfg: cfg, dedup: dedup{}}
	r.keyAppl = append([]byte(nil), metaApplied...)
	r.compact.ctx, r.compact.cancel = context.WithCancel(context.Background())
	found, err := c.load()
	if err != nil {
		return nil, 0, err
	}
	if !found {
		if err := c.create(1, true); err != nil {
			return nil, 0, fmt.Errorf("shard %d: create replica: %w", cfg.ID, err)
		}
	}
	if err := r.loadReplicated(); err != nil {
		return nil, 0, err
	}
	return r, r.applied, nil
}

func (r *Replica) loadReplicated() error {
	applied, err := LoadAppliedIndex(r.db, nil)
	if err != nil {
		return fmt.Errorf("shard %d: %w", r.id, err)
	}
	r.applied = applied
	lo := append([]byte(nil), metaProposer...)
	hi := append([]byte(nil), metaProposer...)
	hi[len(hi)-1]++ // the end of the 'p' records: every proposer ID, 0xff… included
	it, err := r.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != len(metaProposer)+16 {
			return fmt.Errorf("%w: shard %d: proposer key %x", ErrCorruption, r.id, k)
		}
		st, err := decodeProposerState(it.Value())
		if err != nil {
			return fmt.Errorf("%w: shard %d: %w", ErrCorruption, r.id, err)
		}
		r.dedup[ProposerID(k[len(metaProposer):])] = st
	}
	return it.Error()
}

// ID returns the shard's ID.
func (r *Replica) ID() stream.ShardID { return r.id }

// AppliedIndex returns the last log index applied.
func (r *Replica) AppliedIndex() uint64 { return r.applied }

// ApplyEntries applies a run of committed entries as one Pebble batch, together with the
// applied index and the de-duplication records, and makes them visible to readers. Each
// entry's Result says what happened to it.
//
// An error means the batch could not be written (a storage failure); the replica's in-memory
// state is then undefined and it must be closed and reopened from disk.
func (r *Replica) ApplyEntries(entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	b := r.db.NewBatch()
	defer b.Close()
	var pubs []*publication
	var stored []*message.Message // applied messages, for OnDurable
	var records []RecordWrite
	var streams []StreamTouch
	var news bool
	var spans [][2][]byte
	touched := map[ProposerID]*proposerState{}
	msgs, bytes := 0, 0
	for i := range entries {
		e := &entries[i]
		e.Result = EntryResult{}
		if e.Index <= r.applied {
			return fmt.Errorf("shard %d: entry index %d not after applied %d", r.id, e.Index, r.applied)
		}
		r.applied = e.Index
		// Forget silent proposers at fixed indexes, not at batch ends: replicas cut runs of
		// entries differently, and must forget at the same entry.
		if e.Index%dedupExpiryCheck == 0 {
			for _, p := range r.dedup.expired(e.Index) {
				delete(touched, p)
				if err := b.Delete(proposerKey(p), nil); err != nil {
					return err
				}
			}
		}
		if e.Seq != 0 {
			if dup, ts := r.dedup.lookup(e.Proposer, e.Seq); dup {
				e.Result = EntryResult{Duplicate: true, FirstTS: ts}
				touched[e.Proposer] = r.dedup.record(e.Proposer, e.Seq, e.Floor, e.Index, 0, false)
				continue
			}
		}
		if e.Cmd != nil {
			if err := r.startAt(b, e.Cmd.Time); err != nil {
				return err
			}
		}
		applied := false
		switch {
		case e.Cmd == nil:
			e.Result.Err = fmt.Errorf("%w: %w", ErrInvalidCommand, e.RejectReason)
		case e.IfCurrent != 0 && r.st.table.Current().ID != e.IfCurrent:
			e.Result.Skipped = true
		default:
			if err := r.check(e.Cmd); err != nil {
				e.Result.Err = err
				break
			}
			a, err := r.apply(b, e.Cmd)
			if err != nil {
				return fmt.Errorf("shard %d: apply entry %d: %w", r.id, e.Index, err)
			}
			// Committed in memory now, published once the batch is: if the batch fails, the
			// caller must reopen the replica, so nothing needs undoing.
			pubs = append(pubs, a.Commit())
			news = news || a.NewStreams
			spans = append(spans, a.Spans...)
			if len(e.Cmd.Messages) > 0 {
				e.Result.FirstTS = a.Timestamps[0]
			}
			for _, t := range e.Cmd.Txns {
				e.Result.Txns = append(e.Result.Txns, t.Result)
			}
			msgs += len(a.Timestamps)
			if r.cfg.OnDurable != nil {
				stored = append(append(stored, e.Cmd.Messages...), a.TxnMessages...)
				streams = append(streams, a.Touched...)
				records = append(records, a.Records...)
			}
			for _, m := range e.Cmd.Messages {
				bytes += len(m.Payload)
			}
			for _, m := range a.TxnMessages {
				bytes += len(m.Payload)
			}
			if a.Added != nil {
				r.cfg.Logger.Info("generation added", "shard", r.id, "gen", a.Added.ID, "since", generation.FormatTS(a.Added.Since))
			}
			for _, id := range a.Dropped {
				r.cfg.Logger.Info("generation dropped", "shard", r.id, "gen", id)
			}
			applied = true
		}
		if e.Seq != 0 {
			touched[e.Proposer] = r.dedup.record(e.Proposer, e.Seq, e.Floor, e.Index, e.Result.FirstTS, applied)
		}
	}
	for p, st := range touched {
		if err := b.Set(proposerKey(p), st.appendBinary(nil), nil); err != nil {
			return err
		}
	}
	if err := b.Set(r.keyAppl, binary.BigEndian.AppendUint64(nil, r.applied), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("shard %d: commit: %w", r.id, err)
	}
	from, fromVersion := r.ReadLimit(), r.RecordVersion()
	for _, p := range pubs {
		r.publishDurable(p)
	}
	if r.cfg.OnDurable != nil && len(pubs) > 0 {
		r.cfg.OnDurable(Durable{Shard: r.id, From: from, Until: r.ReadLimit(), Messages: stored, Owned: true, Streams: streams, Records: records,
			FromVersion: fromVersion, UntilVersion: r.RecordVersion()})
	}
	if msgs > 0 {
		r.Metrics.Messages.Add(uint64(msgs))
		r.Metrics.Bytes.Add(uint64(bytes))
		r.Metrics.Batches.Add(1)
	}
	if news && r.cfg.OnChange != nil {
		r.cfg.OnChange()
	}
	if len(spans) > 0 {
		r.compactDropped(spans)
	}
	return nil
}

// startAt moves the start of a new replica's first generation from its placeholder (1) to the
// time of the first command it applies: every replica does so at the same entry, and the
// generation then ages (and rotates) from when the shard was first written, not from 1970.
func (r *Replica) startAt(b *pebble.Batch, t uint64) error {
	tab := r.st.table
	if r.lastTS != 0 || len(tab.Gens) != 1 || tab.Gens[0].Since != 1 || t <= 1 {
		return nil
	}
	st := &state{table: tab.Clone(), gens: r.st.gens, counts: r.st.counts}
	st.table.Gens[0].Since = t
	r.st, r.lastTS = st, t-1
	return b.Set(r.keyTable, st.table.AppendBinary(nil), nil)
}

// check rejects, before anything is written, a command that Apply would refuse part-way:
// drops of unknown or current generations, and invalid topics (the proposer validated them,
// but a replica does not trust its log with a panic).
func (r *Replica) check(cmd *Command) error {
	t := r.st.table
	seen := map[stream.GenerationID]bool{}
	for _, id := range cmd.Drop {
		g, ok := t.Get(id)
		switch {
		case !ok || seen[id]:
			return fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, r.id, id)
		case g.Current():
			// Even with AddGeneration in the same command (which would seal it first): a
			// proposer never sends that, and refusing it keeps the check simple.
			return fmt.Errorf("%w: shard %d generation %d", ErrCurrentGeneration, r.id, id)
		}
		seen[id] = true
	}
	for i, m := range cmd.Messages {
		if err := topic.ValidateName(m.Topic); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	for _, t := range cmd.Txns {
		for i, m := range t.Messages {
			if err := topic.ValidateName(m.Topic); err != nil {
				return fmt.Errorf("txn message %d: %w", i, err)
			}
		}
	}
	return nil
}

func proposerKey(p ProposerID) []byte {
	return append(append([]byte(nil), metaProposer...), p[:]...)
}

// Sync makes everything applied durable in this replica's storage (an fsync of Pebble's WAL).
// The log calls it before it forgets applied entries.
func (r *Replica) Sync() error { return r.db.LogData(nil, pebble.Sync) }

// Rotation returns the current generation and whether it is due for rotation at now (µs) with
// span. The site that leads the shard turns the answer into an AddGeneration entry with
// IfCurrent set.
func (r *Replica) Rotation(now uint64, span time.Duration) (stream.GenerationID, bool) {
	t := r.view.Load().table
	if t.Current().Since == 1 {
		return t.Current().ID, false // a new replica's placeholder start (see startAt)
	}
	return t.Current().ID, t.RotationDue(now, span)
}

// Expired returns the sealed generations whose retention ended at now (µs).
func (r *Replica) Expired(now uint64, retention time.Duration) []stream.GenerationID {
	return r.view.Load().table.Expired(now, retention)
}

// Close stops background compactions. The caller closes the Pebble DB afterwards.
func (r *Replica) Close() {
	r.compact.cancel()
	r.compact.Wait()
}

func (r *Replica) compactDropped(spans [][2][]byte) {
	r.compact.Add(1)
	go func() {
		defer r.compact.Done()
		for _, sp := range spans {
			if err := r.db.Compact(r.compact.ctx, sp[0], sp[1], false); err != nil && r.compact.ctx.Err() == nil {
				r.cfg.Logger.Warn("compaction of a dropped generation failed", "shard", r.id, "err", err)
			}
		}
	}()
}
