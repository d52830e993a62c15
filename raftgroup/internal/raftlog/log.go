package raftlog

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
)

// ErrClosed is returned by every call after Close.
var ErrClosed = errors.New("raftlog: closed")

// Name is the LogDB type name dragonboat records in the NodeHost directory: a site keeps the
// LogDB it was created with.
const Name = "strata-segments"

// DefaultSegmentBytes is the size past which the next frame goes to a new segment.
const DefaultSegmentBytes = 64 << 20

// Options configure a Log.
type Options struct {
	SegmentBytes int64 // default DefaultSegmentBytes; at most 1 GiB (offsets are 32-bit)
}

// Stats are the log's counters since Open.
type Stats struct {
	Fsyncs   uint64        // fdatasyncs of segment files (directory syncs not counted)
	SyncTime time.Duration // spent in them
	Frames   uint64        // frames written
	Bytes    uint64        // bytes written
	Moved    uint64        // bytes of entries written again to free old segments (doc.go, invariant 5)
	Segments int           // segment files now
	Entries  int           // entries retained now, all replicas
}

type segment struct {
	seq  uint64
	f    *os.File
	size int64
	live int // retained entries in it
}

// Log is a raftio.ILogDB on segment files.
type Log struct {
	dir  string
	opts Options

	// writeMu orders writers: one frame is appended, synced and applied at a time. The
	// nodes and segments change only under writeMu and mu together, so a holder of writeMu
	// may read them without mu.
	writeMu sync.Mutex
	buf     payload
	failed  error // sticky: a write that may have left a partial frame

	mu        sync.RWMutex
	nodes     map[nodeKey]*node
	segs      []*segment // contiguous seqs; the last is appended to
	liveBytes int64      // bytes of the retained entries
	closed    bool
	scratch   []span
	rbuf      payload // relocation frames (under writeMu)

	fsyncs, syncNanos, frames, bytes, moved atomic.Uint64
}

var _ raftio.ILogDB = (*Log)(nil)

// Open opens the log in dir, creating it if needed, replays its segments and starts a new
// one. A torn frame at the end of the last segment (a crash during a write) is cut off.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	opts.SegmentBytes = min(opts.SegmentBytes, 1<<30)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil { // the log's own directory entry
		return nil, err
	}
	l := &Log{dir: dir, opts: opts, nodes: map[nodeKey]*node{}}
	seqs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	for i, seq := range seqs {
		if i > 0 && seq != seqs[i-1]+1 {
			return nil, fmt.Errorf("%w: %s: segment %016x missing", ErrCorrupt, dir, seqs[i-1]+1)
		}
		if err := l.replay(seq, i == len(seqs)-1); err != nil {
			l.closeFiles()
			return nil, err
		}
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if err := l.rotate(); err != nil {
		l.closeFiles()
		return nil, err
	}
	return l, nil
}

func segmentName(seq uint64) string { return fmt.Sprintf("%016x.log", seq) }

func listSegments(dir string) ([]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), ".log")
		if !ok || len(name) != 16 {
			continue
		}
		seq, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}

// replay applies every frame of segment seq; last says it may end in a torn frame.
func (l *Log) replay(seq uint64, last bool) error {
	path := filepath.Join(l.dir, segmentName(seq))
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	seg := &segment{seq: seq, f: f}
	l.segs = append(l.segs, seg)
	for off := 0; off < len(b); {
		n, ok := checkFrame(b[off:])
		if !ok {
			// Only the last frame of the last segment can be torn (each frame is synced
			// before the next is written, and Open starts a new segment): a bad frame with
			// a good one after it is damage.
			if !last || followedByFrame(b[off:]) {
				return fmt.Errorf("%w: %s: bad frame at offset %d", ErrCorrupt, path, off)
			}
			// A torn write: nothing in it was acknowledged. Cut it off so that the bytes
			// are never mistaken for a frame.
			if err := f.Truncate(int64(off)); err != nil {
				return err
			}
			if err := datasync(f); err != nil {
				return err
			}
			b = b[:off]
			break
		}
		if err := l.apply(seg, int64(off), b[off+frameHeader:off+frameHeader+n]); err != nil {
			return fmt.Errorf("%s: frame at offset %d: %w", path, off, err)
		}
		off += frameHeader + n
	}
	seg.size = int64(len(b))
	return nil
}

