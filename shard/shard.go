// Package shard is one shard of a Strata DB: its keyspace in Pebble, its generation table, the
// deterministic Apply of commands, the writer goroutine that group-commits Store calls, and reads.
//
// # State and who owns it
//
// The writer goroutine owns the mutable state (generation table, layouts, last timestamp) and
// is the only caller of Apply. Readers never touch it: after each durable commit the writer
// publishes an immutable view (table, layouts, read limit) that readers load atomically. A
// reader therefore never sees a message before it is durable, nor a generation sealed before
// every message written to it is durable.
//
// # Invariants
//
//  1. Timestamps strictly increase within a shard: ts = max(last+1, cmd.Time), and the current
//     generation's Since <= ts.
//  2. One command is one Pebble batch: messages, learned trie records, the generation table and
//     the last timestamp commit together or not at all.
//  3. A failed batch is aborted: the in-memory state returns to what the disk holds.
//  4. view.readLimit only grows, and every message with ts < readLimit is durable.
//  5. A generation's message count (metaCount) is written, 0, in the batch that creates the
//     generation and again in every batch that adds messages to it, so it always equals the
//     number of messages the generation holds on disk. A generation without the key was
//     created before counts existed: its count is unknown (nil in state.counts) for good.
package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Meta keys inside the shard's prefix.
var (
	metaTable = []byte{layout.KeyspaceMeta, 'g'} // generation table
	metaLast  = []byte{layout.KeyspaceMeta, 'l'} // last assigned timestamp, u64 big-endian
	metaCount = []byte{layout.KeyspaceMeta, 'c'} // + generation u32: its messages, u64 big-endian
	// Replicated shards only (see Replica):
	metaApplied  = []byte{layout.KeyspaceMeta, 'a'} // last applied Raft log index, u64 big-endian
	metaProposer = []byte{layout.KeyspaceMeta, 'p'} // + ProposerID: de-duplication record
)

// state is the part of a shard that changes only by Apply and that readers see via a view.
type state struct {
	table generation.Table
	gens  map[stream.GenerationID]layout.Generation
	// counts are the generations' message counts, nil where unknown (invariant 5). The map is
	// immutable like the rest of the state; the applier adds to the counters (readers may see
	// a count that includes messages not yet durable: it is a statistic, not a read limit).
	counts map[stream.GenerationID]*atomic.Uint64
}

// countKey returns the key of a generation's message count.
func (c *core) countKey(gen stream.GenerationID) []byte { return countKey(c.prefix, gen) }

// view is what readers see: an immutable state and the exclusive upper bound of durable
// timestamps.
type view struct {
	*state
	readLimit uint64
}

// core is the deterministic heart of a shard: its state and Apply, without goroutines.
type core struct {
	id     stream.ShardID
	db     *pebble.DB
	prefix []byte
	params layout.Params // for new generations

	st     *state // owned by the applier
	lastTS uint64

	view atomic.Pointer[view]
	// dropped holds the IDs of generations whose drop was applied, set before the drop's batch
	// commits. Pebble shows the range deletion to readers as soon as the batch commits, while
	// the view without the generation is published only once the batch is durable; readers
	// check dropped too, so that a generation emptied under them is reported as dropped, not as
	// read to its end. IDs are never reused, so entries never need to be removed.
	// The value is the generation's message count at the drop (a *atomic.Uint64, nil if
	// unknown), for subscriptions that learn of the loss later (DroppedMessages).
	dropped sync.Map // stream.GenerationID → *atomic.Uint64

	rec records // the shard's records (record.go)

	keyTable, keyLast, keyLastVersion []byte
	sorted                            sortedWriter   // scratch of apply
	touchedAt                         map[uint64]int // scratch of apply: stream key → index in Applied.Touched
	levels                            []string       // scratch of apply: the levels of a message's topic
}

