package shard

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// testReplica is a Replica on its own Pebble (in memory, or in a directory) that can be
// reopened.
type testReplica struct {
	fs  vfs.FS
	dir string
	db  *pebble.DB
	r   *Replica
}

func openTestReplica(t testing.TB, fs vfs.FS, dir string) (*testReplica, uint64) {
	t.Helper()
	tr := &testReplica{fs: fs, dir: dir}
	applied := tr.open(t)
	t.Cleanup(func() {
		tr.r.Close()
		tr.db.Close()
	})
	return tr, applied
}

func (tr *testReplica) open(t testing.TB) uint64 {
	t.Helper()
	db, err := pebble.Open(tr.dir, &pebble.Options{FS: tr.fs, Logger: quietLogger{}})
	require.NoError(t, err)
	r, applied, err := OpenReplica(ReplicaConfig{ID: 5, DB: db, Layout: testParams, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	tr.db, tr.r = db, r
	return applied
}

func (tr *testReplica) reopen(t testing.TB) uint64 {
	t.Helper()
	tr.r.Close()
	require.NoError(t, tr.db.Close())
	return tr.open(t)
}

func (tr *testReplica) contents(t testing.TB) ([]string, [32]byte) {
	return (&testCore{db: tr.db}).contents(t)
}

func storeEntry(index uint64, p ProposerID, seq, floor uint64, time uint64, topics ...string) Entry {
	cmd := &Command{Time: time}
	for i, tp := range topics {
		cmd.Messages = append(cmd.Messages, &message.Message{ClientID: "c", Topic: tp, Payload: []byte(fmt.Sprintf("%d/%d", seq, i))})
	}
	return Entry{Index: index, Proposer: p, Seq: seq, Floor: floor, Cmd: cmd}
}

// readAll returns every message of the replica in shard order, as "topic payload".
func readAll(t testing.TB, r *Replica) []string {
	t.Helper()
	var out []string
	for _, s := range r.Streams(topic.Split("#"), 0) {
		msgs, _, err := r.Read(stream.Iterator{Stream: s, Filter: "#"}, topic.Split("#"), 1<<20, nil)
		if !errors.Is(err, ErrEndOfStream) {
			require.NoError(t, err)
		}
		for _, m := range msgs {
			out = append(out, fmt.Sprintf("%d %s %s", m.Timestamp, m.Topic, m.Payload))
		}
	}
	return out
}

// TestReplicaDeterministic: three replicas fed the same entries in differently sized runs, one
// of them reopened along the way and one fed decoded copies of the commands (as they arrive
// through the Raft log), hold byte-identical Pebbles and give identical results.
func TestReplicaDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	specs := randomCommands(rng, 400)
	var p ProposerID
	p[0] = 1
	a, _ := openTestReplica(t, vfs.NewMem(), "")
	b, _ := openTestReplica(t, vfs.NewMem(), "")
	c, _ := openTestReplica(t, vfs.NewMem(), "")
	var results [3][]EntryResult
	entriesFor := func(from, to int, decoded bool) []Entry {
		var es []Entry
		for i := from; i < to; i++ {
			cmd := specs[i].build()
			if decoded {
				var err error
				cmd, err = DecodeCommand(cmd.AppendBinary(nil))
				require.NoError(t, err)
			}
			es = append(es, Entry{Index: uint64(10 + i), Proposer: p, Seq: uint64(i + 1), Floor: uint64(max(i-3, 0)), Cmd: cmd})
		}
		return es
	}
	apply := func(k int, tr *testReplica, from, to int, decoded bool) {
		es := entriesFor(from, to, decoded)
		require.NoError(t, tr.r.ApplyEntries(es))
		for _, e := range es {
			results[k] = append(results[k], e.Result)
		}
	}
	for i := 0; i < len(specs); i += 25 {
		apply(0, a, i, min(i+25, len(specs)), false)
	}
	for i := 0; i < len(specs); {
		n := 1 + rng.IntN(60)
		apply(1, b, i, min(i+n, len(specs)), true)
		i += n
		if rng.IntN(4) == 0 {
			require.Equal(t, uint64(10+min(i, len(specs))-1), b.reopen(t), "reopened applied index")
		}
	}
	for i := range specs {
		apply(2, c, i, i+1, false)
	}
	_, ha := a.contents(t)
	_, hb := b.contents(t)
	_, hc := c.contents(t)
	require.True(t, ha == hb && ha == hc, "replica digests differ: %x %x %x", ha[:8], hb[:8], hc[:8])
	rejected := 0
	for i := range results[0] {
		for k := 1; k < 3; k++ {
			x, y := results[0][i], results[k][i]
			require.True(t, x.FirstTS == y.FirstTS && x.Duplicate == y.Duplicate && (x.Err == nil) == (y.Err == nil),
				"entry %d: results differ: %+v vs %+v", i, x, y)
		}
		if results[0][i].Err != nil {
			rejected++
		}
	}
	require.NotZero(t, rejected, "no command was rejected: the test does not cover rejections")
	got, want := readAll(t, a.r), readAll(t, c.r)
	require.NotEmpty(t, got, "reads")
	require.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "reads differ (%d vs %d messages)", len(got), len(want))
}

