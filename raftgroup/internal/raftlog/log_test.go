package raftlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
	"github.com/stretchr/testify/require"
)

func entries(term, from, to uint64) []pb.Entry {
	var ents []pb.Entry
	for i := from; i <= to; i++ {
		ents = append(ents, pb.Entry{Index: i, Term: term, Cmd: fmt.Appendf(nil, "cmd %d/%d", term, i)})
	}
	return ents
}

func open(t *testing.T, dir string, segBytes int64) *Log {
	t.Helper()
	l, err := Open(dir, Options{SegmentBytes: segBytes})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func iterate(t *testing.T, l *Log, shard, replica, low, high uint64) []pb.Entry {
	t.Helper()
	ents, _, err := l.IterateEntries(nil, 0, shard, replica, low, high, 1<<40)
	require.NoError(t, err)
	return ents
}

func TestSaveAndReopen(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 0)
	_, err := l.ReadRaftState(1, 1, 0)
	require.ErrorIs(t, err, raftio.ErrNoSavedLog)
	_, err = l.GetBootstrapInfo(1, 1)
	require.ErrorIs(t, err, raftio.ErrNoBootstrapInfo)

	require.NoError(t, l.SaveBootstrapInfo(1, 1, pb.Bootstrap{Addresses: map[uint64]string{1: "a:1"}, Type: pb.OnDiskStateMachine}))
	require.NoError(t, l.SaveBootstrapInfo(2, 3, pb.Bootstrap{Join: true, Type: pb.OnDiskStateMachine}))
	require.NoError(t, l.SaveRaftState([]pb.Update{
		{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 2, Vote: 1, Commit: 5}, EntriesToSave: entries(2, 1, 10)},
		{ShardID: 2, ReplicaID: 3, State: pb.State{Term: 1, Commit: 1}, EntriesToSave: entries(1, 1, 3)},
	}, 1))
	// A follower's log is overwritten from 6 on by a new leader's entries.
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 3, Vote: 2, Commit: 6}, EntriesToSave: entries(3, 6, 7)}}, 1))
	require.Equal(t, uint64(4), l.Stats().Fsyncs-1, "one fsync per call, the segment's checkpoint first")

	check := func(l *Log) {
		t.Helper()
		rs, err := l.ReadRaftState(1, 1, 0)
		require.NoError(t, err)
		require.Equal(t, raftio.RaftState{State: pb.State{Term: 3, Vote: 2, Commit: 6}, FirstIndex: 1, EntryCount: 7}, rs)
		want := append(entries(2, 1, 5), entries(3, 6, 7)...)
		require.Equal(t, want, iterate(t, l, 1, 1, 1, 100))
		require.Equal(t, want[2:4], iterate(t, l, 1, 1, 3, 5))
		require.Equal(t, entries(1, 1, 3), iterate(t, l, 2, 3, 1, 4))
		// maxSize: the entry that passes it is included.
		ents, _, err := l.IterateEntries(nil, 0, 1, 1, 1, 100, 1)
		require.NoError(t, err)
		require.Len(t, ents, 1)
		nodes, err := l.ListNodeInfo()
		require.NoError(t, err)
		require.Equal(t, []raftio.NodeInfo{{ShardID: 1, ReplicaID: 1}, {ShardID: 2, ReplicaID: 3}}, nodes)
		bs, err := l.GetBootstrapInfo(2, 3)
		require.NoError(t, err)
		require.True(t, bs.Join)
	}
	check(l)
	require.NoError(t, l.Close())
	_, err = l.ReadRaftState(1, 1, 0)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(3, 8, 8)}}, 1), ErrClosed)
	check(open(t, dir, 0))
}

