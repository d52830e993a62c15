package ds

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// DB is a Strata store: NShards shards, each storing the messages of its publishers. Open
// builds one over the embedded storage (one directory); OpenBackend over any Backend (package
// raftgroup's replicated one). The API is the same. All methods are safe for concurrent use.
type DB struct {
	opts    *Options
	backend Backend
	shards  []ShardBackend
	stats   StorageStatser // backend's, or nil: Metrics leaves the storage fields zero

	mu struct {
		sync.RWMutex // held for reading by every call, for writing by Close
		closed       bool
	}
	exit    func() // mu.RUnlock, bound once: enter returns it without allocating a closure per call
	changed struct {
		sync.Mutex
		ch     chan struct{}
		closed bool // ch stays closed: the DB is closed
	}
	feeds    []*feed // per shard: the subscriptions at its tail
	subStats subStats
	subs     struct {
		sync.Mutex
		all map[*Subscription]struct{}
	}
	watchers struct {
		sync.Mutex
		all []*Watcher // copied on write: onDurable iterates a snapshot
	}
	recWatch recordWatches
	waits    []waitQueue    // per shard: StoreAsync over a backend without SubmitNotify
	asyncWG  sync.WaitGroup // the waitQueues' goroutines
}

// Open opens the DB in dir, creating it if it does not exist. opts may be nil for the defaults.
func Open(dir string, opts *Options) (*DB, error) {
	opts, err := prepareOptions(opts)
	if err != nil {
		return nil, err
	}
	b, err := openEmbedded(dir, opts)
	if err != nil {
		return nil, err
	}
	// opts is valid and its NShards is the stored one, so newDB fails only on a Backend that
	// breaks its contract, which the embedded one does not; still, the storage must not leak.
	db, err := newDB(b, opts)
	if err != nil {
		b.Close() // the error that matters is newDB's, as with any failed Open
		return nil, err
	}
	return db, nil
}

// OpenBackend returns a DB over b, which it owns from then on: DB.Close closes it. If
// OpenBackend fails, b is not closed; the caller still owns it.
//
// The shards and their storage come configured with b, so of opts only what applies above
// them is used: MaxMessageBytes (Store refuses larger messages with ErrMessageTooLarge), Logger
// (the DB's own logs) and NShards, which, when not 0, must equal the number of b's shards
// (ErrShardMismatch). The other fields are ignored, though opts is still validated as Open
// does (ErrInvalidOptions). opts may be nil for the defaults; OpenBackend works on a copy.
func OpenBackend(b Backend, opts *Options) (*DB, error) {
	opts, err := prepareOptions(opts)
	if err != nil {
		return nil, err
	}
	return newDB(b, opts)
}

// prepareOptions returns a copy of opts (nil: the defaults) with the defaults filled in,
// or the error of Validate.
func prepareOptions(opts *Options) (*Options, error) {
	if opts == nil {
		opts = &Options{}
	}
	opts = opts.Clone()
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return opts, nil
}

// newDB builds the DB over b; opts is prepared. It checks that b's shards are what routing by
// ShardOf assumes (IDs 0..n-1 in order), since a mistake there would store messages in the
// wrong shard, silently.
func newDB(b Backend, opts *Options) (*DB, error) {
	db := &DB{opts: opts, backend: b}
	db.exit = db.mu.RUnlock
	db.changed.ch = make(chan struct{})
	b.Watch(db.notifyChanged)
	shards := b.Shards()
	if len(shards) < 1 || len(shards) > MaxShards {
		return nil, fmt.Errorf("strata: backend has %d shards, want [1, %d]", len(shards), MaxShards)
	}
	for i, s := range shards {
		if s == nil || s.ID() != stream.ShardID(i) {
			return nil, fmt.Errorf("strata: backend shard %d is nil or has another ID", i)
		}
	}
	if opts.NShards != 0 && opts.NShards != len(shards) {
		return nil, fmt.Errorf("%w: the backend has %d shards, Options.NShards is %d",
			ErrShardMismatch, len(shards), opts.NShards)
	}
	opts.NShards = len(shards)
	db.shards = shards
	db.waits = make([]waitQueue, len(shards))
	for i := range db.waits {
		db.waits[i].wg = &db.asyncWG
	}
	db.stats, _ = b.(StorageStatser)
	db.subs.all = map[*Subscription]struct{}{}
	for i, s := range shards {
		pos, _ := s.ReadLimit() // 0 where unavailable: the first commit is then a gap, harmlessly
		db.feeds = append(db.feeds, newFeed(ShardID(i), pos, &db.subStats))
	}
	b.WatchDurable(db.onDurable)
	return db, nil
}