// apply decodes a frame written at off in seg and applies it to memory. Caller holds mu or
// runs before the log is shared.
func (l *Log) apply(seg *segment, off int64, body []byte) error {
	var err error
	l.scratch, err = decode(body, applier{l: l, seg: seg, base: uint32(off) + frameHeader}, l.scratch)
	return err
}

// rotate starts a new segment that begins with a checkpoint of every replica (doc.go).
// Caller holds writeMu.
func (l *Log) rotate() error {
	seq := uint64(1)
	if n := len(l.segs); n > 0 {
		seq = l.segs[n-1].seq + 1
	}
	f, err := os.OpenFile(filepath.Join(l.dir, segmentName(seq)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	p := &l.buf
	p.reset()
	for _, k := range l.sortedKeys() {
		n := l.nodes[k]
		if n.hasBootstrap {
			p.bootstrap(k.shard, k.replica, &n.bootstrap)
		}
		if n.hasState {
			p.state(k.shard, k.replica, &n.state)
		}
		if !pb.IsEmptySnapshot(n.snapshot) {
			p.snapshot(opSnapshot, k.shard, k.replica, &n.snapshot)
		}
		p.checkpoint(k.shard, k.replica, n)
	}
	seg := &segment{seq: seq, f: f}
	frame := p.frame()
	if err := l.writeFrame(seg, frame); err != nil {
		f.Close()
		return err
	}
	seg.size = int64(len(frame))
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	l.mu.Lock()
	l.segs = append(l.segs, seg)
	err = l.apply(seg, 0, p.b[frameHeader:])
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.collect()
	return l.relocate()
}

// relocate copies forward the windows of the replicas that keep the oldest segment alive,
// once the segments hold much more than the retained entries: a group that goes quiet never
// takes another snapshot, so without this its last entries would keep every later segment
// on disk. Each such window is written again whole (opWindow) into the last segment, so the
// oldest one dies. Caller holds writeMu.
func (l *Log) relocate() error {
	if len(l.segs) < 3 || l.segs[0].live == 0 {
		return nil
	}
	var total int64
	for _, seg := range l.segs {
		total += seg.size
	}
	if total <= 2*l.liveBytes+4*l.opts.SegmentBytes {
		return nil // mostly retained entries: they go with the groups' next snapshots
	}
	front := l.segs[0].seq
	for _, k := range l.sortedKeys() {
		n := l.nodes[k]
		if len(n.locs) == 0 || n.locs[0].seg != front { // a window's locations run in segment order
			continue
		}
		p := &l.rbuf
		p.reset()
		p.window(k.shard, k.replica, n.base, len(n.locs))
		for _, lc := range n.locs {
			if _, err := l.segment(lc.seg).f.ReadAt(p.rawEntry(lc.n), int64(lc.off)); err != nil {
				return err
			}
		}
		if len(p.b)-frameHeader > maxFrame {
			continue // too large to move in one frame; it goes with the group's next snapshot
		}
		if err := l.appendFrame(p.frame()); err != nil {
			return err
		}
		l.moved.Add(uint64(len(p.b)))
	}
	return nil
}

func (l *Log) sortedKeys() []nodeKey {
	keys := make([]nodeKey, 0, len(l.nodes))
	for k := range l.nodes {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b nodeKey) int {
		if a.shard != b.shard {
			return cmp.Compare(a.shard, b.shard)
		}
		return cmp.Compare(a.replica, b.replica)
	})
	return keys
}

// writeFrame appends frame to seg and syncs it. Caller holds writeMu.
func (l *Log) writeFrame(seg *segment, frame []byte) error {
	if _, err := seg.f.WriteAt(frame, seg.size); err != nil {
		return err
	}
	start := time.Now()
	if err := datasync(seg.f); err != nil {
		return err
	}
	l.syncNanos.Add(uint64(time.Since(start)))
	l.fsyncs.Add(1)
	l.frames.Add(1)
	l.bytes.Add(uint64(len(frame)))
	return nil
}

// write appends the frame built in l.buf to the last segment (a new one if that is full),
// syncs it and applies it. Caller holds writeMu.
func (l *Log) write() error {
	if l.failed != nil {
		return l.failed
	}
	if l.closed {
		return ErrClosed
	}
	if l.buf.empty() {
		return nil
	}
	if l.segs[len(l.segs)-1].size >= l.opts.SegmentBytes {
		frame := slices.Clone(l.buf.b) // rotate reuses the buffer for the checkpoint
		if err := l.rotate(); err != nil {
			return l.fail(err)
		}
		l.buf.b = frame
	}
	if err := l.appendFrame(l.buf.frame()); err != nil {
		return l.fail(err)
	}
	return nil
}

// appendFrame writes frame at the end of the last segment, syncs it, applies it and deletes
// the segments that died. Caller holds writeMu; a failure must be made sticky (fail).
func (l *Log) appendFrame(frame []byte) error {
	seg := l.segs[len(l.segs)-1]
	off := seg.size
	if err := l.writeFrame(seg, frame); err != nil {
		return err
	}
	seg.size += int64(len(frame))
	l.mu.Lock()
	err := l.apply(seg, off, frame[frameHeader:])
	l.mu.Unlock()
	if err != nil {
		return err // our own bytes: a bug, stop writing
	}
	l.collect()
	return nil
}

// fail makes err sticky: after a failed write or sync the segment may end in a partial
// frame, and a frame appended after it would be lost at the next Open.
func (l *Log) fail(err error) error {
	l.failed = fmt.Errorf("raftlog: %s: write failed, the log takes no more writes until reopened: %w", l.dir, err)
	return l.failed
}

// collect deletes the dead segments at the front (doc.go, invariant 4), in order, syncing
// the directory after each. Caller holds writeMu; readers are held up only while the list
// changes.
func (l *Log) collect() {
	for {
		l.mu.RLock()
		dead := len(l.segs) > 1 && l.segs[0].live == 0
		l.mu.RUnlock()
		if !dead {
			return
		}
		// Only writers change the list, and the caller is the writer: the front segment is
		// still the dead one. A failed removal keeps it in the list (it is tried again after
		// the next write), so no later segment goes before it: the files on disk never have
		// a gap (Open refuses one), and replaying a dead segment changes nothing.
		seg := l.segs[0]
		if err := os.Remove(filepath.Join(l.dir, segmentName(seg.seq))); err != nil && !os.IsNotExist(err) {
			return
		}
		l.mu.Lock()
		l.segs = l.segs[1:]
		l.mu.Unlock()
		seg.f.Close()
		if err := syncDir(l.dir); err != nil {
			return
		}
	}
}

func (l *Log) segment(seq uint64) *segment { return l.segs[seq-l.segs[0].seq] }

// Name implements raftio.ILogDB.
func (l *Log) Name() string { return Name }

// BinaryFormat implements raftio.ILogDB.
func (l *Log) BinaryFormat() uint32 { return raftio.PlainLogDBBinVersion }

// Close closes the files. Calls after Close return ErrClosed.
func (l *Log) Close() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.closeFiles()
}