func TestSnapshotsAndRemoval(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 0)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1, Commit: 10}, EntriesToSave: entries(1, 1, 10)}}, 1))
	// A snapshot taken at 8 changes nothing in the log; the entries up to 5 are removed.
	require.NoError(t, l.SaveSnapshots([]pb.Update{{ShardID: 1, ReplicaID: 1, Snapshot: pb.Snapshot{Index: 8, Term: 1}}}))
	require.NoError(t, l.RemoveEntriesTo(1, 1, 5))
	rs, err := l.ReadRaftState(1, 1, 8)
	require.NoError(t, err)
	require.Equal(t, uint64(8), rs.FirstIndex)
	require.Equal(t, uint64(3), rs.EntryCount)
	require.Empty(t, iterate(t, l, 1, 1, 3, 10), "removed")
	require.Equal(t, entries(1, 6, 10), iterate(t, l, 1, 1, 6, 11))
	// An older snapshot is ignored.
	require.NoError(t, l.SaveSnapshots([]pb.Update{{ShardID: 1, ReplicaID: 1, Snapshot: pb.Snapshot{Index: 7, Term: 1}}}))
	ss, err := l.GetSnapshot(1, 1)
	require.NoError(t, err)
	require.Equal(t, uint64(8), ss.Index)

	// A snapshot received from the leader: the log ends at its index, then goes on past it.
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 4, Commit: 20}, Snapshot: pb.Snapshot{Index: 20, Term: 4}}}, 1))
	rs, err = l.ReadRaftState(1, 1, 20)
	require.NoError(t, err)
	require.Equal(t, raftio.RaftState{State: pb.State{Term: 4, Commit: 20}, FirstIndex: 20}, rs)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(4, 21, 23)}}, 1))
	for _, reopened := range []bool{false, true} {
		if reopened {
			l = reopen(t, l, dir)
		}
		rs, err = l.ReadRaftState(1, 1, 20)
		require.NoError(t, err)
		require.Equal(t, uint64(21), rs.FirstIndex)
		require.Equal(t, uint64(3), rs.EntryCount)
		require.Equal(t, entries(4, 21, 23), iterate(t, l, 1, 1, 21, 30))
	}
}

func reopen(t *testing.T, l *Log, dir string) *Log {
	t.Helper()
	require.NoError(t, l.Close())
	return open(t, dir, l.opts.SegmentBytes)
}

func TestRemoveNodeAndImport(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 0)
	require.NoError(t, l.SaveBootstrapInfo(5, 1, pb.Bootstrap{Type: pb.OnDiskStateMachine}))
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 5, ReplicaID: 1, State: pb.State{Term: 1, Commit: 3}, EntriesToSave: entries(1, 1, 3)}}, 1))
	require.NoError(t, l.RemoveNodeData(5, 1))
	_, err := l.ReadRaftState(5, 1, 0)
	require.ErrorIs(t, err, raftio.ErrNoSavedLog)
	nodes, err := l.ListNodeInfo()
	require.NoError(t, err)
	require.Empty(t, nodes)

	require.Error(t, l.ImportSnapshot(pb.Snapshot{ShardID: 5, Index: 9}, 2), "unknown state machine type")
	require.NoError(t, l.ImportSnapshot(pb.Snapshot{ShardID: 5, Index: 9, Term: 3, Type: pb.OnDiskStateMachine}, 2))
	for _, reopened := range []bool{false, true} {
		if reopened {
			l = reopen(t, l, dir)
		}
		bs, err := l.GetBootstrapInfo(5, 2)
		require.NoError(t, err)
		require.Equal(t, pb.Bootstrap{Join: true, Type: pb.OnDiskStateMachine}, bs)
		rs, err := l.ReadRaftState(5, 2, 9)
		require.NoError(t, err)
		require.Equal(t, raftio.RaftState{State: pb.State{Term: 3, Commit: 9}, FirstIndex: 9}, rs)
		_, err = l.ReadRaftState(5, 1, 0)
		require.ErrorIs(t, err, raftio.ErrNoSavedLog)
	}
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.log"))
	require.NoError(t, err)
	return m
}

