package raftlog

import pb "github.com/lni/dragonboat/v4/raftpb"

// The log's memory: per replica, its bootstrap, state, snapshot and where each retained entry's
// bytes are. Open builds it by replaying the segments, and every frame written updates it
// through the same applier, so the memory is always what a replay of the disk would give.

type nodeKey struct{ shard, replica uint64 }

// loc is where one retained entry's bytes are.
type loc struct {
	seg    uint64
	off, n uint32
}

// node is one replica's state (doc.go, invariant 3).
type node struct {
	hasBootstrap bool
	bootstrap    pb.Bootstrap
	hasState     bool
	state        pb.State
	snapshot     pb.Snapshot
	hasLog       bool   // maxIndex was set
	maxIndex     uint64 // the last index of the log
	base         uint64 // index of locs[0]
	locs         []loc
}

func (l *Log) release(locs []loc) {
	for _, lc := range locs {
		l.segment(lc.seg).live--
		l.liveBytes -= int64(lc.n)
	}
}

// applier applies decoded ops to the log's memory. base is the payload's offset in seg.
type applier struct {
	l    *Log
	seg  *segment
	base uint32
}

func (a applier) node(shard, replica uint64) *node {
	k := nodeKey{shard, replica}
	n := a.l.nodes[k]
	if n == nil {
		n = &node{}
		a.l.nodes[k] = n
	}
	return n
}

func (a applier) entries(shard, replica, first uint64, spans []span, whole bool) error {
	n := a.node(shard, replica)
	if whole || len(n.locs) == 0 || first < n.base || first > n.base+uint64(len(n.locs)) {
		a.l.release(n.locs) // not a continuation: the window restarts (invariant 3)
		n.locs, n.base = n.locs[:0], first
	} else {
		a.dropFrom(n, first)
	}
	for _, s := range spans {
		n.locs = append(n.locs, loc{seg: a.seg.seq, off: a.base + s.off, n: s.n})
		a.l.liveBytes += int64(s.n)
	}
	a.seg.live += len(spans)
	if !whole { // a window moved: the log's end is as it was
		n.maxIndex, n.hasLog = first+uint64(len(spans))-1, true
	}
	return nil
}

func (a applier) state(shard, replica uint64, st pb.State) {
	n := a.node(shard, replica)
	n.state, n.hasState = st, true
}

func (a applier) snapshot(shard, replica uint64, ss pb.Snapshot, install bool) {
	n := a.node(shard, replica)
	if ss.Index <= n.snapshot.Index {
		return // an older snapshot than the one kept: dragonboat's LogDB ignores it too
	}
	n.snapshot = ss
	if install {
		// A snapshot received: the log now ends at its index.
		n.maxIndex, n.hasLog = ss.Index, true
		a.dropFrom(n, ss.Index+1)
	}
}

// dropFrom releases n's retained entries at and after index.
func (a applier) dropFrom(n *node, index uint64) {
	k := uint64(0)
	if index > n.base {
		k = index - n.base
	}
	if k < uint64(len(n.locs)) {
		a.l.release(n.locs[k:])
		n.locs = n.locs[:k]
	}
}

func (a applier) bootstrap(shard, replica uint64, bs pb.Bootstrap) {
	n := a.node(shard, replica)
	n.bootstrap, n.hasBootstrap = bs, true
}

func (a applier) removeTo(shard, replica, index uint64) {
	n := a.l.nodes[nodeKey{shard, replica}]
	if n == nil || index < n.base {
		return
	}
	k := min(index+1-n.base, uint64(len(n.locs)))
	a.l.release(n.locs[:k])
	n.locs, n.base = n.locs[k:], index+1
}

func (a applier) removeNode(shard, replica uint64) {
	k := nodeKey{shard, replica}
	if n := a.l.nodes[k]; n != nil {
		a.l.release(n.locs)
		delete(a.l.nodes, k)
	}
}

func (a applier) checkpoint(shard, replica, maxIndex, base uint64, hasLog bool) {
	n := a.node(shard, replica)
	n.maxIndex, n.hasLog = maxIndex, hasLog
	if len(n.locs) == 0 {
		n.base = base // the entries before this segment are in deleted segments, or dead
	}
}