func newCore(id stream.ShardID, db *pebble.DB, prefix []byte, params layout.Params) *core {
	c := &core{id: id, db: db, prefix: prefix, params: params}
	c.keyTable = append(append([]byte(nil), prefix...), metaTable...)
	c.keyLast = append(append([]byte(nil), prefix...), metaLast...)
	c.keyLastVersion = append(append([]byte(nil), prefix...), metaLastVersion...)
	return c
}

// load reads the shard's state from Pebble (LoadStored). found is false for a shard never
// written.
func (c *core) load() (found bool, err error) {
	stored, err := LoadStored(c.db, c.id, c.prefix)
	if err != nil || !stored.Found {
		return stored.Found, err
	}
	st := &state{table: stored.Table, gens: stored.Layouts, counts: map[stream.GenerationID]*atomic.Uint64{}}
	for _, g := range stored.Table.Gens {
		n, counted, err := LoadMessageCount(c.db, c.prefix, g.ID)
		if err != nil {
			return true, fmt.Errorf("shard %d: %w", c.id, err)
		}
		st.counts[g.ID] = nil // unknown: created before counts existed (invariant 5)
		if counted {
			st.counts[g.ID] = new(atomic.Uint64)
			st.counts[g.ID].Store(n)
		}
	}
	c.lastTS = stored.LastTS
	if err := c.loadRecords(); err != nil {
		return true, err
	}
	c.st = st
	c.publish(c.st, c.lastTS+1)
	return true, nil
}