// TestSegmentsCollected: a segment goes once none of its entries is retained, and only then;
// an idle replica's entries keep theirs, readable across reopening.
func TestSegmentsCollected(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 1<<10)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 2, ReplicaID: 1, State: pb.State{Term: 1}, EntriesToSave: entries(1, 1, 2)}}, 1))
	var last uint64
	for round := 0; round < 200; round++ {
		require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1, Commit: last}, EntriesToSave: entries(1, last+1, last+5)}}, 1))
		last += 5
	}
	require.Greater(t, len(segmentFiles(t, dir)), 20)
	// Shard 1 drops all but its last 10 entries: every segment between the idle shard 2's
	// first one and the last few goes... but shard 2 pins the first.
	require.NoError(t, l.RemoveEntriesTo(1, 1, last-10))
	files := segmentFiles(t, dir)
	require.Equal(t, filepath.Base(files[0]), segmentName(1), "shard 2's entries are in the first segment")
	require.Greater(t, len(files), 20, "segments go from the front only")
	require.NoError(t, l.SaveSnapshots([]pb.Update{{ShardID: 2, ReplicaID: 1, Snapshot: pb.Snapshot{Index: 2, Term: 1}}}))
	require.NoError(t, l.RemoveEntriesTo(2, 1, 2))
	files = segmentFiles(t, dir)
	require.LessOrEqual(t, len(files), 3, "%v", files)
	require.Equal(t, l.Stats().Segments, len(files))
	require.Equal(t, 10, l.Stats().Entries)
	l = reopen(t, l, dir)
	require.Equal(t, entries(1, last-9, last), iterate(t, l, 1, 1, last-9, last+1))
	rs, err := l.ReadRaftState(2, 1, 2)
	require.NoError(t, err)
	require.Equal(t, raftio.RaftState{State: pb.State{Term: 1}, FirstIndex: 2}, rs)
}

// TestTornTail: a frame cut short by a crash at the end of the last segment is dropped and
// the log goes on; damage in an earlier segment is reported, not skipped.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 0)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1}, EntriesToSave: entries(1, 1, 3)}}, 1))
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(1, 4, 6)}}, 1))
	require.NoError(t, l.Close())
	files := segmentFiles(t, dir)
	lastFile := files[len(files)-1]
	st, err := os.Stat(lastFile)
	require.NoError(t, err)
	want := entries(1, 1, 3)                // what the log holds without its last frame
	for _, cut := range []int64{1, 9, 30} { // inside the last frame's header, body, end
		require.NoError(t, os.Truncate(lastFile, st.Size()-cut))
		l := open(t, dir, 0)
		require.Equal(t, want, iterate(t, l, 1, 1, 1, 10), "cut %d", cut)
		// It takes writes again, and they survive the next open.
		require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(2, 4, 4)}}, 1))
		want = append(entries(1, 1, 3), entries(2, 4, 4)...)
		require.NoError(t, l.Close())
		l = open(t, dir, 0)
		require.Equal(t, want, iterate(t, l, 1, 1, 1, 10))
		require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(3, 5, 6)}}, 1)) // the next one cut
		require.NoError(t, l.Close())
		files = segmentFiles(t, dir)
		lastFile = files[len(files)-1]
		st, err = os.Stat(lastFile)
		require.NoError(t, err)
	}
	// A crash while a new segment's checkpoint was written: the segment holds part of a
	// header. It is cut to nothing, stays as an empty segment, and the log goes on.
	want = append(want, entries(3, 5, 6)...) // the last round's write, not cut
	seqs, err := listSegments(dir)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, segmentName(seqs[len(seqs)-1]+1)), []byte{1, 2, 3, 4, 5}, 0o644))
	for range 2 {
		l := open(t, dir, 0)
		require.Equal(t, want, iterate(t, l, 1, 1, 1, 10))
		require.NoError(t, l.Close())
	}

	// Damage a byte of an entry in a segment that is not the last: Open fails, naming it.
	b, err := os.ReadFile(files[0])
	require.NoError(t, err)
	i := bytes.Index(b, []byte("cmd 1/2"))
	require.Positive(t, i)
	b[i] ^= 0xff
	require.NoError(t, os.WriteFile(files[0], b, 0o644))
	_, err = Open(dir, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), filepath.Base(files[0]))
}

// TestModel drives the log with random Raft-like writes, reopening it now and then, and
// compares every read with a model of dragonboat's own LogDB (entries by index, a max index).
func TestModel(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, 1500) })
	}
}

type modelNode struct {
	bootstrap *pb.Bootstrap
	state     *pb.State
	snapshot  pb.Snapshot
	maxIndex  *uint64
	ents      map[uint64]pb.Entry
	floor     uint64 // reads start above it (dragonboat never reads at or below a snapshot)
}