func (l *Log) closeFiles() error {
	var err error
	for _, s := range l.segs {
		err = errors.Join(err, s.f.Close())
	}
	return err
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	s := Stats{Fsyncs: l.fsyncs.Load(), SyncTime: time.Duration(l.syncNanos.Load()), Frames: l.frames.Load(), Bytes: l.bytes.Load(), Moved: l.moved.Load()}
	l.mu.RLock()
	defer l.mu.RUnlock()
	s.Segments = len(l.segs)
	for _, n := range l.nodes {
		s.Entries += len(n.locs)
	}
	return s
}

// ListNodeInfo implements raftio.ILogDB: the replicas with bootstrap info.
func (l *Log) ListNodeInfo() ([]raftio.NodeInfo, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	var out []raftio.NodeInfo
	for k, n := range l.nodes {
		if n.hasBootstrap {
			out = append(out, raftio.GetNodeInfo(k.shard, k.replica))
		}
	}
	slices.SortFunc(out, func(a, b raftio.NodeInfo) int {
		if a.ShardID != b.ShardID {
			return cmp.Compare(a.ShardID, b.ShardID)
		}
		return cmp.Compare(a.ReplicaID, b.ReplicaID)
	})
	return out, nil
}

// SaveBootstrapInfo implements raftio.ILogDB.
func (l *Log) SaveBootstrapInfo(shardID, replicaID uint64, bs pb.Bootstrap) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	l.buf.bootstrap(shardID, replicaID, &bs)
	return l.write()
}

// GetBootstrapInfo implements raftio.ILogDB.
func (l *Log) GetBootstrapInfo(shardID, replicaID uint64) (pb.Bootstrap, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return pb.Bootstrap{}, ErrClosed
	}
	n := l.nodes[nodeKey{shardID, replicaID}]
	if n == nil || !n.hasBootstrap {
		return pb.Bootstrap{}, raftio.ErrNoBootstrapInfo
	}
	return n.bootstrap, nil
}