// create initialises a new shard with its first generation starting at since.
func (c *core) create(since uint64, sync bool) error {
	b := c.db.NewBatch()
	defer b.Close()
	table := generation.New(since, c.params)
	g, err := layout.New(c.params, c.prefix, 1, nil, b)
	if err != nil {
		return err
	}
	if err := b.Set(c.keyTable, table.AppendBinary(nil), nil); err != nil {
		return err
	}
	if err := b.Set(c.countKey(1), binary.BigEndian.AppendUint64(nil, 0), nil); err != nil {
		return err
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	if err := b.Commit(opts); err != nil {
		return err
	}
	g.Commit()
	c.st = &state{table: table, gens: map[stream.GenerationID]layout.Generation{1: g},
		counts: map[stream.GenerationID]*atomic.Uint64{1: new(atomic.Uint64)}}
	c.lastTS = since - 1
	c.rec.versions, c.rec.changed = map[string]uint64{}, make(chan struct{})
	c.publish(c.st, c.lastTS+1)
	return nil
}

func (c *core) publish(st *state, readLimit uint64) {
	if old := c.view.Load(); old != nil && old.readLimit > readLimit {
		readLimit = old.readLimit
	}
	c.view.Store(&view{state: st, readLimit: readLimit})
}

// Applied is the outcome of Apply, to be committed or aborted once the batch's fate is known.
type Applied struct {
	c          *core
	prevState  *state
	prevLast   uint64
	count      *atomic.Uint64 // the generation the command added messages to
	prevCount  uint64
	touched    []layout.Generation
	Timestamps []uint64 // per message stored: the command's Messages, then those of its applied Txns
	Added      *generation.Info
	Dropped    []stream.GenerationID
	// Spans are the key ranges the command range-deleted (dropped generations).
	Spans [][2][]byte
	// NewStreams is set by Commit when the command created streams or generations.
	NewStreams bool
	// Touched are the streams the command's messages went to.
	Touched []StreamTouch
	// Records are the record writes of the command's Txns that applied, in order, and
	// TxnMessages the messages of those Txns (stored after the command's Messages).
	Records     []RecordWrite
	TxnMessages []*message.Message

	prevVersion uint64
	recUndo     []recordUndo
}

// apply writes cmd into b and changes the in-memory state accordingly. On error nothing of the
// state changed and b must be discarded.
//
// REQUIRES: the caller is the shard's only applier, and every message topic is valid.
func (c *core) apply(b *pebble.Batch, cmd *Command) (*Applied, error) {
	a := &Applied{c: c, prevState: c.st, prevLast: c.lastTS, prevVersion: c.rec.lastVersion}
	st := c.st
	c.sorted.reset()
	if cmd.AddGeneration || len(cmd.Drop) > 0 {
		st = &state{table: c.st.table.Clone(), gens: maps.Clone(c.st.gens), counts: maps.Clone(c.st.counts)}
	}
	fail := func(err error) (*Applied, error) {
		a.Abort()
		return nil, err
	}
	if cmd.AddGeneration {
		cur := st.table.Current()
		since := max(cmd.Time, c.lastTS+1, cur.Since+1)
		g, err := layout.New(c.params, c.prefix, st.table.NextID, st.gens[cur.ID], b)
		if err != nil {
			return fail(err)
		}
		info := st.table.Add(since, c.params)
		st.gens[info.ID] = g
		st.counts[info.ID] = new(atomic.Uint64)
		if err := b.Set(c.countKey(info.ID), binary.BigEndian.AppendUint64(nil, 0), nil); err != nil {
			return fail(err)
		}
		a.touched = append(a.touched, g)
		a.Added = &info
		c.lastTS = since - 1
	}
	for _, id := range cmd.Drop {
		if err := st.table.Drop(id); err != nil {
			switch {
			case errors.Is(err, generation.ErrCurrent):
				err = fmt.Errorf("%w: shard %d generation %d", ErrCurrentGeneration, c.id, id)
			case errors.Is(err, generation.ErrNotFound):
				err = fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, c.id, id)
			}
			return fail(err)
		}
		c.dropped.Store(id, st.counts[id])
		delete(st.gens, id)
		delete(st.counts, id)
		if err := b.Delete(c.countKey(id), nil); err != nil {
			return fail(err)
		}
		a.Dropped = append(a.Dropped, id)
		for _, sp := range layout.GenerationSpans(c.prefix, id) {
			if err := b.DeleteRange(sp[0], sp[1], nil); err != nil {
				return fail(err)
			}
			a.Spans = append(a.Spans, sp)
		}
	}
	c.st = st
	var (
		cur   generation.Info
		g     layout.Generation
		count int
	)
	store := func(m *message.Message) (uint64, error) {
		if count == 0 {
			cur = st.table.Current()
			g = st.gens[cur.ID]
			a.touched = append(a.touched, g)
			if c.touchedAt == nil {
				c.touchedAt = map[uint64]int{}
			}
			clear(c.touchedAt)
		}
		count++
		ts := max(c.lastTS+1, cmd.Time)
		m.Timestamp, m.Shard = ts, uint16(c.id)
		c.levels = topic.SplitInto(c.levels[:0], m.Topic) // Add keeps no reference to it
		key, err := g.Add(&c.sorted, m, c.levels)
		if err != nil {
			return 0, err
		}
		if n := len(a.Touched); n > 0 && a.Touched[n-1].Key == key {
			a.Touched[n-1].Last = ts // the same stream as the message before: no lookup
		} else if j, ok := c.touchedAt[key]; ok {
			a.Touched[j].Last = ts
		} else {
			c.touchedAt[key] = len(a.Touched)
			a.Touched = append(a.Touched, StreamTouch{Generation: cur.ID, Key: key, Last: ts})
		}
		c.lastTS = ts
		a.Timestamps = append(a.Timestamps, ts)
		return ts, nil
	}
	if len(cmd.Messages) > 0 {
		a.Timestamps = make([]uint64, 0, len(cmd.Messages))
	}
	for _, m := range cmd.Messages {
		if _, err := store(m); err != nil {
			return fail(err)
		}
	}
	for _, t := range cmd.Txns {
		if err := c.applyTxn(b, a, t, store); err != nil {
			return fail(err)
		}
		if t.Result.Failed == 0 {
			a.TxnMessages = append(a.TxnMessages, t.Messages...)
		}
	}
	if count > 0 {
		if n := st.counts[cur.ID]; n != nil {
			a.count = n
			a.prevCount = n.Add(uint64(count)) - uint64(count)
			if err := b.Set(c.countKey(cur.ID), binary.BigEndian.AppendUint64(nil, n.Load()), nil); err != nil {
				return fail(err)
			}
		}
	}
	if c.rec.lastVersion != a.prevVersion {
		if err := b.Set(c.keyLastVersion, binary.BigEndian.AppendUint64(nil, c.rec.lastVersion), nil); err != nil {
			return fail(err)
		}
	}
	if err := c.sorted.flush(b); err != nil {
		return fail(err)
	}
	if st != a.prevState {
		if err := b.Set(c.keyTable, st.table.AppendBinary(nil), nil); err != nil {
			return fail(err)
		}
	}
	if c.lastTS != a.prevLast {
		if err := b.Set(c.keyLast, binary.BigEndian.AppendUint64(nil, c.lastTS), nil); err != nil {
			return fail(err)
		}
	}
	return a, nil
}