// dropAfter forgets entries past a new end of the log. dragonboat's LogDB keeps their keys,
// but reads stop at the max index and nothing reads them again: the model forgets them so
// that ReadRaftState's first index (the first key at or after the snapshot) compares.
func (m *modelNode) dropAfter(last uint64) {
	for i := range m.ents {
		if i > last {
			delete(m.ents, i)
		}
	}
}

func (m *modelNode) last() uint64 {
	if m.maxIndex == nil {
		return 0
	}
	return *m.maxIndex
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	segBytes := int64(1 << (10 + rng.IntN(4)))
	l := open(t, dir, segBytes)
	model := map[nodeKey]*modelNode{}
	var moved uint64
	keys := []nodeKey{{1, 1}, {1, 2}, {7, 3}} // the last one quiet: its windows are moved
	term := uint64(1)
	for step := 0; step < steps; step++ {
		k := keys[min(rng.IntN(21)/10, 2)]
		m := model[k]
		if m == nil {
			m = &modelNode{ents: map[uint64]pb.Entry{}}
			model[k] = m
		}
		r := rng.IntN(100)
		switch {
		case r < 3:
			bs := pb.Bootstrap{Join: rng.IntN(2) == 0, Type: pb.OnDiskStateMachine}
			require.NoError(t, l.SaveBootstrapInfo(k.shard, k.replica, bs))
			m.bootstrap = &bs
		case r < 55: // append, maybe overwriting a suffix, with the state
			from := m.last() + 1
			if r < 15 && m.last() > m.floor+1 {
				from = m.floor + 1 + rng.Uint64N(m.last()-m.floor)
				term++
			}
			ents := entries(term, from, from+rng.Uint64N(6))
			for i := range ents {
				ents[i].Cmd = append(ents[i].Cmd, bytes.Repeat([]byte{byte(step)}, rng.IntN(300))...)
			}
			st := pb.State{Term: term, Commit: from - 1}
			require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: k.shard, ReplicaID: k.replica, State: st, EntriesToSave: ents}}, 1))
			for _, e := range ents {
				m.ents[e.Index] = e
			}
			last := ents[len(ents)-1].Index
			m.maxIndex, m.state = &last, &st
			m.dropAfter(last)
		case r < 62: // a snapshot taken; entries up to it minus an overhead removed
			if m.last() <= m.snapshot.Index {
				continue
			}
			ss := pb.Snapshot{Index: m.snapshot.Index + 1 + rng.Uint64N(m.last()-m.snapshot.Index), Term: term}
			require.NoError(t, l.SaveSnapshots([]pb.Update{{ShardID: k.shard, ReplicaID: k.replica, Snapshot: ss}}))
			m.snapshot = ss
			m.floor = max(m.floor, ss.Index)
			to := ss.Index - min(ss.Index, rng.Uint64N(5))
			require.NoError(t, l.RemoveEntriesTo(k.shard, k.replica, to))
			for i := range m.ents {
				if i <= to {
					delete(m.ents, i)
				}
			}
		case r < 66: // a snapshot received
			if m.state == nil {
				continue
			}
			ss := pb.Snapshot{Index: max(m.snapshot.Index, m.last()) + 1 + rng.Uint64N(20), Term: term}
			st := pb.State{Term: term, Commit: ss.Index}
			require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: k.shard, ReplicaID: k.replica, State: st, Snapshot: ss}}, 1))
			m.snapshot, m.state, m.maxIndex, m.floor = ss, &st, &ss.Index, ss.Index
			m.dropAfter(ss.Index)
		case r < 68:
			require.NoError(t, l.RemoveNodeData(k.shard, k.replica))
			delete(model, k)
		case r < 72:
			moved += l.Stats().Moved
			l = reopen(t, l, dir)
		default:
			checkModel(t, l, rng, model)
		}
	}
	moved += l.Stats().Moved
	l = reopen(t, l, dir)
	checkModel(t, l, rng, model)
	t.Logf("segment bytes %d, %d bytes moved", segBytes, moved)
}