// SaveRaftState implements raftio.ILogDB: every update's state, received snapshot and
// entries in one frame, one write and one fdatasync. A round too large for one frame (more
// than 1 GiB: many groups catching up at once) is split between updates; each replica's
// update stays in one frame, which is all Raft needs.
func (l *Log) SaveRaftState(updates []pb.Update, _ uint64) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	for i := range updates {
		ud := &updates[i]
		mark := len(l.buf.b)
		n := l.nodes[nodeKey{ud.ShardID, ud.ReplicaID}] // read under writeMu (see Log)
		if !pb.IsEmptyState(ud.State) && (n == nil || !n.hasState || !pb.IsStateEqual(n.state, ud.State)) {
			l.buf.state(ud.ShardID, ud.ReplicaID, &ud.State)
		}
		if !pb.IsEmptySnapshot(ud.Snapshot) && (n == nil || ud.Snapshot.Index > n.snapshot.Index) {
			l.buf.snapshot(opInstall, ud.ShardID, ud.ReplicaID, &ud.Snapshot)
		}
		if len(ud.EntriesToSave) > 0 {
			if err := l.buf.entries(ud.ShardID, ud.ReplicaID, ud.EntriesToSave); err != nil {
				return err
			}
		}
		if len(l.buf.b)-frameHeader > maxFrame {
			update := slices.Clone(l.buf.b[mark:])
			if len(update) > maxFrame {
				return fmt.Errorf("raftlog: shard %d replica %d: an update of %d bytes (at most %d in a frame)", ud.ShardID, ud.ReplicaID, len(update), maxFrame)
			}
			l.buf.b = l.buf.b[:mark]
			if err := l.write(); err != nil {
				return err
			}
			l.buf.reset()
			l.buf.b = append(l.buf.b, update...)
		}
	}
	return l.write()
}

// SaveSnapshots implements raftio.ILogDB: snapshots taken, metadata only.
func (l *Log) SaveSnapshots(updates []pb.Update) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	for i := range updates {
		ud := &updates[i]
		n := l.nodes[nodeKey{ud.ShardID, ud.ReplicaID}]
		if !pb.IsEmptySnapshot(ud.Snapshot) && (n == nil || ud.Snapshot.Index > n.snapshot.Index) {
			l.buf.snapshot(opSnapshot, ud.ShardID, ud.ReplicaID, &ud.Snapshot)
		}
	}
	return l.write()
}

// GetSnapshot implements raftio.ILogDB: the latest snapshot saved, or an empty one.
func (l *Log) GetSnapshot(shardID, replicaID uint64) (pb.Snapshot, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return pb.Snapshot{}, ErrClosed
	}
	if n := l.nodes[nodeKey{shardID, replicaID}]; n != nil {
		return n.snapshot, nil
	}
	return pb.Snapshot{}, nil
}

// ReadRaftState implements raftio.ILogDB, as dragonboat's own LogDB answers it: the entries
// from the first retained one at or after snapshotIndex to the last.
func (l *Log) ReadRaftState(shardID, replicaID, snapshotIndex uint64) (raftio.RaftState, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return raftio.RaftState{}, ErrClosed
	}
	n := l.nodes[nodeKey{shardID, replicaID}]
	if n == nil || !n.hasState {
		return raftio.RaftState{}, raftio.ErrNoSavedLog
	}
	rs := raftio.RaftState{State: n.state, FirstIndex: snapshotIndex}
	if !n.hasLog || snapshotIndex == n.maxIndex {
		return rs, nil
	}
	first, end := max(n.base, snapshotIndex), n.base+uint64(len(n.locs)) // end: exclusive
	if first > n.maxIndex || end <= n.maxIndex {
		return raftio.RaftState{}, fmt.Errorf("%w: shard %d replica %d: entries [%d, %d) retained, the log ends at %d, snapshot at %d",
			ErrCorrupt, shardID, replicaID, n.base, end, n.maxIndex, snapshotIndex)
	}
	rs.FirstIndex, rs.EntryCount = first, n.maxIndex-first+1
	return rs, nil
}

