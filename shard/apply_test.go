package shard

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// quietLogger drops Pebble's info lines.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)         {}
func (quietLogger) Errorf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (quietLogger) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }

var testParams = layout.Params{Kind: stream.LayoutLTS, Thresholds: []int{4, 2}}

// testCore is a core on an in-memory Pebble that can be closed and reopened.
type testCore struct {
	fs     vfs.FS
	db     *pebble.DB
	c      *core
	prefix []byte
}

func openTestCore(t testing.TB, prefix []byte, since uint64) *testCore {
	t.Helper()
	tc := &testCore{fs: vfs.NewMem(), prefix: prefix}
	tc.open(t)
	require.NoError(t, tc.c.create(since, false))
	t.Cleanup(func() { tc.db.Close() })
	return tc
}

func (tc *testCore) open(t testing.TB) {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: tc.fs, Logger: quietLogger{}})
	require.NoError(t, err)
	tc.db = db
	tc.c = newCore(3, db, tc.prefix, testParams)
}

// reopen closes the Pebble and loads the shard from it, as after a restart.
func (tc *testCore) reopen(t testing.TB) {
	t.Helper()
	require.NoError(t, tc.db.Close())
	tc.open(t)
	found, err := tc.c.load()
	require.NoError(t, err)
	require.True(t, found, "reopened shard not found")
}

// apply applies cmd and commits its batch, as the writer does.
func (tc *testCore) apply(t testing.TB, cmd *Command) (*Applied, error) {
	t.Helper()
	b := tc.db.NewBatch()
	a, err := tc.c.apply(b, cmd)
	if err != nil {
		b.Close()
		return nil, err
	}
	require.NoError(t, b.Commit(pebble.NoSync))
	tc.c.publishDurable(a.Commit())
	return a, nil
}

// applyAbort applies cmd and then discards its batch, as the writer does when the commit fails.
func (tc *testCore) applyAbort(t testing.TB, cmd *Command) {
	t.Helper()
	b := tc.db.NewBatch()
	defer b.Close()
	a, err := tc.c.apply(b, cmd)
	if err != nil {
		return
	}
	a.Abort()
}

// contents returns every key and value of the Pebble, as text for a diff, and a digest.
func (tc *testCore) contents(t testing.TB) (dump []string, digest [32]byte) {
	t.Helper()
	it, err := tc.db.NewIter(nil)
	require.NoError(t, err)
	defer it.Close()
	h := sha256.New()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		require.NoError(t, err)
		var n [8]byte
		h.Write(binary.BigEndian.AppendUint32(n[:0], uint32(len(it.Key()))))
		h.Write(it.Key())
		h.Write(binary.BigEndian.AppendUint32(n[:0], uint32(len(v))))
		h.Write(v)
		dump = append(dump, fmt.Sprintf("%x = %x", it.Key(), v))
	}
	require.NoError(t, it.Error())
	h.Sum(digest[:0])
	return dump, digest
}

// stateOf renders the in-memory state of a core: table, last timestamp, every generation's
// message count and trie.
func stateOf(c *core) string {
	var b strings.Builder
	fmt.Fprintf(&b, "last=%d table=%x\n", c.lastTS, c.st.table.AppendBinary(nil))
	for _, g := range c.st.table.Gens {
		if n := c.st.counts[g.ID]; n != nil {
			fmt.Fprintf(&b, "gen %d: %d messages\n", g.ID, n.Load())
		}
		b.WriteString(c.st.gens[g.ID].Dump())
	}
	return b.String()
}

func requireSameContents(t *testing.T, a, b *testCore, what string) {
	t.Helper()
	da, ha := a.contents(t)
	db, hb := b.contents(t)
	if ha == hb {
		return
	}
	for i := range min(len(da), len(db)) {
		require.Equal(t, da[i], db[i], "%s: contents differ at key %d", what, i)
	}
	require.Failf(t, "contents differ", "%s: %d keys vs %d keys", what, len(da), len(db))
}

// cmdSpec describes a command; build makes a fresh Command from it for each core, since Apply
// sets the messages' timestamps.
type cmdSpec struct {
	time   uint64
	addGen bool
	drop   []stream.GenerationID
	topics []string
}

func (s cmdSpec) build() *Command {
	cmd := &Command{Time: s.time, AddGeneration: s.addGen, Drop: s.drop}
	for i, tp := range s.topics {
		cmd.Messages = append(cmd.Messages, &message.Message{
			ClientID: fmt.Sprintf("c%d", i%7), Topic: tp, QoS: byte(i % 3), Retain: i%5 == 0,
			Payload: []byte(fmt.Sprintf("%s #%d at %d", tp, i, s.time)),
		})
	}
	return cmd
}

