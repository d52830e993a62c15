// Package ds is Strata's public API: an embedded, durable message store for MQTT brokers.
//
// A broker opens a DB in a directory and hands it every message a durable session may need.
// The DB stores each message once, in the shard of its publisher (xxhash64 of the client ID
// modulo NShards), inside the shard's current generation (a time slice; old generations are
// dropped whole, by retention), in the stream of its learned topic pattern. Sessions read back
// by topic filter and start time, in batches, through iterators that are plain values: marshal
// one to bytes, keep it with the session, and resume after a restart.
//
//	db, _ := ds.Open(dir, nil)
//	refs, err := db.Store(ctx, ds.Message{ClientID: "c1", Topic: "sensor/1/temp", Payload: p})
//	streams, _ := db.Streams("sensor/+/temp", since)
//	it, _ := db.Iterator(streams[0], "sensor/+/temp", since)
//	msgs, it, err := db.Next(ctx, it, 100)
//
// A connection that acknowledges each PUBLISH once it is durable, while it reads the next ones,
// uses StoreAsync instead of parking a goroutine per message in Store:
//
//	err := db.StoreAsync(ctx, msg, func(ref ds.Ref, err error) { pubacks <- packetID })
//
// # Subscriptions
//
// A broker rarely wants the iterators themselves: Subscribe gives it "every message matching
// this filter, from this position, in order, as it arrives".
//
//	from, _ := db.TailPosition()                   // or StartPosition(t), or a saved Position
//	sub, _ := db.Subscribe("sensor/+/temp", from, nil)
//	msgs, err := sub.Next(ctx, 100)                // waits; per shard in timestamp order
//	sub.Ack(ds.RefOf(msgs[0]))                     // at most MaxUnacked unacknowledged
//	saved, _ := sub.Position().MarshalBinary()     // resume point: one timestamp per shard
//
// Per shard, a subscription merges the filter's streams of every generation by timestamp and
// finds new streams and generations itself (catchup.go draws the merge bound that makes this
// exact). Behind the tail it reads the storage on its own; at the tail it is fed, with every
// other tail subscription of the shard, from each durable commit in memory (feed.go): one
// pass per commit, no storage read. A subscription that does not keep up is sent back to
// reading, so it never holds others back. Retention that drops unread messages is reported
// (a *LossError), never skipped silently. Watch is the same push signal for readers of
// iterators: it names the streams that changed and up to which timestamp.
//
// # Guarantees
//
//   - Store returns once the messages are durable (Options.Durability), and then they are
//     readable; a message that is not yet durable is never returned by Next. StoreAsync's done
//     is called at the same point, once, and in queue order per shard.
//   - Within a stream, messages come back in timestamp order; timestamps strictly increase within
//     a shard, and a publisher's messages keep their order.
//   - A shard's part of one Store is atomic: all of it is stored, or none.
//   - Every error for a documented condition wraps one of the sentinel errors (errors.Is).
//   - Invalid input (topic, filter, oversized message, garbage iterator bytes) is refused with an
//     error and changes nothing.
//
// # Backends
//
// Open keeps the shards in one directory (package shard over Pebble). The same DB also runs
// over a Backend handed to OpenBackend: package raftgroup's replicates every shard with Raft.
// This package does not depend on raftgroup; a broker picks one or the other when it opens the
// DB and uses the same API afterwards.
//
// See docs/DESIGN.md for the design (its section 12 "Decisions" says what was decided and why),
// and package layout for the on-disk format.
package ds