func checkModel(t *testing.T, l *Log, rng *rand.Rand, model map[nodeKey]*modelNode) {
	t.Helper()
	for k, m := range model {
		bs, err := l.GetBootstrapInfo(k.shard, k.replica)
		if m.bootstrap == nil {
			require.ErrorIs(t, err, raftio.ErrNoBootstrapInfo)
		} else {
			require.NoError(t, err)
			require.Equal(t, *m.bootstrap, bs)
		}
		ss, err := l.GetSnapshot(k.shard, k.replica)
		require.NoError(t, err)
		require.Equal(t, m.snapshot, ss)
		rs, err := l.ReadRaftState(k.shard, k.replica, m.snapshot.Index)
		if m.state == nil {
			require.ErrorIs(t, err, raftio.ErrNoSavedLog)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, *m.state, rs.State)
		first, count := m.snapshot.Index, uint64(0)
		if m.maxIndex != nil && *m.maxIndex != m.snapshot.Index {
			first = m.snapshot.Index
			for _, ok := m.ents[first]; !ok; _, ok = m.ents[first] {
				first++
			}
			count = *m.maxIndex - first + 1
		}
		require.Equal(t, first, rs.FirstIndex, "%v", k)
		require.Equal(t, count, rs.EntryCount, "%v", k)
		if m.last() <= m.floor {
			continue
		}
		low := m.floor + 1 + rng.Uint64N(m.last()-m.floor)
		high := low + rng.Uint64N(m.last()-low+3)
		maxSize := uint64(1 << 40)
		if rng.IntN(3) == 0 {
			maxSize = rng.Uint64N(2000)
		}
		var want []pb.Entry
		size := uint64(0)
		for i := low; i < min(high, m.last()+1); i++ {
			e, ok := m.ents[i]
			if !ok {
				break
			}
			want = append(want, e)
			if size += uint64(e.SizeUpperLimit()); size > maxSize {
				break
			}
		}
		got, gotSize, err := l.IterateEntries(nil, 0, k.shard, k.replica, low, high, maxSize)
		require.NoError(t, err)
		require.Equal(t, want, got, "%v [%d, %d) max %d", k, low, high, maxSize)
		require.Equal(t, size, gotSize)
	}
}

// FuzzDecode: no payload makes the decoder or the applier panic, and what the encoder
// writes decodes to the same ops.
func FuzzDecode(f *testing.F) {
	var p payload
	p.reset()
	p.bootstrap(1, 2, &pb.Bootstrap{Join: true})
	p.state(1, 2, &pb.State{Term: 3, Commit: 4})
	p.entries(1, 2, entries(3, 5, 7))
	p.snapshot(opInstall, 1, 2, &pb.Snapshot{Index: 9, Term: 3})
	p.removeTo(1, 2, 6)
	p.checkpoint(1, 2, &node{maxIndex: 9, base: 7, hasLog: true})
	p.removeNode(1, 2)
	f.Add(p.b[frameHeader:])
	f.Add([]byte{opEntries, 1, 1, 1, 2, 3, 'a', 'b', 'c'})
	f.Add(binary.AppendUvarint([]byte{opRemoveTo, 1, 1}, ^uint64(0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		l := &Log{nodes: map[nodeKey]*node{}}
		seg := &segment{seq: 1}
		l.segs = []*segment{seg}
		_, err := decode(b, applier{l: l, seg: seg, base: frameHeader}, nil)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error without ErrCorrupt: %v", err)
		}
		live := 0
		for _, n := range l.nodes {
			live += len(n.locs)
			for _, lc := range n.locs {
				if int(lc.off)+int(lc.n) > frameHeader+len(b) {
					t.Fatalf("entry location %+v past the payload (%d bytes)", lc, len(b))
				}
			}
		}
		if live != seg.live {
			t.Fatalf("live count %d, locations %d", seg.live, live)
		}
		// Framing: a frame built around b checks; any change to it does not.
		var q payload
		q.reset()
		q.b = append(q.b, b...)
		frame := q.frame()
		if n, ok := checkFrame(frame); !ok || n != len(b) {
			t.Fatalf("own frame does not check")
		}
		if len(frame) > frameHeader {
			frame[len(frame)-1] ^= 1
			if _, ok := checkFrame(frame); ok {
				t.Fatalf("damaged frame checks")
			}
		}
	})
}