func randomTopic(rng *rand.Rand) string {
	roots := []string{"dev", "app", "$SYS", "x", "y", "z", "w", "v"}
	levels := []string{roots[rng.IntN(len(roots))]}
	for d := rng.IntN(4); d > 0; d-- {
		levels = append(levels, fmt.Sprintf("l%d", rng.IntN(12)))
	}
	return strings.Join(levels, "/")
}

// randomCommands returns a sequence of commands: messages over many topics with a proposal
// time that sometimes goes backwards, generation adds, and drops (some of which fail).
func randomCommands(rng *rand.Rand, n int) []cmdSpec {
	var out []cmdSpec
	now := uint64(1_000_000)
	nextGen, oldest := stream.GenerationID(2), stream.GenerationID(1)
	for range n {
		switch r := rng.IntN(20); {
		case r < 1:
			now += uint64(rng.IntN(100))
			out = append(out, cmdSpec{time: now, addGen: true})
			nextGen++
		case r < 2 && oldest+1 < nextGen:
			out = append(out, cmdSpec{time: now, drop: []stream.GenerationID{oldest}})
			oldest++
		case r < 3:
			// Fails: the current generation, or one that does not exist.
			out = append(out, cmdSpec{time: now, drop: []stream.GenerationID{[]stream.GenerationID{nextGen - 1, nextGen + 5}[rng.IntN(2)]}})
		default:
			s := cmdSpec{time: now}
			if rng.IntN(4) == 0 {
				s.time -= uint64(rng.IntN(1000)) // the clock went back
			} else {
				now += uint64(rng.IntN(50))
				s.time = now
			}
			if rng.IntN(10) == 0 {
				s.addGen = true
				nextGen++
			}
			for range 1 + rng.IntN(30) {
				s.topics = append(s.topics, randomTopic(rng))
			}
			out = append(out, s)
		}
	}
	return out
}

// TestApplyDeterministic: the same commands applied to two fresh shards write identical bytes and
// assign identical timestamps; a third shard that restarts along the way, and a fourth that
// applies and aborts junk commands in between, end up identical too.
func TestApplyDeterministic(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 20))
			prefix := layout.ShardPrefix(3)
			if seed%2 == 0 {
				prefix = nil
			}
			cores := make([]*testCore, 4)
			for i := range cores {
				cores[i] = openTestCore(t, prefix, 999_000)
			}
			cmds := randomCommands(rng, 300)
			for i, spec := range cmds {
				if i%50 == 49 {
					cores[2].reopen(t)
				}
				if rng.IntN(4) == 0 {
					junk := randomCommands(rng, 1)[0]
					junk.time = spec.time + uint64(rng.IntN(3000)) // may move the clock forward
					if rng.IntN(2) == 0 {
						junk.drop = append(junk.drop, 12345) // fails after doing some work
					}
					before := stateOf(cores[3].c)
					cores[3].applyAbort(t, junk.build())
					require.Equal(t, before, stateOf(cores[3].c), "command %d: state after abort", i)
				}
				var ts [][]uint64
				var errs []error
				for _, tc := range cores {
					a, err := tc.apply(t, spec.build())
					errs = append(errs, err)
					if a != nil {
						ts = append(ts, a.Timestamps)
					} else {
						ts = append(ts, nil)
					}
				}
				for j := 1; j < len(cores); j++ {
					require.Equal(t, fmt.Sprint(errs[0]), fmt.Sprint(errs[j]), "command %d: core %d error, as core 0", i, j)
					require.True(t, slices.Equal(ts[j], ts[0]), "command %d: core %d timestamps %v, core 0 %v", i, j, ts[j], ts[0])
				}
				if errs[0] != nil {
					require.True(t, errors.Is(errs[0], ErrGenerationNotFound) || errors.Is(errs[0], ErrCurrentGeneration),
						"command %d: %v", i, errs[0])
				}
				// Invariant 1: strictly increasing, and within the current generation.
				if cur := cores[0].c.st.table.Current(); len(ts[0]) > 0 {
					require.GreaterOrEqual(t, ts[0][0], cur.Since, "command %d: first ts, not before the current generation's since", i)
				}
				for k := 1; k < len(ts[0]); k++ {
					require.Greater(t, ts[0][k], ts[0][k-1], "command %d: timestamps %v", i, ts[0])
				}
				if i%50 == 0 || i == len(cmds)-1 {
					for j := 1; j < len(cores); j++ {
						requireSameContents(t, cores[0], cores[j], fmt.Sprintf("after command %d, core %d", i, j))
						require.Equal(t, stateOf(cores[0].c), stateOf(cores[j].c), "after command %d, core %d state, as core 0", i, j)
					}
				}
			}
			require.GreaterOrEqual(t, len(cores[0].c.st.table.Gens), 2, "generations: the commands did not exercise rotation")
		})
	}
}