// IterateEntries implements raftio.ILogDB: the entries from low on, below high and the end of
// the log, until their size passes maxSize (the entry that passes it included).
func (l *Log) IterateEntries(ents []pb.Entry, size uint64, shardID, replicaID, low, high, maxSize uint64) ([]pb.Entry, uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, 0, ErrClosed
	}
	n := l.nodes[nodeKey{shardID, replicaID}]
	if n == nil || !n.hasLog || low < n.base {
		return ents, size, nil
	}
	end := min(high, n.maxIndex+1, n.base+uint64(len(n.locs)))
	var buf []byte
	for idx := low; idx < end; {
		// One pread for a run of entries close together in one segment (a replica's entries
		// of one frame lie back to back): a catch-up read of thousands of entries holds the
		// read lock, which the writer needs, for a few syscalls instead of one per entry.
		first := n.locs[idx-n.base]
		last, spanEnd := idx, uint64(first.off)+uint64(first.n)
		for last+1 < end {
			next := n.locs[last+1-n.base]
			start, stop := uint64(next.off), uint64(next.off)+uint64(next.n)
			if next.seg != first.seg || start < spanEnd || start-spanEnd > maxReadGap || stop-uint64(first.off) > maxReadSpan {
				break
			}
			last, spanEnd = last+1, stop
		}
		span := int(spanEnd - uint64(first.off))
		if cap(buf) < span {
			buf = make([]byte, span)
		}
		buf = buf[:span]
		if _, err := l.segment(first.seg).f.ReadAt(buf, int64(first.off)); err != nil {
			return nil, 0, fmt.Errorf("raftlog: shard %d replica %d entries %d-%d: %w", shardID, replicaID, idx, last, err)
		}
		for ; idx <= last; idx++ {
			lc := n.locs[idx-n.base]
			var e pb.Entry // Unmarshal copies what it keeps: buf is reused
			at := lc.off - first.off
			if err := unmarshalEntry(&e, buf[at:at+lc.n]); err != nil || e.Index != idx {
				return nil, 0, fmt.Errorf("%w: shard %d replica %d: entry %d in segment %016x at %d (read index %d): %v",
					ErrCorrupt, shardID, replicaID, idx, lc.seg, lc.off, e.Index, err)
			}
			ents = append(ents, e)
			size += uint64(e.SizeUpperLimit())
			if size > maxSize {
				return ents, size, nil
			}
		}
	}
	return ents, size, nil
}

// An IterateEntries read takes entries that lie in one segment in one pread, as long as the
// bytes between two of them stay under maxReadGap and the read under maxReadSpan (a larger
// entry is read alone).
const (
	maxReadGap  = 64 << 10
	maxReadSpan = 1 << 20
)

// unmarshalEntry decodes an entry; dragonboat's generated decoder can panic on bad bytes.
func unmarshalEntry(e *pb.Entry, b []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("undecodable entry: %v", r)
		}
	}()
	return e.Unmarshal(b)
}

// RemoveEntriesTo implements raftio.ILogDB.
func (l *Log) RemoveEntriesTo(shardID, replicaID, index uint64) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	l.buf.removeTo(shardID, replicaID, index)
	return l.write()
}

// CompactEntriesTo implements raftio.ILogDB: nothing to do, a segment's space comes back when
// its last retained entry is removed.
func (l *Log) CompactEntriesTo(uint64, uint64, uint64) (<-chan struct{}, error) {
	done := make(chan struct{})
	close(done)
	return done, nil
}

// RemoveNodeData implements raftio.ILogDB.
func (l *Log) RemoveNodeData(shardID, replicaID uint64) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	l.buf.removeNode(shardID, replicaID)
	return l.write()
}

// ImportSnapshot implements raftio.ILogDB: the replica restarts from ss, as a joiner.
func (l *Log) ImportSnapshot(ss pb.Snapshot, replicaID uint64) error {
	if ss.Type == pb.UnknownStateMachine {
		return fmt.Errorf("raftlog: import of a snapshot of an unknown state machine type")
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.buf.reset()
	l.buf.removeNode(ss.ShardID, replicaID)
	l.buf.bootstrap(ss.ShardID, replicaID, &pb.Bootstrap{Join: true, Type: ss.Type})
	l.buf.state(ss.ShardID, replicaID, &pb.State{Term: ss.Term, Commit: ss.Index})
	l.buf.snapshot(opInstall, ss.ShardID, replicaID, &ss)
	return l.write()
}

// syncDir makes the directory's entries (a segment created or removed) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