// Commit makes the applied changes permanent in memory. Call it once the batch is committed
// to Pebble (not necessarily synced). It returns what to publish once the batch is durable.
func (a *Applied) Commit() *publication {
	a.NewStreams = a.Added != nil || len(a.Dropped) > 0
	p := &publication{view: &view{state: a.c.st, readLimit: a.c.lastTS + 1}, records: a.c.rec.lastVersion}
	a.c.rec.mu.Lock()
	a.c.rec.applied = a.c.rec.lastVersion
	a.c.rec.mu.Unlock()
	for _, g := range a.touched {
		news, mark := g.CommitPending()
		if news {
			a.NewStreams = true
		}
		p.layouts = append(p.layouts, layoutMark{g, mark})
	}
	return p
}

// publication is what readers may see once a batch is durable: its view and the streams its
// layouts learned.
type publication struct {
	view    *view
	layouts []layoutMark
	records uint64 // the last record version applied
}

type layoutMark struct {
	g    layout.Generation
	mark uint64
}

// publishDurable makes p visible. Publications must be published in commit order.
func (c *core) publishDurable(p *publication) {
	for _, lm := range p.layouts {
		lm.g.Publish(lm.mark)
	}
	c.publish(p.view.state, p.view.readLimit)
	c.publishRecords(p.records)
}

// ReadLimit returns the exclusive upper bound of the timestamps readers see: every message
// with a smaller timestamp is durable and readable, and every message stored later gets a
// larger one. Load it before Streams, and the streams listed include every stream holding a
// message below it (a batch's streams are published before its read limit).
func (c *core) ReadLimit() uint64 { return c.view.Load().readLimit }

// Abort returns the in-memory state to what it was before Apply.
func (a *Applied) Abort() {
	if a.count != nil {
		a.count.Store(a.prevCount)
	}
	for _, g := range a.touched {
		g.Abort()
	}
	for _, id := range a.Dropped {
		a.c.dropped.Delete(id)
	}
	for i := len(a.recUndo) - 1; i >= 0; i-- {
		u := a.recUndo[i]
		if u.version == 0 {
			delete(a.c.rec.versions, u.key)
		} else {
			a.c.rec.versions[u.key] = u.version
		}
	}
	a.c.rec.lastVersion = a.prevVersion
	a.c.st = a.prevState
	a.c.lastTS = a.prevLast
}

// isDropped reports whether the drop of generation gen was applied, possibly before it became
// durable and visible in the view.
func (c *core) isDropped(gen stream.GenerationID) bool {
	_, ok := c.dropped.Load(gen)
	return ok
}

// DroppedMessages returns how many messages a dropped generation held when it was dropped.
// ok is false for a generation this process did not see dropped, or whose count was unknown.
func (c *core) DroppedMessages(gen stream.GenerationID) (n uint64, ok bool) {
	v, found := c.dropped.Load(gen)
	if !found {
		return 0, false
	}
	cnt := v.(*atomic.Uint64)
	if cnt == nil {
		return 0, false
	}
	return cnt.Load(), true
}
