// Package layout decides how a shard-generation's messages are laid out as Pebble keys, how
// messages are grouped into streams, and how a topic filter is read back.
//
// Two layouts exist:
//
//   - LTS, the learned topic structure (the default): a per-generation trie learns which topic
//     levels are fixed and which vary, each learned pattern ("sensor/+/temp") is a stream, and a
//     filter that pins a varying level is answered through a per-level index by a leapfrog join,
//     so a read costs what it returns, not what the stream holds.
//   - Reference: one stream per shard-generation, keyed by timestamp alone. It is the baseline for
//     tests and benchmarks.
//
// # On-disk format (format version 1)
//
// Every key of a shard starts with the shard's key prefix P (empty when the shard owns its Pebble
// instance, 's' | shard(u16) when shards share one). Integers are big-endian so that bytes sort
// as numbers. One generation's data is one contiguous key range, so dropping a generation is one
// range deletion per keyspace ('d' and 't'), never a scan.
//
// LTS data key, one per message; the value is the message record of package message:
//
//	+---+-----+----------+-------------+--------+---------+------------------------------+
//	| P | 'd' | gen(u32) | static(u64) | 0x0000 | ts(u64) | varying levels: per level,   |
//	|   |     |          |             |        |         | uvarint(len) | level bytes   |
//	+---+-----+----------+-------------+--------+---------+------------------------------+
//
// LTS index key, one per varying level of a message; the value is empty:
//
//	+---+-----+----------+-------------+-------------+----------------------+---------+
//	| P | 'd' | gen(u32) | static(u64) | level i(u16)| xxhash64(level value)| ts(u64) |
//	+---+-----+----------+-------------+-------------+----------------------+---------+
//
// static is the ID of the trie node where the topic's path ends: the stream key. level i is the
// 1-based position of the level in the topic (0 is taken by the data keys). Index keys end at
// ts (docs/DESIGN.md, section 12 "Decisions", item 1): a timestamp is unique within a shard, so
// the varying levels would add bytes and no information. The join re-checks the topic on the data key, which also
// covers hash collisions.
//
// LTS trie record, one per learned edge or stream, in the order they were learned:
//
//	key:   | P | 't' | gen(u32) | seq(u32) |
//	value: | 1 (edge)   | parent(u32) | child(u32) | plus(u8) | literal bytes |
//	       | 2 (stream) | node(u32)   |
//
// Node 0 is the root of ordinary topics and node 1 the root of topics that begin with '$', so
// that a '+' or '#' in the first level of a filter can never reach a '$' topic. Reloading a
// generation replays the records in seq order and rebuilds the same trie, with the same node IDs.
//
// Reference data key; the value is uvarint(len(topic)) | topic | message record:
//
//	+---+-----+----------+---------+
//	| P | 'd' | gen(u32) | ts(u64) |
//	+---+-----+----------+---------+
//
// # Invariants
//
//  1. Add is deterministic: the same messages added to the same learned state write the same
//     bytes. Replicas rely on it.
//  2. A topic never moves between streams within a generation: a literal edge, once learned, is
//     kept.
//  3. Learned state changes only through Add, and becomes permanent at Commit; Abort restores the
//     state of the last Commit, so a failed batch leaves memory and disk in agreement.
//  4. Reads never see a timestamp at or above the Until bound they are given.
package layout