// Close commits every accepted Store, stops the shards and closes the storage (the Backend).
// Calls after Close return ErrClosed. Close waits for calls in progress.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.mu.closed {
		return ErrClosed
	}
	db.mu.closed = true
	err := db.backend.Close()
	db.asyncWG.Wait() // the backend finished every Waiter: the last StoreAsync calls are done
	// No commit comes any more: stop the feeds, then end the subscriptions.
	for _, f := range db.feeds {
		f.close()
	}
	for _, s := range db.subscriptions() {
		s.Close()
	}
	for _, w := range db.watcherList() {
		w.Close()
	}
	// Wake whoever waits for new streams: there will be none.
	db.changed.Lock()
	close(db.changed.ch)
	db.changed.closed = true
	db.changed.Unlock()
	return err
}

// enter starts a call; the returned function ends it.
func (db *DB) enter() (func(), error) {
	db.mu.RLock()
	if db.mu.closed {
		db.mu.RUnlock()
		return nil, ErrClosed
	}
	return db.exit, nil
}

// NShards returns the number of shards.
func (db *DB) NShards() int { return len(db.shards) }

// ShardOf returns the shard that stores the messages of a publisher: xxhash64 of the client ID
// bytes modulo NShards. The function is part of the on-disk format and never changes.
func ShardOf(clientID string, nShards int) stream.ShardID {
	return stream.ShardID(xxhash.Sum64String(clientID) % uint64(nShards))
}

// Ref identifies a stored message: its shard and its timestamp there.
type Ref struct {
	Shard     stream.ShardID
	Timestamp uint64 // µs since the Unix epoch
}

