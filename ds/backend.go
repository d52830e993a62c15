package ds

import (
	"context"

	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Backend is where a DB's shards live.
//
// A DB does everything above the shards itself (validation, routing by ShardOf, grouping a
// Store by shard, error wrapping, closing and StreamsChanged) and asks its Backend for the rest.
// Two implementations exist: the embedded storage of this package, which Open builds (package
// shard over Pebble in one directory), and package raftgroup, which replicates every shard with
// Raft and hands its Backend to OpenBackend. This package never imports raftgroup or its
// dependencies; the interface is the whole contract between them. A broker normally never
// implements Backend: it calls Open, or raftgroup's constructor.
//
// A Backend may also implement StorageStatser, for the storage fields of Metrics.
type Backend interface {
	// Shards returns the shards, indexed by shard ID (Shards()[i].ID() == i). Called once by OpenBackend.
	Shards() []ShardBackend
	// Watch registers f to be called after new streams or generations became visible (StreamsChanged). Called once by OpenBackend before any other use.
	Watch(f func())
	// WatchDurable registers f to be called, per shard in order, each time the shard made
	// stored messages readable (shard.Durable; on a replicated site: as its replica applies
	// them). It feeds subscriptions at the tail. Called once by OpenBackend before any other
	// use; f returns quickly and copies what it keeps unless the Durable says Owned.
	WatchDurable(f func(shard.Durable))
	// Close stops the shards and releases the storage. The DB calls it once, after every call in progress has ended.
	// Every Waiter handed out must return once Close has returned (StoreAsync's outcomes
	// may still be waited for: DB.Close waits for them).
	Close() error
}

// ShardBackend is one shard as the DB uses it. package shard's *shard.Shard implements it
// (through a small adapter of this package, as its Submit returns a concrete shard.Waiter).
//
// The DB calls the methods concurrently, from any goroutine, until it calls Backend.Close; it
// validates every argument first (topics, filters, shard IDs), so a ShardBackend need not. The
// errors it returns for the documented conditions must wrap this package's sentinels (they are
// package shard's: ErrClosed, ErrQuotaExceeded, ErrFailed, ErrEndOfStream, ...); the DB adds
// the shard to the message and passes them on. A broker normally never implements it.
type ShardBackend interface {
	// ID returns the shard's ID.
	ID() stream.ShardID
	// Submit queues msgs to be stored as one atomic batch and returns once they are queued;
	// ctx bounds only the wait for room in the queue (back-pressure). Waiter.Wait then returns
	// nil once the messages are durable, with each one's Timestamp and Shard set, or an error
	// once they are known not to be stored (ErrFailed: durability unknown). bytes is the sum of
	// their sizes (message.Size), for the batch budget. The shard may use msgs until Wait
	// returns.
	Submit(ctx context.Context, msgs []*message.Message, bytes int) (Waiter, error)
	// SubmitTxns queues conditional Txns (records and messages), applied in order in one
	// command, like Submit queues messages. Once Wait returned nil, each Txn's Result holds
	// its outcome (ErrConditionFailed via Txn.Err), and its writes' versions and its
	// messages' Timestamp and Shard are set. A replicated shard whose proposal was retried
	// after it committed cannot know the outcomes: ErrOutcomeUnknown.
	SubmitTxns(ctx context.Context, txns []*shard.Txn, bytes int) (Waiter, error)
	// Record returns the durable value and version of a record (version 0: none).
	Record(ctx context.Context, key []byte) ([]byte, uint64, error)
	// ScanRecords calls f in key order for every durable record whose key starts with
	// prefix, until f returns false; key and value are valid during the call only.
	ScanRecords(ctx context.Context, prefix []byte, f func(key, value []byte, version uint64) bool) error
	// Streams returns the streams of every generation that is current or ends after since
	// whose pattern can match the filter levels (topic.Split of a valid filter), in read order:
	// by generation, then key. ErrUnavailable where a replicated site holds no open replica
	// of the shard at the moment: never an empty answer that a reader could take for "no
	// streams".
	Streams(filter []string, since uint64) ([]stream.Stream, error)
	// Read appends to out up to max durable messages of it's stream that match the filter
	// levels, from timestamp it.Next on, with their Shard set, and returns the next timestamp
	// to read from: every matching message below it was returned (when the read reached the
	// read limit, it is the read limit). No messages and a nil error: none yet. ErrEndOfStream: the generation is
	// sealed and was read to its end. ErrGenerationNotFound: it does not exist or was dropped.
	Read(it stream.Iterator, filter []string, max int, out []message.Message) ([]message.Message, uint64, error)
	// ReadLimit returns the exclusive upper bound of the timestamps that reads see: every
	// message below it is durable and readable, every later one gets a larger timestamp, and
	// Streams called after ReadLimit lists every stream holding a message below it.
	// ErrUnavailable as for Streams.
	ReadLimit() (uint64, error)
	// DroppedMessages returns how many messages a dropped generation held, if this process
	// saw the drop and the count was known.
	DroppedMessages(gen stream.GenerationID) (uint64, bool)
	// Generations returns the shard's generations by ID; the last is the current one. The
	// caller may keep the slice. ErrUnavailable as for Streams.
	Generations() ([]generation.Info, error)
	// GenerationUsage returns what a generation holds (ErrGenerationNotFound for an unknown
	// or dropped one; ErrUnavailable as for Streams).
	GenerationUsage(gen stream.GenerationID) (shard.GenerationUsage, error)
	// Layout returns the learned layout of a generation, for inspection (Metrics, DumpLayout).
	Layout(gen stream.GenerationID) (layout.Generation, bool)
	// AddGeneration seals the current generation, opens a new one and returns once that is
	// durable.
	AddGeneration(ctx context.Context) error
	// DropGeneration drops a sealed generation (ErrCurrentGeneration for the current one,
	// ErrGenerationNotFound for an unknown one) and returns once the drop is durable.
	DropGeneration(ctx context.Context, gen stream.GenerationID) error
	// ShardMetrics returns the shard's counters, which the DB reads with atomic loads. Never
	// nil; the same pointer for the shard's lifetime.
	ShardMetrics() *shard.Metrics
}

// Waiter waits for a submitted Store.
type Waiter interface {
	// Wait returns once the submitted messages are durable (nil) or failed. The DB calls it
	// once.
	Wait() error
}

// StorageKinder is implemented by a Backend that names its storage for the operator (the
// "storage" of ds-info info and GET /v1/info; "backend" without it).
type StorageKinder interface {
	StorageKind() string
}

// StorageStatser is implemented by a Backend that can report its storage's size and activity:
// Metrics then fills DiskBytes, BytesWritten and Pebble from StorageStats. With a Backend that
// does not implement it, those fields stay zero. The embedded storage of Open implements it.
type StorageStatser interface {
	// StorageStats returns a snapshot of the storage's figures. The DB calls it only while it
	// is open, never concurrently with Backend.Close.
	StorageStats() StorageStats
}

// StorageStats are the storage figures of a Backend, copied into the fields of Metrics of the
// same names.
type StorageStats struct {
	// DiskBytes is the size of the storage's files.
	DiskBytes uint64
	// BytesWritten counts what the storage wrote since it was opened (for Pebble: WAL,
	// flushes and compactions), for the write amplification.
	BytesWritten uint64
	// Pebble is Pebble's own report, one per instance; empty for a storage without Pebble.
	Pebble []string
}