// TestIdleReplicaMoved (from a review): segments are deleted only from the front, so the
// oldest retained entry of any replica keeps every later segment. dragonboat removes entries
// only after a snapshot, taken every SnapshotEntries applied entries, so a group that goes
// quiet (here: one entry, e.g. a leader's no-op) keeps its last entries for ever; without
// relocation (doc.go, invariant 5) the log grew at the busy groups' full write rate: 43
// segments of 4 KiB for 11 retained entries here. Its window is moved, and read back after
// reopening.
func TestIdleReplicaMoved(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 4<<10)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 2, ReplicaID: 1, State: pb.State{Term: 1, Commit: 1}, EntriesToSave: entries(1, 1, 1)}}, 1))
	var last uint64
	for round := 0; round < 300; round++ {
		ents := entries(1, last+1, last+5)
		for i := range ents {
			ents[i].Cmd = append(ents[i].Cmd, bytes.Repeat([]byte{'x'}, 100)...)
		}
		require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1, Commit: last}, EntriesToSave: ents}}, 1))
		last += 5
		if round%10 == 9 { // a snapshot every 50 entries, 10 entries of overhead kept
			require.NoError(t, l.SaveSnapshots([]pb.Update{{ShardID: 1, ReplicaID: 1, Snapshot: pb.Snapshot{Index: last, Term: 1}}}))
			require.NoError(t, l.RemoveEntriesTo(1, 1, last-10))
		}
	}
	st := l.Stats()
	require.LessOrEqual(t, st.Entries, 61)
	require.LessOrEqual(t, len(segmentFiles(t, dir)), 8,
		"%d entries retained, %d segments on disk: the idle shard's one entry pins all of them", st.Entries, st.Segments)
	l = reopen(t, l, dir)
	require.Equal(t, entries(1, 1, 1), iterate(t, l, 2, 1, 1, 10), "the idle replica's entry, moved")
	rs, err := l.ReadRaftState(2, 1, 0)
	require.NoError(t, err)
	require.Equal(t, raftio.RaftState{State: pb.State{Term: 1, Commit: 1}, FirstIndex: 1, EntryCount: 1}, rs)
	require.Len(t, iterate(t, l, 1, 1, last-9, last+1), 10)
}

// TestDamagedFrameBeforeLast (from a review): only the last frame of the last segment can be
// torn (each frame is synced before the next is written, and Open starts a new segment), so a
// bad frame followed by a good one is damage. The first version cut the segment there as if
// torn, and Open dropped every acknowledged frame after it.
func TestDamagedFrameBeforeLast(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 0)
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1}, EntriesToSave: entries(1, 1, 3)}}, 1))
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, EntriesToSave: entries(1, 4, 6)}}, 1))
	require.NoError(t, l.SaveRaftState([]pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1, Commit: 9}, EntriesToSave: entries(1, 7, 9)}}, 1)) // acknowledged
	require.NoError(t, l.Close())
	files := segmentFiles(t, dir)
	lastFile := files[len(files)-1]
	b, err := os.ReadFile(lastFile)
	require.NoError(t, err)
	i := bytes.Index(b, []byte("cmd 1/5")) // inside the middle frame
	require.Positive(t, i)
	b[i] ^= 0xff
	require.NoError(t, os.WriteFile(lastFile, b, 0o644))

	_, err = Open(dir, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), filepath.Base(lastFile))
}

// BenchmarkOpen: Open replays every segment (reads and checks every frame), so its time grows
// with the retained log. go test ./raftgroup/internal/raftlog -run '^$' -bench Open -benchtime 5x
func BenchmarkOpen(b *testing.B) {
	for _, mib := range []int{64, 512} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			dir := b.TempDir()
			l, err := Open(dir, Options{})
			require.NoError(b, err)
			cmd := bytes.Repeat([]byte{'x'}, 6<<10)
			next := map[uint64]uint64{}
			for written := 0; written < mib<<20; {
				var ups []pb.Update
				for shard := uint64(1); shard <= 16; shard++ {
					first := next[shard] + 1
					ents := entries(1, first, first+3)
					for i := range ents {
						ents[i].Cmd = cmd
					}
					next[shard] = first + 3
					ups = append(ups, pb.Update{ShardID: shard, ReplicaID: 1, State: pb.State{Term: 1, Commit: first}, EntriesToSave: ents})
					written += 4 * len(cmd)
				}
				require.NoError(b, l.SaveRaftState(ups, 1))
			}
			require.NoError(b, l.Close())
			b.SetBytes(int64(mib) << 20)
			b.ResetTimer()
			for b.Loop() {
				l, err := Open(dir, Options{})
				require.NoError(b, err)
				b.StopTimer()
				require.NoError(b, l.Close())
				b.StartTimer()
			}
		})
	}
}

