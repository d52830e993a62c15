package shard

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
	"github.com/stretchr/testify/require"
)

func msg(topic, payload string) *message.Message {
	return &message.Message{ClientID: "c", Topic: topic, Payload: []byte(payload)}
}

func put(key, value string) RecordWrite {
	return RecordWrite{Key: []byte(key), Value: []byte(value)}
}

func del(key string) RecordWrite { return RecordWrite{Key: []byte(key), Delete: true} }

func cond(key string, version uint64) Cond { return Cond{Key: []byte(key), Version: version} }

// recordsOf returns the record versions the core holds in memory, and its last version.
func recordsOf(c *core) (map[string]uint64, uint64) {
	return maps.Clone(c.rec.versions), c.rec.lastVersion
}

// diskRecords reads every record of a core straight from Pebble: key → "version:value".
func diskRecords(t testing.TB, c *core) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, c.ScanRecords(context.Background(), nil, func(k, v []byte, ver uint64) bool {
		out[string(k)] = fmt.Sprintf("%d:%s", ver, v)
		return true
	}))
	return out
}

// TestTxnConditions: a Txn applies only if every condition names its key's current version;
// one that fails writes nothing, stores none of its messages, and consumes neither versions nor
// timestamps: the Pebble is byte-identical to one that never saw it.
func TestTxnConditions(t *testing.T) {
	for _, prefix := range [][]byte{nil, layout.ShardPrefix(3)} {
		t.Run(fmt.Sprintf("prefix=%x", prefix), func(t *testing.T) {
			tc := openTestCore(t, prefix, 1000)
			ref := openTestCore(t, prefix, 1000) // the same commands, without the failing Txns

			// Create if absent.
			t1 := &Txn{Conds: []Cond{cond("a", 0)}, Writes: []RecordWrite{put("a", "1"), put("b", "1")}}
			_, err := tc.apply(t, &Command{Time: 1000, Txns: []*Txn{t1}})
			require.NoError(t, err)
			require.NoError(t, t1.Err())
			require.True(t, t1.Result.FirstVersion == 1 && t1.Writes[0].Version == 1 && t1.Writes[1].Version == 2,
				"versions %+v, want first version 1, writes at 1 and 2", t1)
			_, err = ref.apply(t, &Command{Time: 1000, Txns: []*Txn{{Conds: []Cond{cond("a", 0)}, Writes: []RecordWrite{put("a", "1"), put("b", "1")}}}})
			require.NoError(t, err)
			_, hRef := ref.contents(t)
			_, hBefore := tc.contents(t)
			require.Equal(t, hRef, hBefore, "same commands, different contents")
			recBefore, lastBefore := recordsOf(tc.c)
			lastTS := tc.c.lastTS

			// Each of these fails: wrong version, absent key required present, present key
			// required absent, the second condition failing after the first held.
			failing := []*Txn{
				{Conds: []Cond{cond("a", 2)}, Writes: []RecordWrite{put("a", "x")}, Messages: []*message.Message{msg("t/1", "no")}},
				{Conds: []Cond{cond("zz", 1)}, Writes: []RecordWrite{put("zz", "x")}},
				{Conds: []Cond{cond("b", 0)}, Writes: []RecordWrite{del("b")}, Messages: []*message.Message{msg("t/2", "no")}},
				{Conds: []Cond{cond("a", 1), cond("b", 1)}, Writes: []RecordWrite{put("c", "x")}, Messages: []*message.Message{msg("t/3", "no")}},
			}
			wantFailed := []int{1, 1, 1, 2}
			a, err := tc.apply(t, &Command{Time: 1001, Txns: failing})
			require.NoError(t, err)
			for i, f := range failing {
				require.Equal(t, wantFailed[i], f.Result.Failed, "txn %d: failed condition (result %+v)", i, f.Result)
				require.ErrorIs(t, f.Err(), ErrConditionFailed, "txn %d", i)
				for _, m := range f.Messages {
					require.Zero(t, m.Timestamp, "txn %d: a failed Txn's message got a timestamp", i)
				}
				for _, w := range f.Writes {
					require.Zero(t, w.Version, "txn %d: a failed Txn's write got a version", i)
				}
			}
			require.True(t, len(a.Timestamps) == 0 && len(a.Records) == 0 && len(a.TxnMessages) == 0,
				"failed Txns applied something: %+v", a)
			_, h := tc.contents(t)
			require.Equal(t, hBefore, h, "failed Txns changed the Pebble")
			rec, last := recordsOf(tc.c)
			require.True(t, maps.Equal(rec, recBefore) && last == lastBefore && tc.c.lastTS == lastTS,
				"failed Txns changed the state: %v/%d/%d, want %v/%d/%d", rec, last, tc.c.lastTS, recBefore, lastBefore, lastTS)

			// Compare-and-set and delete, applied to both: neither versions nor timestamps were
			// consumed by the failures, so both Pebbles stay identical.
			next := func() *Command {
				return &Command{Time: 1002, Messages: []*message.Message{msg("t/0", "plain")}, Txns: []*Txn{
					{Conds: []Cond{cond("a", 1), cond("b", 2)}, Writes: []RecordWrite{put("a", "2"), del("b")}, Messages: []*message.Message{msg("t/1", "yes")}},
				}}
			}
			c1, c2 := next(), next()
			_, err = tc.apply(t, c1)
			require.NoError(t, err)
			_, err = ref.apply(t, c2)
			require.NoError(t, err)
			tx := c1.Txns[0]
			require.NoError(t, tx.Err(), "CAS")
			require.True(t, tx.Result.FirstVersion == 3 && tx.Writes[0].Version == 3 && tx.Writes[1].Version == 0,
				"CAS: %+v, want first version 3, writes at 3 and 0", tx)
			require.Equal(t, uint64(1002), c1.Messages[0].Timestamp, "plain message timestamp (none consumed by the failures)")
			require.Equal(t, uint64(1003), c1.Txns[0].Messages[0].Timestamp, "Txn message timestamp (none consumed by the failures)")
			requireSameContents(t, tc, ref, "after the failures and a CAS")
			require.Equal(t, map[string]string{"a": "3:2"}, diskRecords(t, tc.c), "records")
			v, ver, err := tc.c.Record(context.Background(), []byte("b"))
			require.NoError(t, err, "deleted record")
			require.Nil(t, v, "deleted record")
			require.Zero(t, ver, "deleted record version")
		})
	}
}