// TestApplyTimestamps pins ts = max(last+1, cmd.Time), with a clock that goes backwards, across
// generation adds and a restart.
func TestApplyTimestamps(t *testing.T) {
	tc := openTestCore(t, nil, 1000)
	step := func(spec cmdSpec, want ...uint64) {
		t.Helper()
		a, err := tc.apply(t, spec.build())
		require.NoError(t, err)
		require.True(t, slices.Equal(a.Timestamps, want), "Time %d: timestamps %v, want %v", spec.time, a.Timestamps, want)
	}
	step(cmdSpec{time: 1000, topics: []string{"a", "b", "c"}}, 1000, 1001, 1002)
	step(cmdSpec{time: 500, topics: []string{"a", "b"}}, 1003, 1004) // clock went back
	step(cmdSpec{time: 2000, topics: []string{"a"}}, 2000)
	step(cmdSpec{time: 2000, topics: []string{"a"}}, 2001) // same time
	step(cmdSpec{time: 1})                                 // no messages, no timestamp
	step(cmdSpec{time: 1, topics: []string{"a"}}, 2002)
	// A generation added with a clock behind the last timestamp starts after it, and the
	// command's messages land in it.
	step(cmdSpec{time: 1500, addGen: true, topics: []string{"a", "b"}}, 2003, 2004)
	g := tc.c.st.table.Current()
	require.True(t, g.ID == 2 && g.Since == 2003, "new generation %v, want ID 2 since 2003", g)
	g, _ = tc.c.st.table.Get(1)
	require.Equal(t, uint64(2003), g.Until, "sealed generation %v", g)
	// A generation added ahead of the last timestamp moves the clock to its since.
	step(cmdSpec{time: 9000, addGen: true})
	step(cmdSpec{time: 10, topics: []string{"a"}}, 9000)
	tc.reopen(t)
	step(cmdSpec{time: 10, topics: []string{"a"}}, 9001)
	step(cmdSpec{time: 9500, topics: []string{"a"}}, 9500)
	// Two generation adds at the same time still give each a distinct since.
	step(cmdSpec{time: 9500, addGen: true})
	step(cmdSpec{time: 9500, addGen: true})
	gens := tc.c.st.table.Gens
	n := len(gens)
	require.True(t, gens[n-1].Since == 9502 && gens[n-2].Since == 9501, "generations %v, want the last two since 9501 and 9502", gens)
	step(cmdSpec{time: 0, topics: []string{"a"}}, 9502)
}

// TestApplyAbort: after an Abort (of a command that failed half-way, or of one whose batch was
// never committed) the shard's state equals the state before, and the next command writes the
// same bytes as on a shard that never saw the aborted one.
func TestApplyAbort(t *testing.T) {
	history := []cmdSpec{
		{time: 100, topics: []string{"dev/a/t", "dev/b/t", "dev/c/t", "x/y"}},
		{time: 200, addGen: true, topics: []string{"dev/d/t", "dev/e/t", "dev/f/t", "dev/g/t"}},
		{time: 300, topics: []string{"app/1", "$SYS/a"}},
	}
	next := cmdSpec{time: 400, topics: []string{"dev/h/t", "dev/a/t", "q/r/s", "app/2", "app/3", "$SYS/b"}}
	for _, tc := range []struct {
		name  string
		junk  cmdSpec
		fails bool
	}{
		{"messages, batch discarded", cmdSpec{time: 350, topics: []string{"dev/z/t", "q/r/s", "new/topic", "app/9"}}, false},
		{"clock ahead, batch discarded", cmdSpec{time: 100000, topics: []string{"q/r/s"}}, false},
		{"generation and messages, batch discarded", cmdSpec{time: 350, addGen: true, topics: []string{"q/r/s", "dev/a/t"}}, false},
		{"drop, batch discarded", cmdSpec{time: 350, drop: []stream.GenerationID{1}, topics: []string{"q/r/s"}}, false},
		{"generation then a failing drop", cmdSpec{time: 350, addGen: true, drop: []stream.GenerationID{77}}, true},
		{"drop then a failing drop", cmdSpec{time: 350, drop: []stream.GenerationID{1, 3}}, true},
		{"generation, drop, failing drop", cmdSpec{time: 350, addGen: true, drop: []stream.GenerationID{1, 2, 2}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aborted, fresh := openTestCore(t, nil, 50), openTestCore(t, nil, 50)
			for _, h := range history {
				for _, c := range []*testCore{aborted, fresh} {
					_, err := c.apply(t, h.build())
					require.NoError(t, err)
				}
			}
			before := stateOf(aborted.c)
			_, digestBefore := aborted.contents(t)
			if tc.fails {
				b := aborted.db.NewBatch()
				_, err := aborted.c.apply(b, tc.junk.build())
				require.Error(t, err, "junk command applied")
				b.Close()
			} else {
				aborted.applyAbort(t, tc.junk.build())
			}
			require.Equal(t, before, stateOf(aborted.c), "state after abort")
			_, d := aborted.contents(t)
			require.Equal(t, digestBefore, d, "abort changed the Pebble")
			var ts [2][]uint64
			for i, c := range []*testCore{aborted, fresh} {
				a, err := c.apply(t, next.build())
				require.NoError(t, err)
				ts[i] = a.Timestamps
			}
			require.True(t, slices.Equal(ts[0], ts[1]), "timestamps %v, fresh %v", ts[0], ts[1])
			requireSameContents(t, aborted, fresh, "after the next command")
			require.Equal(t, stateOf(fresh.c), stateOf(aborted.c), "state, as on the fresh core")
		})
	}
}