// BenchmarkIterateEntries reads one replica's 10,000 entries back, as a catch-up of a lagging
// follower does: 16 groups wrote 4 entries of 6 KiB each per frame, so one replica's entries
// lie in runs of 4 between the other groups'.
func BenchmarkIterateEntries(b *testing.B) {
	l, err := Open(b.TempDir(), Options{})
	require.NoError(b, err)
	defer l.Close()
	cmd := bytes.Repeat([]byte{'x'}, 6<<10)
	const perShard = 10_000
	for first := uint64(1); first <= perShard; first += 4 {
		var ups []pb.Update
		for shard := uint64(1); shard <= 16; shard++ {
			ents := entries(1, first, first+3)
			for i := range ents {
				ents[i].Cmd = cmd
			}
			ups = append(ups, pb.Update{ShardID: shard, ReplicaID: 1, State: pb.State{Term: 1, Commit: first}, EntriesToSave: ents})
		}
		require.NoError(b, l.SaveRaftState(ups, 1))
	}
	b.SetBytes(perShard * int64(len(cmd)))
	for b.Loop() {
		ents, _, err := l.IterateEntries(nil, 0, 7, 1, 1, perShard+1, math.MaxUint64)
		require.NoError(b, err)
		require.Len(b, ents, perShard)
	}
}

// TestIterateEntriesRuns: IterateEntries reads runs of entries with one pread each; with
// entries of 1 B to 2 MiB, gaps over maxReadGap (another replica's entries in between), runs
// over maxReadSpan and segment ends, read from every starting index, every entry comes back
// whole and in order, and the size limit stops the read after the entry that passes it. (Where
// the runs are cut is not observed: a run cut too late is only a larger read.)
func TestIterateEntriesRuns(t *testing.T) {
	l := open(t, t.TempDir(), 1<<20) // segments of 1 MiB: the larger entries end them
	sizes := []int{10, 300 << 10, 5, 700 << 10, 1, 64 << 10, 2 << 20, 3, 3, 3}
	want := map[uint64][]byte{}
	for i, n := range sizes {
		idx := uint64(i + 1)
		cmd := bytes.Repeat([]byte{byte('a' + i)}, n)
		want[idx] = cmd
		ups := []pb.Update{{ShardID: 1, ReplicaID: 1, State: pb.State{Term: 1, Commit: idx},
			EntriesToSave: []pb.Entry{{Index: idx, Term: 1, Cmd: cmd}}}}
		if i%3 == 1 { // another replica's entries between this one's: a gap over maxReadGap
			ups = append(ups, pb.Update{ShardID: 2, ReplicaID: 1, State: pb.State{Term: 1, Commit: idx},
				EntriesToSave: []pb.Entry{{Index: idx, Term: 1, Cmd: make([]byte, maxReadGap+1)}}})
		}
		require.NoError(t, l.SaveRaftState(ups, 1))
	}
	check := func(ents []pb.Entry, from uint64) {
		t.Helper()
		for k, e := range ents {
			require.Equal(t, from+uint64(k), e.Index)
			require.True(t, bytes.Equal(want[e.Index], e.Cmd), "entry %d: %d bytes, want %d", e.Index, len(e.Cmd), len(want[e.Index]))
		}
	}
	for from := uint64(1); from <= uint64(len(sizes)); from++ {
		ents, _, err := l.IterateEntries(nil, 0, 1, 1, from, uint64(len(sizes))+1, math.MaxUint64)
		require.NoError(t, err)
		require.Len(t, ents, len(sizes)-int(from)+1, "from %d", from)
		check(ents, from)
	}
	// The size limit: the read stops after the entry that passes it (here the 700 KiB one).
	ents, size, err := l.IterateEntries(nil, 0, 1, 1, 1, uint64(len(sizes))+1, 400<<10)
	require.NoError(t, err)
	require.Len(t, ents, 4)
	require.Greater(t, size, uint64(400<<10))
	check(ents, 1)
}