// TestReplicaDeduplicates: a proposal retried after a timeout and committed twice is applied
// once, also out of order within the window, across a reopen, and the duplicate reports the
// original's timestamps; a sequence at or below the floor is never applied; another proposer
// with the same numbers is not confused with the first.
func TestReplicaDeduplicates(t *testing.T) {
	tr, applied := openTestReplica(t, vfs.Default, t.TempDir())
	require.Zero(t, applied, "new replica applied index")
	var p1, p2 ProposerID
	p1[0], p2[0] = 1, 2
	idx := uint64(0)
	next := func() uint64 { idx++; return idx }

	es := []Entry{
		storeEntry(next(), p1, 2, 0, 1000, "a/b", "a/c"), // 2 before 1: pipelined proposals reordered by a retry
		storeEntry(next(), p1, 1, 0, 1000, "a/d"),
		storeEntry(next(), p1, 2, 0, 1000, "a/b", "a/c"), // the retry of 2 committed too
	}
	require.NoError(t, tr.r.ApplyEntries(es))
	require.True(t, !es[0].Result.Duplicate && !es[1].Result.Duplicate && es[2].Result.Duplicate,
		"results %+v, want only the third a duplicate", es)
	require.NotZero(t, es[0].Result.FirstTS, "original ts")
	require.Equal(t, es[0].Result.FirstTS, es[2].Result.FirstTS, "duplicate reports ts, as the original")
	require.Equal(t, idx, tr.reopen(t), "applied index after reopen")
	es = []Entry{
		storeEntry(next(), p1, 1, 0, 2000, "a/d"),         // still remembered after the reopen
		storeEntry(next(), p2, 1, 0, 2000, "b/x"),         // another proposer, same number
		storeEntry(next(), p1, 3, 2, 2000, "a/e"),         // floor 2: 1 and 2 are resolved
		storeEntry(next(), p1, 2, 2, 2000, "a/b", "a/c"),  // at the floor: refused, original unknown
		storeEntry(next(), p1, 3, 3, 2000, "a/e"),         // duplicate of 3
		storeEntry(next(), p1, 4, 3, 2000, "a/f", "a/g"),  // new
		storeEntry(next(), p1, 5, 1, 2000, "a/h"),         // a lower floor does not lower it
		storeEntry(next(), p1, 3, 1, 2000, "a/e"),         // still a duplicate
		storeEntry(next(), p1, 1, 1, 2000, "a/d/retry"),   // still a duplicate
		storeEntry(next(), p2, 2, 1, 2000, "b/y"),         // p2 goes on
		storeEntry(next(), ProposerID{}, 0, 0, 2000, "z"), // no de-duplication: always applied
		storeEntry(next(), ProposerID{}, 0, 0, 2000, "z"),
	}
	require.NoError(t, tr.r.ApplyEntries(es))
	wantDup := []bool{true, false, false, true, true, false, false, true, true, false, false, false}
	for i, e := range es {
		require.Equal(t, wantDup[i], e.Result.Duplicate, "entry %d (seq %d): duplicate", i, e.Seq)
	}
	require.Zero(t, es[3].Result.FirstTS, "a refused sequence at the floor reports a ts")
	got := readAll(t, tr.r)
	require.Len(t, got, 11, "stored messages, want a/b a/c a/d b/x a/e a/f a/g a/h b/y z z")
}