// Store stores msgs and returns once they are durable (per Options.Durability), with each
// message's Ref in order.
//
// Every message is validated first; if one is invalid (ErrInvalidTopic, ErrMessageTooLarge,
// ErrInvalidMessage) nothing is stored. Messages go to their publisher's shard; the messages of
// one shard are stored atomically, in order. If a shard fails, the error names it and that
// shard stored none of the call's messages, while other shards' messages may be stored (their
// Refs are set). ctx bounds the wait for room in a full queue (back-pressure); once queued,
// Store waits for the outcome, so a returned error says the messages were not stored, with
// two exceptions: ErrFailed (a failed fsync) means durability is unknown, and an error
// wrapping ErrOutcomeUnknown (replicated: an attempt reached a leader whose answer was lost)
// means they may be stored — read before storing them again. The Message values are not
// retained.
func (db *DB) Store(ctx context.Context, msgs ...Message) ([]Ref, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := len(db.shards)
	if len(msgs) == 1 {
		// The common case of a broker storing each PUBLISH as it arrives: no grouping, and the
		// copy of the message and the slice handed to the shard in one allocation.
		size, err := db.validate(&msgs[0])
		if err != nil {
			return nil, fmt.Errorf("message 0 of 1: %w", err)
		}
		one := &struct {
			m    message.Message
			msgs [1]*message.Message
		}{m: msgs[0]}
		one.msgs[0] = &one.m
		sh := ShardOf(one.m.ClientID, n)
		w, err := db.shards[sh].Submit(ctx, one.msgs[:], size)
		if err == nil {
			err = w.Wait()
		}
		if err != nil {
			return nil, fmt.Errorf("shard %d: %w", sh, err)
		}
		return []Ref{{Shard: sh, Timestamp: one.m.Timestamp}}, nil
	}
	sizes := make([]int, len(msgs))
	for i := range msgs {
		size, err := db.validate(&msgs[i])
		if err != nil {
			return nil, fmt.Errorf("message %d of %d: %w", i, len(msgs), err)
		}
		sizes[i] = size
	}
	copies := make([]message.Message, len(msgs))
	copy(copies, msgs)
	refs := make([]Ref, len(msgs))
	type group struct {
		msgs  []*message.Message
		bytes int
		w     Waiter
		err   error
	}
	groups := make(map[stream.ShardID]*group, min(n, len(msgs)))
	order := make([]stream.ShardID, 0, min(n, len(msgs)))
	for i := range copies {
		sh := ShardOf(copies[i].ClientID, n)
		g := groups[sh]
		if g == nil {
			g = &group{}
			groups[sh] = g
			order = append(order, sh)
		}
		g.msgs = append(g.msgs, &copies[i])
		g.bytes += sizes[i]
	}
	for _, sh := range order {
		g := groups[sh]
		g.w, g.err = db.shards[sh].Submit(ctx, g.msgs, g.bytes)
	}
	var errs []error
	for _, sh := range order {
		g := groups[sh]
		if g.err == nil {
			g.err = g.w.Wait()
		}
		if g.err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", sh, g.err))
			for _, m := range g.msgs {
				m.Timestamp = 0
			}
		}
	}
	for i := range copies {
		if copies[i].Timestamp != 0 {
			refs[i] = Ref{Shard: stream.ShardID(copies[i].Shard), Timestamp: copies[i].Timestamp}
		}
	}
	return refs, errors.Join(errs...)
}

// validate checks m and returns its size (message.Size), which Store reuses for the batch
// byte budget.
func (db *DB) validate(m *Message) (int, error) {
	if err := topic.ValidateName(m.Topic); err != nil {
		return 0, err
	}
	if m.QoS > 2 {
		return 0, fmt.Errorf("%w: QoS %d", ErrInvalidMessage, m.QoS)
	}
	if m.Properties.PayloadFormat > 1 {
		return 0, fmt.Errorf("%w: payload format indicator %d", ErrInvalidMessage, m.Properties.PayloadFormat)
	}
	size := message.Size(m)
	if size > db.opts.MaxMessageBytes {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, size, db.opts.MaxMessageBytes)
	}
	return size, nil
}

// StreamsChanged returns a channel that is closed the next time the set of streams changes: a
// new topic pattern is learned, or a generation is added or dropped; and when the DB is
// closed. Call Streams then, and StreamsChanged again for the next change. A reader thus
// learns of new streams without polling every stream. It does not fire for new messages in
// existing streams.
func (db *DB) StreamsChanged() <-chan struct{} {
	db.changed.Lock()
	defer db.changed.Unlock()
	return db.changed.ch
}

func (db *DB) notifyChanged() {
	db.changed.Lock()
	defer db.changed.Unlock()
	if db.changed.closed {
		return
	}
	close(db.changed.ch)
	db.changed.ch = make(chan struct{})
}

// onDurable passes a shard's durable commit to its feed.
func (db *DB) onDurable(d shard.Durable) {
	if int(d.Shard) < len(db.feeds) {
		db.feeds[d.Shard].onDurable(d)
	}
	for _, w := range db.watcherList() {
		w.add(d)
	}
	db.notifyRecords(d)
}

// subscriptions returns the open subscriptions.
func (db *DB) subscriptions() []*Subscription {
	db.subs.Lock()
	defer db.subs.Unlock()
	out := make([]*Subscription, 0, len(db.subs.all))
	for s := range db.subs.all {
		out = append(out, s)
	}
	return out
}

// watcherList returns the open watchers: a slice that is never modified (copied on write).
func (db *DB) watcherList() []*Watcher {
	db.watchers.Lock()
	defer db.watchers.Unlock()
	return db.watchers.all
}