// TestTxnsWithinACommand: the Txns of one command see each other's writes in order (the second
// of two "create if absent" of one key fails), and empty conditions always hold.
func TestTxnsWithinACommand(t *testing.T) {
	tc := openTestCore(t, nil, 1000)
	cmd := &Command{Time: 5000, Txns: []*Txn{
		{Conds: []Cond{cond("k", 0)}, Writes: []RecordWrite{put("k", "first")}},
		{Conds: []Cond{cond("k", 0)}, Writes: []RecordWrite{put("k", "second")}},
		{Conds: []Cond{cond("k", 1)}, Writes: []RecordWrite{put("k", "third")}},
		{Writes: []RecordWrite{put("j", "unconditional")}},
		{}, // nothing at all: applies
	}}
	a, err := tc.apply(t, cmd)
	require.NoError(t, err)
	var got []int
	for _, tx := range cmd.Txns {
		got = append(got, tx.Result.Failed)
	}
	require.Equal(t, []int{0, 1, 0, 0, 0}, got, "failed conditions")
	var recs []string
	for _, w := range a.Records {
		recs = append(recs, fmt.Sprintf("%s=%s@%d", w.Key, w.Value, w.Version))
	}
	require.Equal(t, []string{"k=first@1", "k=third@2", "j=unconditional@3"}, recs, "Applied.Records")
	require.Equal(t, map[string]string{"k": "2:third", "j": "3:unconditional"}, diskRecords(t, tc.c), "records")
}

