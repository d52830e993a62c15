// Package raftlog is a site's Raft log: dragonboat's raftio.ILogDB kept in append-only segment
// files instead of a key-value store.
//
// Why: dragonboat's default LogDB is a Pebble instance, so every Raft entry a site persists
// goes through a WAL record, a memtable insert, a flush and then compactions, only to be
// deleted after the next snapshot — about a third of a replicated site's CPU in ds-bench's
// replicated row. Here an entry is written once, by one write and one fdatasync per
// SaveRaftState call whatever the number of groups in it, and read back by offset; its space
// comes back when the whole segment holding it is dead. The log counts its own fsyncs (Stats),
// which dragonboat's LogDB does not expose.
//
// # Files
//
// The directory holds segments named by a 16-digit hex sequence number ("%016x.log"), written
// in order; only the last one is appended to. Each segment is a sequence of frames, and each
// frame is one atomic write (one SaveRaftState, one snapshot save, one bootstrap, ...):
//
//	+-------------+------------+-----------------------------------+
//	| crc32c(u32) | length(u32)| payload: length bytes of ops      |
//	+-------------+------------+-----------------------------------+
//
// Integers in the header are little-endian; the CRC (Castagnoli) covers the length and the
// payload. A payload is a sequence of ops, each for one replica (shard, replica):
//
//	| op(u8) | shard(uvarint) | replica(uvarint) | body |
//
//	opEntries    first index(uvarint) | count(uvarint), then count × ( len(uvarint) | raftpb.Entry
//	             bytes ); the entries' indexes are first, first+1, ... (checked when read back)
//	opState      len(uvarint) | raftpb.State bytes
//	opInstall    len(uvarint) | raftpb.Snapshot bytes (a snapshot received: the log ends there)
//	opSnapshot   len(uvarint) | raftpb.Snapshot bytes (a snapshot taken: metadata only)
//	opBootstrap  len(uvarint) | raftpb.Bootstrap bytes
//	opRemoveTo   index(uvarint)                       (entries up to index are not needed)
//	opRemoveNode                                      (forget the replica)
//	opCheckpoint maxIndex(uvarint) | base(uvarint) | hasLog(u8)
//	opWindow     as opEntries: the replica's whole retained window again, moved (below)
//
// Every segment begins with a checkpoint frame written when it is created: for every replica
// known then, its bootstrap, state and snapshot ops and an opCheckpoint. So the segments
// before one hold nothing but entries the later ones do not describe again.
//
// # Invariants
//
//  1. A frame is durable (fdatasync) before the call that wrote it returns; a frame is applied
//     to memory only once written, by the same decoder recovery uses (one owner of the format).
//  2. A frame is all or nothing: recovery cuts off a last frame of the last segment whose CRC
//     or length does not check (a write torn by a crash; nothing in it was acknowledged) and
//     starts a new segment. A bad frame anywhere else — in another segment, or followed by a
//     good frame — is corruption (ErrCorrupt), not silently skipped. A round too large for one
//     frame (over 1 GiB) is split between replicas' updates, each synced before the next.
//  3. Each replica's retained entries are one contiguous window [base, base+n) of locations
//     (segment, offset, length); entries above maxIndex are dropped when it moves down, and
//     entries written after a gap restart the window, as dragonboat's own LogDB reads them.
//  4. A segment is deleted only when it is not the last one, every segment before it is
//     deleted, and no retained entry is in it (a live count per segment); the directory is
//     synced after each deletion, so replaying the segments left gives the same state.
//  5. The disk holds at most about twice the retained entries plus four segments: a group
//     that goes quiet takes no more snapshots and would keep its last entries, and with them
//     every later segment, for ever. When a new segment starts and the segments hold more
//     than that, the windows of the replicas that keep the oldest segment alive are written
//     again whole (opWindow), so it dies.
package raftlog
