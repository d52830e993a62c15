package shard

import (
	"bytes"
	"context"
	"errors"
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
	must(t, c.ScanRecords(context.Background(), nil, func(k, v []byte, ver uint64) bool {
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
			must(t, err)
			must(t, t1.Err())
			if t1.Result.FirstVersion != 1 || t1.Writes[0].Version != 1 || t1.Writes[1].Version != 2 {
				t.Fatalf("versions %+v", t1)
			}
			_, err = ref.apply(t, &Command{Time: 1000, Txns: []*Txn{{Conds: []Cond{cond("a", 0)}, Writes: []RecordWrite{put("a", "1"), put("b", "1")}}}})
			must(t, err)
			_, hRef := ref.contents(t)
			_, hBefore := tc.contents(t)
			if hRef != hBefore {
				t.Fatal("same commands, different contents")
			}
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
			must(t, err)
			for i, f := range failing {
				if f.Result.Failed != wantFailed[i] || !errors.Is(f.Err(), ErrConditionFailed) {
					t.Fatalf("txn %d: result %+v err %v, want failed condition %d", i, f.Result, f.Err(), wantFailed[i])
				}
				for _, m := range f.Messages {
					if m.Timestamp != 0 {
						t.Fatalf("txn %d: a failed Txn's message got timestamp %d", i, m.Timestamp)
					}
				}
				for _, w := range f.Writes {
					if w.Version != 0 {
						t.Fatalf("txn %d: a failed Txn's write got version %d", i, w.Version)
					}
				}
			}
			if len(a.Timestamps) != 0 || len(a.Records) != 0 || len(a.TxnMessages) != 0 {
				t.Fatalf("failed Txns applied something: %+v", a)
			}
			if _, h := tc.contents(t); h != hBefore {
				t.Fatal("failed Txns changed the Pebble")
			}
			if rec, last := recordsOf(tc.c); !maps.Equal(rec, recBefore) || last != lastBefore || tc.c.lastTS != lastTS {
				t.Fatalf("failed Txns changed the state: %v/%d/%d, want %v/%d/%d", rec, last, tc.c.lastTS, recBefore, lastBefore, lastTS)
			}

			// Compare-and-set and delete, applied to both: neither versions nor timestamps were
			// consumed by the failures, so both Pebbles stay identical.
			next := func() *Command {
				return &Command{Time: 1002, Messages: []*message.Message{msg("t/0", "plain")}, Txns: []*Txn{
					{Conds: []Cond{cond("a", 1), cond("b", 2)}, Writes: []RecordWrite{put("a", "2"), del("b")}, Messages: []*message.Message{msg("t/1", "yes")}},
				}}
			}
			c1, c2 := next(), next()
			_, err = tc.apply(t, c1)
			must(t, err)
			_, err = ref.apply(t, c2)
			must(t, err)
			if tx := c1.Txns[0]; tx.Err() != nil || tx.Result.FirstVersion != 3 || tx.Writes[0].Version != 3 || tx.Writes[1].Version != 0 {
				t.Fatalf("CAS: %+v %v", tx, tx.Err())
			}
			if c1.Messages[0].Timestamp != 1002 || c1.Txns[0].Messages[0].Timestamp != 1003 {
				t.Fatalf("timestamps %d %d, want 1002 1003 (none consumed by the failures)", c1.Messages[0].Timestamp, c1.Txns[0].Messages[0].Timestamp)
			}
			requireSameContents(t, tc, ref, "after the failures and a CAS")
			if got := diskRecords(t, tc.c); !maps.Equal(got, map[string]string{"a": "3:2"}) {
				t.Fatalf("records %v", got)
			}
			v, ver, err := tc.c.Record(context.Background(), []byte("b"))
			if err != nil || v != nil || ver != 0 {
				t.Fatalf("deleted record: %q %d %v", v, ver, err)
			}
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
	must(t, err)
	var got []int
	for _, tx := range cmd.Txns {
		got = append(got, tx.Result.Failed)
	}
	if !slices.Equal(got, []int{0, 1, 0, 0, 0}) {
		t.Fatalf("failed %v", got)
	}
	var recs []string
	for _, w := range a.Records {
		recs = append(recs, fmt.Sprintf("%s=%s@%d", w.Key, w.Value, w.Version))
	}
	if want := []string{"k=first@1", "k=third@2", "j=unconditional@3"}; !slices.Equal(recs, want) {
		t.Fatalf("Applied.Records %v, want %v", recs, want)
	}
	if got := diskRecords(t, tc.c); !maps.Equal(got, map[string]string{"k": "2:third", "j": "3:unconditional"}) {
		t.Fatalf("records %v", got)
	}
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
			if rec2, lv2 := recordsOf(tc.c); !maps.Equal(rec, rec2) || lv != lv2 {
				t.Fatalf("reopen: versions %v last %d, want %v last %d", rec2, lv2, rec, lv)
			}
			if disk2 := diskRecords(t, tc.c); !maps.Equal(disk, disk2) {
				t.Fatalf("reopen: records %v, want %v", disk2, disk)
			}
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
				must(t, err)
				last = tx.Result.FirstVersion + uint64(len(ws)) - 1
			}
			tc.reopen(t)
			if len(tc.c.rec.versions) != 0 || tc.c.rec.lastVersion != last {
				t.Fatalf("after deleting all and reopening: %v last %d, want last %d", tc.c.rec.versions, tc.c.rec.lastVersion, last)
			}
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
		must(t, err)
		must(t, tx.Err())
		v := tx.Result.FirstVersion
		if v <= last || seen[v] {
			t.Fatalf("write %d: version %d after %d (seen before: %v)", i, v, last, seen[v])
		}
		seen[v], last = true, v
		_, got, err := tc.c.Record(context.Background(), []byte(k))
		must(t, err)
		if w.Delete && got != 0 || !w.Delete && got != v {
			t.Fatalf("write %d: record %q at version %d, want %d (delete %v)", i, k, got, v, w.Delete)
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
	must(t, err)
	if want := []uint64{2000, 2001, 2002, 2003, 2004}; !slices.Equal(a.Timestamps, want) {
		t.Fatalf("timestamps %v, want %v", a.Timestamps, want)
	}
	var order []string
	for _, m := range append(slices.Clone(cmd.Messages), a.TxnMessages...) {
		order = append(order, fmt.Sprintf("%s@%d", m.Payload, m.Timestamp))
	}
	if want := []string{"p1@2000", "p2@2001", "a@2002", "b@2003", "d@2004"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	if r := cmd.Txns[0].Result; r.FirstTS != 2002 || r.Failed != 0 {
		t.Fatalf("txn 0: %+v", r)
	}
	if r := cmd.Txns[1].Result; r.Failed != 1 || cmd.Txns[1].Messages[0].Timestamp != 0 {
		t.Fatalf("txn 1: %+v", r)
	}
	if r := cmd.Txns[2].Result; r.FirstTS != 0 || r.FirstVersion != 1 {
		t.Fatalf("txn 2 (no messages): %+v", r)
	}
	if r := cmd.Txns[3].Result; r.FirstTS != 2004 {
		t.Fatalf("txn 3: %+v", r)
	}
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
			if tx.Result.Failed == 0 && (cp.Messages[i].Timestamp != tx.Messages[i].Timestamp || cp.Messages[i].Shard != tx.Messages[i].Shard) {
				t.Fatalf("SetResults: message %d at %d/%d, want %d/%d", i, cp.Messages[i].Shard, cp.Messages[i].Timestamp, tx.Messages[i].Shard, tx.Messages[i].Timestamp)
			}
		}
		for i := range cp.Writes {
			if tx.Result.Failed == 0 && cp.Writes[i].Version != tx.Writes[i].Version {
				t.Fatalf("SetResults: write %d version %d, want %d", i, cp.Writes[i].Version, tx.Writes[i].Version)
			}
		}
	}
	// The next command follows the last Txn message.
	a, err = tc.apply(t, &Command{Time: 1, Messages: []*message.Message{msg("p/1", "e")}})
	must(t, err)
	if a.Timestamps[0] != 2005 {
		t.Fatalf("next command at %d, want 2005", a.Timestamps[0])
	}
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
			if rec2, lv2 := recordsOf(x.c); !maps.Equal(rec, rec2) || lv != lv2 || stateOf(x.c) != state {
				t.Fatalf("command %d: abort left versions %v last %d, want %v last %d", i, rec2, lv2, rec, lv)
			}
		}
		c1 := &Command{Time: now, Txns: buildTxns(specs)}
		c2 := &Command{Time: now, Txns: buildTxns(specs)}
		_, err := x.apply(t, c1)
		must(t, err)
		_, err = y.apply(t, c2)
		must(t, err)
		for j := range c1.Txns {
			if c1.Txns[j].Result != c2.Txns[j].Result {
				t.Fatalf("command %d txn %d: %+v vs %+v", i, j, c1.Txns[j].Result, c2.Txns[j].Result)
			}
		}
		if i%20 == 0 {
			requireSameContents(t, x, y, fmt.Sprintf("after command %d", i))
		}
	}
	requireSameContents(t, x, y, "at the end")
	x.reopen(t)
	y.reopen(t)
	if rx, lx := recordsOf(x.c); true {
		ry, ly := recordsOf(y.c)
		if !maps.Equal(rx, ry) || lx != ly || lx == 0 {
			t.Fatalf("reopened: %v/%d vs %v/%d", rx, lx, ry, ly)
		}
	}
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
			must(t, err)
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
			must(t, err)
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
		must(t, a.r.ApplyEntries(es))
		for _, e := range es {
			results[0] = append(results[0], e.Result)
			if e.Result.Duplicate {
				if e.Result.Txns != nil {
					t.Fatalf("entry %d: a duplicate has Txn results %+v", e.Index, e.Result.Txns)
				}
				continue
			}
			if len(e.Result.Txns) != len(e.Cmd.Txns) {
				t.Fatalf("entry %d: %d Txn results for %d Txns", e.Index, len(e.Result.Txns), len(e.Cmd.Txns))
			}
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
		must(t, b.r.ApplyEntries(es))
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
		if x.FirstTS != y.FirstTS || x.Duplicate != y.Duplicate || !slices.Equal(x.Txns, y.Txns) || (x.Err == nil) != (y.Err == nil) {
			t.Fatalf("entry %d: %+v vs %+v", i, x, y)
		}
		for _, r := range x.Txns {
			if r.Failed == 0 {
				applied++
			} else {
				failed++
			}
		}
	}
	if applied < 50 || failed < 20 {
		t.Fatalf("%d Txns applied, %d failed: the test covers too little", applied, failed)
	}
	_, ha := a.contents(t)
	_, hb := b.contents(t)
	if ha != hb {
		t.Fatalf("replica digests differ: %x %x", ha[:8], hb[:8])
	}
	if ra, la := recordsOf(a.r.core); true {
		rb, lb := recordsOf(b.r.core)
		if !maps.Equal(ra, rb) || la != lb {
			t.Fatalf("versions differ: %v/%d vs %v/%d", ra, la, rb, lb)
		}
		// The model, which skipped the duplicates, agrees.
		rs, ls := recordsOf(shadow.c)
		if !maps.Equal(ra, rs) || la != ls {
			t.Fatalf("versions %v/%d, model %v/%d", ra, la, rs, ls)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(durable) != len(appliedWrites) {
		t.Fatalf("OnDurable listed %d record writes, %d applied", len(durable), len(appliedWrites))
	}
	for i := range durable {
		x, y := durable[i], appliedWrites[i]
		if !bytes.Equal(x.Key, y.Key) || !bytes.Equal(x.Value, y.Value) || x.Delete != y.Delete || x.Version != y.Version {
			t.Fatalf("durable write %d: %+v, want %+v", i, x, y)
		}
		if i > 0 && x.Version != 0 && durable[i-1].Version != 0 && x.Version <= durable[i-1].Version {
			t.Fatalf("durable write %d: version %d after %d", i, x.Version, durable[i-1].Version)
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
	must(t, tr.r.ApplyEntries(es))
	if es[0].Result.Err == nil || es[0].Result.Txns != nil {
		t.Fatalf("entry 1: %+v", es[0].Result)
	}
	if r := es[1].Result; r.Err != nil || len(r.Txns) != 1 || r.Txns[0].Failed != 0 || r.Txns[0].FirstVersion != 1 {
		t.Fatalf("entry 2: %+v", r)
	}
}

// testShard opens a Shard on an in-memory Pebble.
func testShard(t *testing.T, fs vfs.FS, onDurable func(Durable)) (*Shard, *pebble.DB) {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: fs, Logger: quietLogger{}})
	must(t, err)
	s, err := Open(Config{ID: 2, DB: db, Layout: testParams, Sync: true, FlushInterval: time.Millisecond,
		MaxBatchMessages: 1000, MaxBatchBytes: 1 << 20, QueueLength: 64, MaintenanceInterval: time.Hour,
		Now: time.Now, OnDurable: onDurable, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	must(t, err)
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
		t.Fatal(err)
	}
	// A Txn whose condition fails: Wait returns nil, Err says so.
	tx := &Txn{Conds: []Cond{cond("ctr/0", 1)}, Writes: []RecordWrite{put("ctr/0", "x")}, Messages: []*message.Message{msg("txn/x", "no")}}
	w, err := s.SubmitTxns(ctx, []*Txn{tx}, 1)
	must(t, err)
	must(t, w.Wait())
	if !errors.Is(tx.Err(), ErrConditionFailed) || tx.Messages[0].Timestamp != 0 {
		t.Fatalf("failing Txn: %v, message at %d", tx.Err(), tx.Messages[0].Timestamp)
	}
	// Invalid Txns are refused before they are queued.
	for _, bad := range []*Txn{
		{Writes: []RecordWrite{{Key: nil, Value: []byte("v")}}},
		{Writes: []RecordWrite{{Key: []byte("k"), Value: []byte("v"), Delete: true}}},
		{Writes: []RecordWrite{{Key: make([]byte, MaxRecordKey+1)}}},
		{Conds: []Cond{{}}},
	} {
		if _, err := s.SubmitTxns(ctx, []*Txn{bad}, 1); !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("invalid Txn %+v: %v", bad, err)
		}
	}

	mu.Lock()
	if len(durRecs) != clients*rounds {
		t.Fatalf("OnDurable listed %d record writes, want %d", len(durRecs), clients*rounds)
	}
	for i := 1; i < len(durRecs); i++ {
		if durRecs[i].Version != durRecs[i-1].Version+1 {
			t.Fatalf("durable record %d: version %d after %d", i, durRecs[i].Version, durRecs[i-1].Version)
		}
	}
	if len(durMsgs) != clients*rounds+50 {
		t.Fatalf("OnDurable listed %d messages, want %d", len(durMsgs), clients*rounds+50)
	}
	for i := 1; i < len(durMsgs); i++ {
		if durMsgs[i].Timestamp <= durMsgs[i-1].Timestamp {
			t.Fatalf("OnDurable message %d (%s) at %d after %d (%s)", i, durMsgs[i].Topic, durMsgs[i].Timestamp, durMsgs[i-1].Timestamp, durMsgs[i-1].Topic)
		}
	}
	lastVersion := durRecs[len(durRecs)-1].Version
	mu.Unlock()

	scan := func(s *Shard) map[string]string {
		out := map[string]string{}
		must(t, s.ScanRecords(ctx, []byte("ctr/"), func(k, v []byte, ver uint64) bool {
			out[string(k)] = fmt.Sprintf("%s@%d", v, ver)
			return true
		}))
		return out
	}
	before := scan(s)
	if len(before) != clients {
		t.Fatalf("scan %v", before)
	}
	must(t, s.Close())
	must(t, db.Close())
	s, db = testShard(t, fs, nil)
	defer db.Close()
	defer s.Close()
	if after := scan(s); !maps.Equal(before, after) {
		t.Fatalf("after reopen %v, want %v", after, before)
	}
	tx = &Txn{Writes: []RecordWrite{put("new", "v")}}
	w, err = s.SubmitTxns(ctx, []*Txn{tx}, 1)
	must(t, err)
	must(t, w.Wait())
	if tx.Writes[0].Version != lastVersion+1 {
		t.Fatalf("after reopen: version %d, want %d", tx.Writes[0].Version, lastVersion+1)
	}
}

// TestRecordReadWaitsForDurability: Record does not return a write whose batch is not yet
// durable: it waits until it is (invariant 3), or for its context.
func TestRecordReadWaitsForDurability(t *testing.T) {
	tc := openTestCore(t, nil, 1000)
	b := tc.db.NewBatch()
	tx := &Txn{Writes: []RecordWrite{put("k", "v")}}
	a, err := tc.c.apply(b, &Command{Time: 1000, Txns: []*Txn{tx}})
	must(t, err)
	must(t, b.Commit(pebble.NoSync))
	pub := a.Commit() // committed, not yet published as durable
	// A cancelled context: Record returns at once if the write is durable, else with the
	// context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := tc.c.Record(ctx, []byte("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Record before durability: %v, want it to wait", err)
	}
	done := make(chan error, 1)
	go func() {
		v, ver, err := tc.c.Record(context.Background(), []byte("k"))
		if err == nil && (string(v) != "v" || ver != 1) {
			err = fmt.Errorf("got %q@%d", v, ver)
		}
		done <- err
	}()
	tc.c.publishDurable(pub)
	must(t, <-done)
	b.Close()
}