// TestTxnVersionsNeverRepeat: versions increase with every write (deletes included) and are
// never given again: not after a delete and re-create, not after a restart, not after every
// record was deleted and the shard restarted (the last version is kept apart).
func TestTxnVersionsNeverRepeat(t *testing.T) {
	tc := openTestCore(t, layout.ShardPrefix(3), 1000)
	rng := rand.New(rand.NewPCG(3, 3))
	seen := map[uint64]bool{}
	last := uint64(0)
	now := uint64(1000)
	keys := []string{"a", "b", "c", "\x00", "\xff\xff"}
	for i := range 400 {
		if i%37 == 36 {
			rec, lv := recordsOf(tc.c)
			disk := diskRecords(t, tc.c)
			tc.reopen(t)
			rec2, lv2 := recordsOf(tc.c)
			require.True(t, maps.Equal(rec, rec2) && lv == lv2, "reopen: versions %v last %d, want %v last %d", rec2, lv2, rec, lv)
			require.Equal(t, disk, diskRecords(t, tc.c), "reopen: records")
		}
		if i%100 == 99 { // delete everything, then restart
			var ws []RecordWrite
			for k := range tc.c.rec.versions {
				ws = append(ws, del(k))
			}
			slices.SortFunc(ws, func(x, y RecordWrite) int { return bytes.Compare(x.Key, y.Key) })
			if len(ws) > 0 {
				tx := &Txn{Writes: ws}
				_, err := tc.apply(t, &Command{Time: now, Txns: []*Txn{tx}})
				require.NoError(t, err)
				last = tx.Result.FirstVersion + uint64(len(ws)) - 1
			}
			tc.reopen(t)
			require.Empty(t, tc.c.rec.versions, "after deleting all and reopening")
			require.Equal(t, last, tc.c.rec.lastVersion, "last version after deleting all and reopening")
		}
		now++
		k := keys[rng.IntN(len(keys))]
		cur := tc.c.rec.versions[k]
		var w RecordWrite
		if cur != 0 && rng.IntN(3) == 0 {
			w = del(k)
		} else {
			w = put(k, fmt.Sprint(i))
		}
		tx := &Txn{Conds: []Cond{{Key: []byte(k), Version: cur}}, Writes: []RecordWrite{w}}
		_, err := tc.apply(t, &Command{Time: now, Txns: []*Txn{tx}})
		require.NoError(t, err)
		require.NoError(t, tx.Err())
		v := tx.Result.FirstVersion
		require.True(t, v > last && !seen[v], "write %d: version %d after %d (seen before: %v)", i, v, last, seen[v])
		seen[v], last = true, v
		_, got, err := tc.c.Record(context.Background(), []byte(k))
		require.NoError(t, err)
		if w.Delete {
			require.Zero(t, got, "write %d: version of deleted record %q", i, k)
		} else {
			require.Equal(t, v, got, "write %d: version of record %q", i, k)
		}
	}
}

