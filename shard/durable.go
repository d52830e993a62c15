package shard

import (
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
)

// Durable is what a shard made readable in one step: a group commit whose WAL sync completed
// (Shard), or a run of applied Raft entries (Replica). The shard hands it to Config.OnDurable
// or ReplicaConfig.OnDurable right after readers can see it, in order: each Durable's From is
// the previous one's Until, unless the shard's state was replaced in between (a replica
// recovered from a snapshot), which a receiver sees as a gap.
type Durable struct {
	Shard stream.ShardID
	// From and Until bound the timestamps made readable: readers saw every message below From
	// before, and see every message below Until now.
	From, Until uint64
	// Messages are the messages stored in [From, Until), in timestamp order, with Timestamp
	// and Shard set. They belong to the shard: the receiver must not modify them, and must
	// copy what it keeps after it returns unless Owned is set (an embedded shard's messages
	// share their payloads with the Store call that is woken right after).
	Messages []*message.Message
	// Owned: the messages were decoded for this step only (a replica's log entries), so the
	// receiver may keep them as they are.
	Owned bool
	// Streams are the streams that received the messages, each with the timestamp of its last
	// one (a stream may appear more than once in a replica's step of several entries).
	Streams []StreamTouch
	// Records are the record writes made durable, in order, with their versions set
	// (record.go). The receiver must not modify them.
	Records []RecordWrite
	// FromVersion and UntilVersion are the shard's last record version before and after the
	// step. Set by replicas only (0 elsewhere): record versions, like timestamps, are
	// assigned in apply, the same on every replica, so (From, FromVersion) and (Until,
	// UntilVersion) place a step among any replica's steps, records-only steps included
	// (raftgroup feeds sites without a replica by them).
	FromVersion, UntilVersion uint64
	// Reset: the shard's state was replaced (a replica recovered from a snapshot); Until is
	// its new read limit, and what changed below it is not listed: readers must look again.
	Reset bool
}

// StreamTouch is a stream that received messages, and the timestamp of the last one.
type StreamTouch struct {
	Generation stream.GenerationID
	Key        uint64
	Last       uint64
}