// TestReplicaConditionsAndRejections: IfCurrent skips a stale rotation; a drop of the current
// or an unknown generation, and an invalid topic, are refused by every replica alike and leave
// nothing behind; the applied index still advances over them.
func TestReplicaConditionsAndRejections(t *testing.T) {
	tr, _ := openTestReplica(t, vfs.NewMem(), "")
	_, before := tr.contents(t)
	es := []Entry{
		{Index: 1, IfCurrent: 1, Cmd: &Command{Time: 10, AddGeneration: true}},
		{Index: 2, IfCurrent: 1, Cmd: &Command{Time: 11, AddGeneration: true}}, // a second site's rotation
		{Index: 3, Cmd: &Command{Time: 12, Drop: []stream.GenerationID{2}}},    // current
		{Index: 4, Cmd: &Command{Time: 12, Drop: []stream.GenerationID{9}}},    // unknown
		{Index: 5, Cmd: &Command{Time: 12, Drop: []stream.GenerationID{1, 1}}}, // twice
		{Index: 6, Cmd: &Command{Time: 13, Messages: []*message.Message{{Topic: "ok"}, {Topic: "bad/#"}}}},
	}
	require.NoError(t, tr.r.ApplyEntries(es))
	require.False(t, es[0].Result.Skipped, "IfCurrent: %+v %+v", es[0].Result, es[1].Result)
	require.True(t, es[1].Result.Skipped, "IfCurrent: %+v %+v", es[0].Result, es[1].Result)
	for i, want := range []error{ErrCurrentGeneration, ErrGenerationNotFound, ErrGenerationNotFound, topic.ErrInvalidTopic} {
		require.ErrorIs(t, es[2+i].Result.Err, want, "entry %d", 2+i)
	}
	g := tr.r.Generations()
	require.True(t, len(g) == 2 && g[0].Since == 10, "generations %+v, want 2, the first starting at the first command's time (10), not 1", g)
	require.Empty(t, readAll(t, tr.r), "a refused command stored messages")
	require.Equal(t, uint64(6), tr.r.AppliedIndex(), "applied index")
	require.NoError(t, tr.r.ApplyEntries([]Entry{{Index: 7, Cmd: &Command{Time: 20, Drop: []stream.GenerationID{1}}}}))
	_, after := tr.contents(t)
	require.NotEqual(t, before, after, "contents unchanged")
	require.Error(t, tr.r.ApplyEntries([]Entry{{Index: 7, Cmd: &Command{}}}), "an entry at an index already applied was accepted")
}

// TestReplicaForgetsSilentProposers: a proposer unseen for dedupExpiry entries is forgotten, on
// every replica at the same index, and its record is deleted.
func TestReplicaForgetsSilentProposers(t *testing.T) {
	tr, _ := openTestReplica(t, vfs.NewMem(), "")
	var p1, p2 ProposerID
	p1[0], p2[0] = 1, 2
	require.NoError(t, tr.r.ApplyEntries([]Entry{storeEntry(1, p1, 1, 0, 10, "a"), storeEntry(2, p2, 1, 0, 10, "b")}))
	require.NoError(t, tr.r.ApplyEntries([]Entry{storeEntry(dedupExpiry+1, p2, 2, 1, 10, "b")}))
	require.Len(t, tr.r.dedup, 2, "proposers (p1 was seen at index 1, expiry is %d)", dedupExpiry)
	require.NoError(t, tr.r.ApplyEntries([]Entry{storeEntry(dedupExpiry+dedupExpiryCheck-1, p2, 3, 2, 10, "b")}))
	require.Len(t, tr.r.dedup, 2, "p1 forgotten between check indexes: replicas that cut runs differently would disagree")
	require.NoError(t, tr.r.ApplyEntries([]Entry{storeEntry(dedupExpiry+dedupExpiryCheck, p2, 4, 3, 10, "b")}))
	_, ok := tr.r.dedup[p1]
	require.True(t, !ok && len(tr.r.dedup) == 1, "p1 not forgotten: %v", tr.r.dedup)
	tr.reopen(t)
	_, ok = tr.r.dedup[p1]
	require.True(t, !ok && len(tr.r.dedup) == 1, "p1's record survived a reopen")
	// A proposer ID starting with 0xff (a site ID's first byte is random) is reloaded too.
	var pff ProposerID
	pff[0], pff[15] = 0xff, 0xff
	require.NoError(t, tr.r.ApplyEntries([]Entry{storeEntry(dedupExpiry+dedupExpiryCheck+1, pff, 1, 0, 10, "c")}))
	tr.reopen(t)
	_, ok = tr.r.dedup[pff]
	require.True(t, ok, "the record of proposer ff…ff was not reloaded")
}