// TestTxnMessageTimestamps: an applied Txn's messages are stored after the command's plain
// messages, in Txn order, with consecutive timestamps; a failed Txn in between leaves no gap;
// Applied lists them (Timestamps, TxnMessages) and TxnResult.FirstTS names the first.
func TestTxnMessageTimestamps(t *testing.T) {
	tc := openTestCore(t, nil, 1000)
	cmd := &Command{Time: 2000,
		Messages: []*message.Message{msg("p/1", "p1"), msg("p/2", "p2")},
		Txns: []*Txn{
			{Messages: []*message.Message{msg("t/1", "a"), msg("t/2", "b")}},
			{Conds: []Cond{cond("x", 7)}, Messages: []*message.Message{msg("t/3", "lost")}},
			{Writes: []RecordWrite{put("r", "v")}},
			{Messages: []*message.Message{msg("p/1", "d")}},
		}}
	a, err := tc.apply(t, cmd)
	require.NoError(t, err)
	require.Equal(t, []uint64{2000, 2001, 2002, 2003, 2004}, a.Timestamps, "timestamps")
	var order []string
	for _, m := range append(slices.Clone(cmd.Messages), a.TxnMessages...) {
		order = append(order, fmt.Sprintf("%s@%d", m.Payload, m.Timestamp))
	}
	require.Equal(t, []string{"p1@2000", "p2@2001", "a@2002", "b@2003", "d@2004"}, order, "order")
	r := cmd.Txns[0].Result
	require.True(t, r.FirstTS == 2002 && r.Failed == 0, "txn 0: %+v, want first ts 2002, not failed", r)
	r = cmd.Txns[1].Result
	require.True(t, r.Failed == 1 && cmd.Txns[1].Messages[0].Timestamp == 0, "txn 1: %+v, want failed condition 1, no timestamp", r)
	r = cmd.Txns[2].Result
	require.True(t, r.FirstTS == 0 && r.FirstVersion == 1, "txn 2 (no messages): %+v, want no first ts, first version 1", r)
	r = cmd.Txns[3].Result
	require.Equal(t, uint64(2004), r.FirstTS, "txn 3: %+v", r)
	// SetResults, as a proposer does with a result decoded from the log, gives the same.
	for _, tx := range cmd.Txns {
		cp := &Txn{Writes: slices.Clone(tx.Writes), Result: tx.Result}
		for _, m := range tx.Messages {
			mm := *m
			mm.Timestamp, mm.Shard = 0, 0
			cp.Messages = append(cp.Messages, &mm)
		}
		cp.SetResults(uint16(tc.c.id))
		for i := range cp.Messages {
			if tx.Result.Failed == 0 {
				require.True(t, cp.Messages[i].Timestamp == tx.Messages[i].Timestamp && cp.Messages[i].Shard == tx.Messages[i].Shard,
					"SetResults: message %d at %d/%d, want %d/%d", i, cp.Messages[i].Shard, cp.Messages[i].Timestamp, tx.Messages[i].Shard, tx.Messages[i].Timestamp)
			}
		}
		for i := range cp.Writes {
			if tx.Result.Failed == 0 {
				require.Equal(t, tx.Writes[i].Version, cp.Writes[i].Version, "SetResults: write %d version", i)
			}
		}
	}
	// The next command follows the last Txn message.
	a, err = tc.apply(t, &Command{Time: 1, Messages: []*message.Message{msg("p/1", "e")}})
	require.NoError(t, err)
	require.Equal(t, uint64(2005), a.Timestamps[0], "next command timestamp")
}

// TestTxnAbort: a command whose batch fails (Abort) leaves the record versions, the last
// version and every other state as before, and a shard that aborted commands applies the
// following ones exactly as one that never saw them (same versions, same bytes).
func TestTxnAbort(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	x := openTestCore(t, nil, 1000)
	y := openTestCore(t, nil, 1000) // never sees the aborted commands
	now := uint64(1000)
	for i := range 200 {
		now++
		specs := randomTxnSpecs(rng, x.c.rec.versions)
		if rng.IntN(3) == 0 {
			junk := &Command{Time: now + uint64(rng.IntN(100)), Messages: []*message.Message{msg("j/1", "junk")}, Txns: buildTxns(specs)}
			rec, lv := recordsOf(x.c)
			state := stateOf(x.c)
			x.applyAbort(t, junk)
			rec2, lv2 := recordsOf(x.c)
			require.True(t, maps.Equal(rec, rec2) && lv == lv2, "command %d: abort left versions %v last %d, want %v last %d", i, rec2, lv2, rec, lv)
			require.Equal(t, state, stateOf(x.c), "command %d: state after abort", i)
		}
		c1 := &Command{Time: now, Txns: buildTxns(specs)}
		c2 := &Command{Time: now, Txns: buildTxns(specs)}
		_, err := x.apply(t, c1)
		require.NoError(t, err)
		_, err = y.apply(t, c2)
		require.NoError(t, err)
		for j := range c1.Txns {
			require.Equal(t, c2.Txns[j].Result, c1.Txns[j].Result, "command %d txn %d", i, j)
		}
		if i%20 == 0 {
			requireSameContents(t, x, y, fmt.Sprintf("after command %d", i))
		}
	}
	requireSameContents(t, x, y, "at the end")
	x.reopen(t)
	y.reopen(t)
	rx, lx := recordsOf(x.c)
	ry, ly := recordsOf(y.c)
	require.True(t, maps.Equal(rx, ry) && lx == ly && lx != 0, "reopened: %v/%d vs %v/%d", rx, lx, ry, ly)
}