// TestApplyDropIsRangeDeletion: a dropped generation's keys are gone, the others untouched.
func TestApplyDropIsRangeDeletion(t *testing.T) {
	tc := openTestCore(t, layout.ShardPrefix(9), 10)
	for _, spec := range []cmdSpec{
		{time: 100, topics: []string{"a/b", "c/d"}},
		{time: 200, addGen: true, topics: []string{"a/b", "e/f"}},
		{time: 300, addGen: true, topics: []string{"a/b"}},
	} {
		_, err := tc.apply(t, spec.build())
		require.NoError(t, err)
	}
	count := func(gen stream.GenerationID) int {
		n := 0
		for _, sp := range layout.GenerationSpans(tc.prefix, gen) {
			it, err := tc.db.NewIter(&pebble.IterOptions{LowerBound: sp[0], UpperBound: sp[1]})
			require.NoError(t, err)
			for ok := it.First(); ok; ok = it.Next() {
				n++
			}
			require.NoError(t, it.Close())
		}
		return n
	}
	n1, n2 := count(1), count(2)
	require.NotZero(t, n1, "generation 1 keys")
	require.NotZero(t, n2, "generation 2 keys")
	a, err := tc.apply(t, cmdSpec{time: 400, drop: []stream.GenerationID{1}}.build())
	require.NoError(t, err)
	require.Equal(t, []stream.GenerationID{1}, a.Dropped, "applied %+v", a)
	require.Len(t, a.Spans, 2, "applied %+v", a)
	require.Zero(t, count(1), "generation 1 keys after drop")
	require.Equal(t, n2, count(2), "generation 2 keys after drop")
	tc.reopen(t)
	_, ok := tc.c.st.table.Get(1)
	require.False(t, ok, "dropped generation reloaded")
	_, err = tc.apply(t, cmdSpec{time: 500, drop: []stream.GenerationID{1}}.build())
	require.ErrorIs(t, err, ErrGenerationNotFound, "second drop")
	_, err = tc.apply(t, cmdSpec{time: 500, drop: []stream.GenerationID{3}}.build())
	require.ErrorIs(t, err, ErrCurrentGeneration, "drop of current")
}

// BenchmarkApply measures Apply plus an unsynced batch commit: commands of 100 messages with
// 1 KiB payloads over 1000 publishers' topics.
func BenchmarkApply(b *testing.B) {
	const perCmd, publishers, payload = 100, 1000, 1024
	tc := openTestCore(b, nil, 1)
	tc.c.params = layout.Params{Kind: stream.LayoutLTS} // default thresholds
	rng := rand.New(rand.NewPCG(1, 2))
	body := make([]byte, payload)
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	kinds := []string{"temp", "humidity", "status"}
	cmd := &Command{}
	for i := range perCmd {
		p := rng.IntN(publishers)
		cmd.Messages = append(cmd.Messages, &message.Message{
			ClientID: fmt.Sprintf("p%d", p), Topic: fmt.Sprintf("site/%d/dev/p%d/%s", p%10, p, kinds[i%3]),
			Payload: body, QoS: 1,
		})
	}
	b.SetBytes(perCmd * payload)
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		// A new set of publishers each round, so the trie keeps seeing both known and new topics.
		for _, m := range cmd.Messages[:10] {
			p := rng.IntN(publishers)
			m.Topic = fmt.Sprintf("site/%d/dev/p%d/%s", p%10, p, kinds[p%3])
		}
		cmd.Time = uint64(n)
		batch := tc.db.NewBatch()
		a, err := tc.c.apply(batch, cmd)
		if err != nil {
			b.Fatal(err)
		}
		if err := batch.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		tc.c.publishDurable(a.Commit())
		batch.Close()
		n++
	}
	b.ReportMetric(float64(n*perCmd)/b.Elapsed().Seconds(), "msgs/s")
}