// txnSpec describes a Txn so that identical fresh Txns can be built for several cores.
type txnSpec struct {
	conds  []Cond
	writes []RecordWrite
	topics []string
}

func buildTxns(specs []txnSpec) []*Txn {
	var out []*Txn
	for i, s := range specs {
		t := &Txn{Conds: slices.Clone(s.conds), Writes: slices.Clone(s.writes)}
		for j, tp := range s.topics {
			t.Messages = append(t.Messages, msg(tp, fmt.Sprintf("txn %d msg %d", i, j)))
		}
		out = append(out, t)
	}
	return out
}

// randomTxnSpecs returns 1-4 Txns over a few keys whose conditions hold or fail at random,
// given the current versions (which the Txns of one command may change under each other).
func randomTxnSpecs(rng *rand.Rand, versions map[string]uint64) []txnSpec {
	keys := []string{"s/a", "s/b", "s/c", "q/a\x00\x01", "q/a\x00\x02"}
	var out []txnSpec
	for range 1 + rng.IntN(4) {
		var s txnSpec
		for range rng.IntN(3) {
			k := keys[rng.IntN(len(keys))]
			v := versions[k]
			if rng.IntN(4) == 0 {
				v += uint64(1 + rng.IntN(2)) // usually fails
			}
			s.conds = append(s.conds, cond(k, v))
		}
		for range rng.IntN(4) {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(3) == 0 {
				s.writes = append(s.writes, del(k))
			} else {
				s.writes = append(s.writes, put(k, fmt.Sprintf("v%d", rng.IntN(1000))))
			}
		}
		for range rng.IntN(3) {
			s.topics = append(s.topics, randomTopic(rng))
		}
		out = append(out, s)
	}
	return out
}

// TestReplicaTxns: replicas fed the same entries with Txns (in differently sized runs, one of
// them from decoded commands and reopened along the way) compute the same Txn results and hold
// byte-identical Pebbles; OnDurable lists the applied record writes with their versions, and
// a duplicate entry applies its Txns once.
func TestReplicaTxns(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	var p ProposerID
	p[0] = 9
	a, _ := openTestReplica(t, vfs.NewMem(), "")
	b, _ := openTestReplica(t, vfs.NewMem(), "")
	var mu sync.Mutex
	var durable []RecordWrite
	a.r.cfg.OnDurable = func(d Durable) {
		mu.Lock()
		defer mu.Unlock()
		durable = append(durable, d.Records...)
	}
	// The commands are generated against a model of the versions (a shadow core), so that
	// conditions hold often.
	shadow := openTestCore(t, nil, 1)
	type entrySpec struct {
		time  uint64
		txns  []txnSpec
		plain []string
		dup   bool
	}
	var specs []entrySpec
	now := uint64(5000)
	for range 300 {
		now += uint64(rng.IntN(3))
		s := entrySpec{time: now, txns: randomTxnSpecs(rng, shadow.c.rec.versions)}
		for range rng.IntN(3) {
			s.plain = append(s.plain, randomTopic(rng))
		}
		s.dup = len(specs) > 0 && !specs[len(specs)-1].dup && rng.IntN(10) == 0 // retries the previous one
		if !s.dup {
			_, err := shadow.apply(t, &Command{Time: s.time, Txns: buildTxns(s.txns)})
			require.NoError(t, err)
		}
		specs = append(specs, s)
	}
	build := func(i int, decoded bool) Entry {
		s := specs[i]
		seq := uint64(i + 1)
		if s.dup {
			seq = uint64(i) // a retry of the previous proposal: not applied again
		}
		cmd := &Command{Time: s.time, Txns: buildTxns(s.txns)}
		for j, tp := range s.plain {
			cmd.Messages = append(cmd.Messages, msg(tp, fmt.Sprintf("plain %d/%d", i, j)))
		}
		if decoded {
			var err error
			cmd, err = DecodeCommand(cmd.AppendBinary(nil))
			require.NoError(t, err)
		}
		return Entry{Index: uint64(100 + i), Proposer: p, Seq: seq, Cmd: cmd}
	}
	var results [2][]EntryResult
	var appliedWrites []RecordWrite
	for i := 0; i < len(specs); i += 17 {
		var es []Entry
		for j := i; j < min(i+17, len(specs)); j++ {
			es = append(es, build(j, false))
		}
		require.NoError(t, a.r.ApplyEntries(es))
		for _, e := range es {
			results[0] = append(results[0], e.Result)
			if e.Result.Duplicate {
				require.Nil(t, e.Result.Txns, "entry %d: a duplicate has Txn results", e.Index)
				continue
			}
			require.Len(t, e.Result.Txns, len(e.Cmd.Txns), "entry %d: Txn results, one per Txn", e.Index)
			for _, tx := range e.Cmd.Txns {
				if tx.Result.Failed == 0 {
					appliedWrites = append(appliedWrites, tx.Writes...)
				}
			}
		}
	}
	for i := 0; i < len(specs); {
		n := 1 + rng.IntN(40)
		var es []Entry
		for j := i; j < min(i+n, len(specs)); j++ {
			es = append(es, build(j, true))
		}
		require.NoError(t, b.r.ApplyEntries(es))
		for _, e := range es {
			results[1] = append(results[1], e.Result)
		}
		i += n
		if rng.IntN(5) == 0 {
			b.reopen(t)
		}
	}
	applied, failed := 0, 0
	for i := range results[0] {
		x, y := results[0][i], results[1][i]
		require.True(t, x.FirstTS == y.FirstTS && x.Duplicate == y.Duplicate && slices.Equal(x.Txns, y.Txns) && (x.Err == nil) == (y.Err == nil),
			"entry %d: %+v vs %+v", i, x, y)
		for _, r := range x.Txns {
			if r.Failed == 0 {
				applied++
			} else {
				failed++
			}
		}
	}
	require.True(t, applied >= 50 && failed >= 20, "%d Txns applied, %d failed: the test covers too little", applied, failed)
	_, ha := a.contents(t)
	_, hb := b.contents(t)
	require.True(t, ha == hb, "replica digests differ: %x %x", ha[:8], hb[:8])
	ra, la := recordsOf(a.r.core)
	rb, lb := recordsOf(b.r.core)
	require.True(t, maps.Equal(ra, rb) && la == lb, "versions differ: %v/%d vs %v/%d", ra, la, rb, lb)
	// The model, which skipped the duplicates, agrees.
	rs, ls := recordsOf(shadow.c)
	require.True(t, maps.Equal(ra, rs) && la == ls, "versions %v/%d, model %v/%d", ra, la, rs, ls)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, durable, len(appliedWrites), "OnDurable record writes, one per applied write")
	for i := range durable {
		x, y := durable[i], appliedWrites[i]
		require.True(t, bytes.Equal(x.Key, y.Key) && bytes.Equal(x.Value, y.Value) && x.Delete == y.Delete && x.Version == y.Version,
			"durable write %d: %+v, want %+v", i, x, y)
		if i > 0 && x.Version != 0 && durable[i-1].Version != 0 {
			require.Greater(t, x.Version, durable[i-1].Version, "durable write %d: version", i)
		}
	}
}

// TestReplicaTxnRejected: a command with a Txn message of an invalid topic is rejected whole
// (by check, before anything is written): its records are not written and no version is used.
func TestReplicaTxnRejected(t *testing.T) {
	tr, _ := openTestReplica(t, vfs.NewMem(), "")
	es := []Entry{
		{Index: 1, Cmd: &Command{Time: 10, Txns: []*Txn{{Writes: []RecordWrite{put("k", "v")}, Messages: []*message.Message{msg("bad/#", "x")}}}}},
		{Index: 2, Cmd: &Command{Time: 11, Txns: []*Txn{{Conds: []Cond{cond("k", 0)}, Writes: []RecordWrite{put("k", "w")}}}}},
	}
	require.NoError(t, tr.r.ApplyEntries(es))
	require.Error(t, es[0].Result.Err, "entry 1: %+v", es[0].Result)
	require.Nil(t, es[0].Result.Txns, "entry 1: %+v", es[0].Result)
	r := es[1].Result
	require.NoError(t, r.Err, "entry 2")
	require.Len(t, r.Txns, 1, "entry 2: %+v", r)
	require.True(t, r.Txns[0].Failed == 0 && r.Txns[0].FirstVersion == 1, "entry 2: %+v, want applied at version 1", r)
}

// testShard opens a Shard on an in-memory Pebble.
func testShard(t *testing.T, fs vfs.FS, onDurable func(Durable)) (*Shard, *pebble.DB) {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: fs, Logger: quietLogger{}})
	require.NoError(t, err)
	s, err := Open(Config{ID: 2, DB: db, Layout: testParams, Sync: true, FlushInterval: time.Millisecond,
		MaxBatchMessages: 1000, MaxBatchBytes: 1 << 20, QueueLength: 64, MaintenanceInterval: time.Hour,
		Now: time.Now, OnDurable: onDurable, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	return s, db
}

// TestShardTxns: SubmitTxn on an embedded Shard, with concurrent plain stores that share its
// group commits: Wait returns with the Txn's result, versions and timestamps set; Record and
// ScanRecords see what was acknowledged; OnDurable lists every applied record write with its
// version, and the Txns' messages after the plain ones of the same batch; after a reopen
// versions continue where they were.
func TestShardTxns(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	var mu sync.Mutex
	var durRecs []RecordWrite
	var durMsgs []*message.Message
	onDurable := func(d Durable) {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range d.Records {
			w.Key, w.Value = bytes.Clone(w.Key), bytes.Clone(w.Value)
			durRecs = append(durRecs, w)
		}
		for _, m := range d.Messages {
			mm := *m
			durMsgs = append(durMsgs, &mm)
		}
	}
	s, db := testShard(t, fs, onDurable)

	// Several clients increment their own counter by compare-and-set, while plain messages go
	// to the same shard; every Txn also stores a message.
	const clients, rounds = 4, 25
	var wg sync.WaitGroup
	errc := make(chan error, clients+1)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []byte(fmt.Sprintf("ctr/%d", c))
			var ver uint64
			for i := range rounds {
				tx := &Txn{Conds: []Cond{{Key: key, Version: ver}}, Writes: []RecordWrite{{Key: key, Value: []byte(fmt.Sprint(i + 1))}},
					Messages: []*message.Message{msg(fmt.Sprintf("txn/%d", c), fmt.Sprintf("%d:%d", c, i))}}
				w, err := s.SubmitTxns(ctx, []*Txn{tx}, 10)
				if err == nil {
					err = w.Wait()
				}
				if err == nil {
					err = tx.Err()
				}
				if err != nil {
					errc <- err
					return
				}
				if tx.Writes[0].Version <= ver || tx.Messages[0].Timestamp == 0 || tx.Messages[0].Shard != 2 {
					errc <- fmt.Errorf("client %d round %d: version %d after %d, message %d/%d", c, i, tx.Writes[0].Version, ver, tx.Messages[0].Shard, tx.Messages[0].Timestamp)
					return
				}
				ver = tx.Writes[0].Version
				// Read your write: the record is durable when Wait returned.
				v, got, err := s.Record(ctx, key)
				if err != nil || got != ver || string(v) != fmt.Sprint(i+1) {
					errc <- fmt.Errorf("client %d round %d: Record %q@%d %v, want %d@%d", c, i, v, got, err, i+1, ver)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 50 {
			if err := s.Store(ctx, []*message.Message{msg("plain", fmt.Sprint(i))}, 10); err != nil {
				errc <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
	// A Txn whose condition fails: Wait returns nil, Err says so.
	tx := &Txn{Conds: []Cond{cond("ctr/0", 1)}, Writes: []RecordWrite{put("ctr/0", "x")}, Messages: []*message.Message{msg("txn/x", "no")}}
	w, err := s.SubmitTxns(ctx, []*Txn{tx}, 1)
	require.NoError(t, err)
	require.NoError(t, w.Wait())
	require.ErrorIs(t, tx.Err(), ErrConditionFailed, "failing Txn")
	require.Zero(t, tx.Messages[0].Timestamp, "failing Txn: message timestamp")
	// Invalid Txns are refused before they are queued.
	for _, bad := range []*Txn{
		{Writes: []RecordWrite{{Key: nil, Value: []byte("v")}}},
		{Writes: []RecordWrite{{Key: []byte("k"), Value: []byte("v"), Delete: true}}},
		{Writes: []RecordWrite{{Key: make([]byte, MaxRecordKey+1)}}},
		{Conds: []Cond{{}}},
	} {
		_, err := s.SubmitTxns(ctx, []*Txn{bad}, 1)
		require.ErrorIs(t, err, ErrInvalidCommand, "invalid Txn %+v", bad)
	}

	mu.Lock()
	require.Len(t, durRecs, clients*rounds, "OnDurable record writes")
	for i := 1; i < len(durRecs); i++ {
		require.Equal(t, durRecs[i-1].Version+1, durRecs[i].Version, "durable record %d: version", i)
	}
	require.Len(t, durMsgs, clients*rounds+50, "OnDurable messages")
	for i := 1; i < len(durMsgs); i++ {
		require.Greater(t, durMsgs[i].Timestamp, durMsgs[i-1].Timestamp,
			"OnDurable message %d (%s) after (%s)", i, durMsgs[i].Topic, durMsgs[i-1].Topic)
	}
	lastVersion := durRecs[len(durRecs)-1].Version
	mu.Unlock()

	scan := func(s *Shard) map[string]string {
		out := map[string]string{}
		require.NoError(t, s.ScanRecords(ctx, []byte("ctr/"), func(k, v []byte, ver uint64) bool {
			out[string(k)] = fmt.Sprintf("%s@%d", v, ver)
			return true
		}))
		return out
	}
	before := scan(s)
	require.Len(t, before, clients, "scan %v", before)
	require.NoError(t, s.Close())
	require.NoError(t, db.Close())
	s, db = testShard(t, fs, nil)
	defer db.Close()
	defer s.Close()
	require.Equal(t, before, scan(s), "records after reopen")
	tx = &Txn{Writes: []RecordWrite{put("new", "v")}}
	w, err = s.SubmitTxns(ctx, []*Txn{tx}, 1)
	require.NoError(t, err)
	require.NoError(t, w.Wait())
	require.Equal(t, lastVersion+1, tx.Writes[0].Version, "version after reopen")
}

// TestRecordReadWaitsForDurability: Record does not return a write whose batch is not yet
// durable: it waits until it is (invariant 3), or for its context.
func TestRecordReadWaitsForDurability(t *testing.T) {
	tc := openTestCore(t, nil, 1000)
	b := tc.db.NewBatch()
	tx := &Txn{Writes: []RecordWrite{put("k", "v")}}
	a, err := tc.c.apply(b, &Command{Time: 1000, Txns: []*Txn{tx}})
	require.NoError(t, err)
	require.NoError(t, b.Commit(pebble.NoSync))
	pub := a.Commit() // committed, not yet published as durable
	// A cancelled context: Record returns at once if the write is durable, else with the
	// context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = tc.c.Record(ctx, []byte("k"))
	require.ErrorIs(t, err, context.Canceled, "Record before durability: want it to wait")
	done := make(chan error, 1)
	go func() {
		v, ver, err := tc.c.Record(context.Background(), []byte("k"))
		if err == nil && (string(v) != "v" || ver != 1) {
			err = fmt.Errorf("got %q@%d", v, ver)
		}
		done <- err
	}()
	tc.c.publishDurable(pub)
	require.NoError(t, <-done)
	b.Close()
}
