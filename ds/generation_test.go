package ds_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/layout"
	"github.com/stretchr/testify/require"
)

// TestRotation: AddGeneration seals every shard's current generation. A reader of a sealed
// stream gets the rest of it and then ErrEndOfStream; Streams lists the new generation after
// the old one; later messages go to the new generation only; the new generation starts from
// the old one's '+' edges, so a topic that had its own literal stream now joins the '+' stream.
func TestRotation(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.WildcardThresholds = []int{4, 2}
	}))
	// "room/1" and "room/2" are literal; "room/3".."room/5" fold into "room/+".
	var old []ds.Ref
	for i := range 5 {
		old = append(old, db.store(msg("c", fmt.Sprintf("room/%d", i+1), i))...)
	}
	for i := range 6 {
		old = append(old, db.store(msg("c", "room/4", 10+i))...)
	}
	streams, err := db.Streams("room/#", time.Time{})
	require.NoError(t, err)
	require.Equal(t, []string{"room/1", "room/2", "room/+"}, patterns(streams))
	plusStream := streams[2]
	require.Equal(t, ds.GenerationID(1), plusStream.Generation)

	// A reader in the middle of the '+' stream, pinned and unpinned.
	itAll, err := db.Iterator(plusStream, "room/+", time.Time{})
	require.NoError(t, err)
	first, itAll, err := db.Next(t.Context(), itAll, 2)
	require.NoError(t, err)
	require.Len(t, first, 2)
	itPinned, err := db.Iterator(plusStream, "room/4", time.Time{})
	require.NoError(t, err)
	pinnedFirst, itPinned, err := db.Next(t.Context(), itPinned, 1)
	require.NoError(t, err)
	require.Len(t, pinnedFirst, 1)

	gensBefore, err := db.Generations()
	require.NoError(t, err)
	require.Len(t, gensBefore, 1)
	changed := db.StreamsChanged()
	require.NoError(t, db.AddGeneration(t.Context()))
	requireClosed(t, changed, "StreamsChanged after AddGeneration")
	gens, err := db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, 2)
	require.Equal(t, ds.GenerationID(1), gens[0].ID)
	require.Equal(t, ds.GenerationID(2), gens[1].ID)
	require.NotZero(t, gens[0].Until, "generation 1 not sealed")
	require.Equal(t, gens[0].Until, gens[1].Since)
	require.Zero(t, gens[1].Until)
	require.Greater(t, gens[0].Until, old[len(old)-1].Timestamp)

	// The new generation inherited the '+' edge under "room" before any message reached it.
	dump, err := db.DumpLayout(0, 2)
	require.NoError(t, err)
	require.Contains(t, dump, "\"room\"")
	require.Contains(t, dump, "+ #")
	require.NotContains(t, dump, "\"1\"", "literal edges are not inherited:\n%s", dump)

	// Messages after the rotation: "room/1" had a literal stream in generation 1; in
	// generation 2 "room" has a '+' edge and no literal children, so it goes to "room/+".
	var fresh []ds.Ref
	for i, tp := range []string{"room/1", "room/4", "room/9"} {
		fresh = append(fresh, db.store(msg("c", tp, 100+i))...)
	}
	for _, r := range fresh {
		require.GreaterOrEqual(t, r.Timestamp, gens[1].Since)
	}

	// The old readers get the rest of generation 1, and then ErrEndOfStream, never a message
	// of generation 2.
	rest, end, err := db.drain(itAll, 2)
	require.ErrorIs(t, err, ds.ErrEndOfStream)
	require.Len(t, rest, 1+7+1-2) // room/3, room/4 ×7, room/5, minus the two read
	for _, m := range append(first, rest...) {
		require.Less(t, m.Timestamp, gens[0].Until)
	}
	pinnedRest, _, err := db.drain(itPinned, 10)
	require.ErrorIs(t, err, ds.ErrEndOfStream)
	require.Len(t, pinnedRest, 6)
	// Once more: still the end.
	msgs, again, err := db.Next(t.Context(), end, 10)
	require.True(t, errors.Is(err, ds.ErrEndOfStream), "got %v", err)
	require.Empty(t, msgs)
	require.Equal(t, end, again)

	// Streams: generation 1's streams, then generation 2's single "room/+".
	streams, err = db.Streams("room/#", time.Time{})
	require.NoError(t, err)
	require.Equal(t, []string{"room/1", "room/2", "room/+", "room/+"}, patterns(streams))
	require.Equal(t, ds.GenerationID(2), streams[3].Generation)
	// Since the rotation: generation 2 only.
	streams2, err := db.Streams("room/#", ds.Time(gens[1].Since))
	require.NoError(t, err)
	require.Equal(t, streams[3:], streams2)
	msgs, _, err = db.drain(mustIterator(t, db, streams[3], "room/#"), 10)
	require.NoError(t, err) // current generation: an empty batch, not the end
	require.Equal(t, fresh, refsOf(msgs))
	// The literal stream "room/1" of generation 1 does not get the new "room/1".
	msgs, _, err = db.drain(mustIterator(t, db, streams[0], "room/1"), 10)
	require.ErrorIs(t, err, ds.ErrEndOfStream)
	require.Equal(t, old[:1], refsOf(msgs))

	// The whole history reads in order: generation 1, then 2.
	all := db.readFilter("room/#", time.Time{}, 3)
	require.Len(t, all, len(old)+len(fresh))
	require.ElementsMatch(t, append(slices.Clone(old), fresh...), refsOf(all))

	// After a reopen the generations and their streams are the same.
	db = db.reopen(nil)
	gens2, err := db.Generations()
	require.NoError(t, err)
	require.Equal(t, gens, gens2)
	streams3, err := db.Streams("room/#", time.Time{})
	require.NoError(t, err)
	require.Equal(t, streams, streams3)
}

// TestAutomaticRotation: with a fake clock, every shard adds a generation once GenerationSpan
// has passed, and later messages land in it.
func TestAutomaticRotation(t *testing.T) {
	clock := newStepClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.GenerationSpan = time.Hour
		o.Retention = ds.RetainForever
		o.Expert.Now = clock.Now
		o.Expert.MaintenanceInterval = time.Millisecond
	}))
	before := db.store(msg("a", "t/1", 0), msg("b", "t/1", 1), msg("c", "t/2", 2))
	for _, r := range before {
		require.GreaterOrEqual(t, r.Timestamp, uint64(clock.Now().UnixMicro()))
	}
	require.Equal(t, ds.GenerationID(1), onlyGeneration(t, db, 0))

	clock.Advance(time.Hour - time.Microsecond)
	// No rotation before the span. A negative cannot be awaited; round trips through every
	// shard's writer goroutine, which also runs the maintenance, give an early rotation time
	// to show.
	for i := range 20 {
		db.store(msg(fmt.Sprint(i), "t/1", 3))
	}
	for sh, ids := range generationsByShard(t, db.DB) {
		require.Len(t, ids, 1, "shard %d rotated before the span", sh)
	}

	changed := db.StreamsChanged()
	clock.Advance(time.Microsecond)
	eventually(t, func() bool {
		for _, ids := range generationsByShard(t, db.DB) {
			if len(ids) != 2 {
				return false
			}
		}
		return true
	}, "every shard rotates")
	requireClosed(t, changed, "StreamsChanged after rotation")
	gens, err := db.Generations()
	require.NoError(t, err)
	for _, g := range gens {
		if g.ID == 2 {
			// The new generation starts at the clock's time, or just after the last
			// timestamp of the old one if that is later.
			require.GreaterOrEqual(t, g.Since, ds.Micros(clock.Now()), "shard %d", g.Shard)
			require.Equal(t, ds.Time(g.Since), g.SinceTime())
		}
	}
	after := db.store(msg("a", "t/1", 10), msg("b", "t/3", 11))
	for _, s := range mustStreams(t, db, "#") {
		msgs, _, err := db.drain(mustIterator(t, db, s, "#"), 100)
		for _, m := range msgs {
			r := ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}
			require.Equal(t, slices.Contains(after, r), s.Generation == 2, "%v in %s", r, s)
		}
		if s.Generation == 1 {
			require.ErrorIs(t, err, ds.ErrEndOfStream)
		} else {
			require.NoError(t, err)
		}
	}
}

// TestDropGeneration: dropping a sealed generation removes it (its readers get
// ErrGenerationNotFound, Streams and Generations no longer list it, its keys are gone from
// Pebble) and leaves the others readable; dropping the current or an unknown generation fails.
func TestDropGeneration(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{2} }))
	var gen1, gen2 []ds.Message
	for i := range 40 {
		m := msg(fmt.Sprintf("c%d", i%8), fmt.Sprintf("d/%d/x", i%5), i)
		gen1 = append(gen1, stored(m, db.store(m)[0]))
	}
	iters := map[ds.ShardID]ds.Iterator{}
	for _, s := range mustStreams(t, db, "d/+/x") {
		iters[s.Shard] = mustIterator(t, db, s, "d/3/x")
	}
	require.Len(t, iters, 4, "every shard has messages")
	require.NoError(t, db.AddGeneration(t.Context()))
	for i := range 40 {
		m := msg(fmt.Sprintf("c%d", i%8), fmt.Sprintf("d/%d/x", i%5), 100+i)
		gen2 = append(gen2, stored(m, db.store(m)[0]))
	}

	// Every generation counts its messages, per shard.
	perShard := func(msgs []ds.Message) map[ds.ShardID]uint64 {
		n := map[ds.ShardID]uint64{}
		for _, m := range msgs {
			n[ds.ShardID(m.Shard)]++
		}
		return n
	}
	requireCounts := func(db *testDB, gen ds.GenerationID, want map[ds.ShardID]uint64) {
		t.Helper()
		for sh := range ds.ShardID(4) {
			u, err := db.GenerationUsage(sh, gen)
			require.NoError(t, err)
			require.Equal(t, want[sh], u.Messages, "shard %d generation %d", sh, gen)
		}
	}
	requireCounts(db, 1, perShard(gen1))
	requireCounts(db, 2, perShard(gen2))
	_, err := db.GenerationUsage(0, 3)
	require.ErrorIs(t, err, ds.ErrGenerationNotFound)
	_, err = db.GenerationUsage(4, 1)
	require.ErrorIs(t, err, ds.ErrShardNotFound)

	// Errors first: they change nothing.
	err = db.DropGeneration(t.Context(), 0, 2)
	require.ErrorIs(t, err, ds.ErrCurrentGeneration)
	require.ErrorIs(t, db.DropGeneration(t.Context(), 0, 3), ds.ErrGenerationNotFound)
	require.ErrorIs(t, db.DropGeneration(t.Context(), 0, 0), ds.ErrGenerationNotFound)
	require.ErrorIs(t, db.DropGeneration(t.Context(), 4, 1), ds.ErrShardNotFound)
	require.ElementsMatch(t, append(slices.Clone(gen1), gen2...), normalizedAll(db.readAll()))

	changed := db.StreamsChanged()
	for sh := range ds.ShardID(4) {
		require.NoError(t, db.DropGeneration(t.Context(), sh, 1))
	}
	requireClosed(t, changed, "StreamsChanged after DropGeneration")
	require.ErrorIs(t, db.DropGeneration(t.Context(), 0, 1), ds.ErrGenerationNotFound, "dropped twice")

	check := func(db *testDB) {
		t.Helper()
		for sh, ids := range generationsByShard(t, db.DB) {
			require.Equal(t, []ds.GenerationID{2}, ids, "shard %d", sh)
		}
		for sh, it := range iters {
			msgs, _, err := db.Next(t.Context(), it, 10)
			require.ErrorIs(t, err, ds.ErrGenerationNotFound, "shard %d", sh)
			require.Empty(t, msgs)
			b, err := it.MarshalBinary()
			require.NoError(t, err)
			it2, err := ds.UnmarshalIterator(b)
			require.NoError(t, err)
			_, _, err = db.Next(t.Context(), it2, 10)
			require.ErrorIs(t, err, ds.ErrGenerationNotFound, "shard %d", sh)
		}
		for _, s := range mustStreams(t, db, "#") {
			require.Equal(t, ds.GenerationID(2), s.Generation, "stream %s", s)
		}
		require.ElementsMatch(t, gen2, normalizedAll(db.readAll()))
		_, err := db.DumpLayout(0, 1)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound)
		_, err = db.GenerationUsage(0, 1)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound)
		requireCounts(db, 2, perShard(gen2))
	}
	check(db)
	db = db.reopen(nil)
	check(db)
	// IDs are never reused: the next generation is 3 although 1 is gone.
	require.NoError(t, db.AddGeneration(t.Context()))
	for sh, ids := range generationsByShard(t, db.DB) {
		require.Equal(t, []ds.GenerationID{2, 3}, ids, "shard %d", sh)
	}

	// The keys of generation 1 are gone from Pebble, generation 2's are there.
	require.NoError(t, db.Close())
	p, err := pebble.Open(filepath.Join(db.dir, "pebble"), &pebble.Options{ReadOnly: true})
	require.NoError(t, err)
	defer p.Close()
	for sh := range ds.ShardID(4) {
		prefix := layout.ShardPrefix(sh)
		require.Zero(t, countKeys(t, p, layout.GenerationSpans(prefix, 1)), "shard %d generation 1", sh)
		require.NotZero(t, countKeys(t, p, layout.GenerationSpans(prefix, 2)), "shard %d generation 2", sh)
	}
}

func countKeys(t *testing.T, p *pebble.DB, spans [][2][]byte) int {
	t.Helper()
	n := 0
	for _, sp := range spans {
		it, err := p.NewIter(&pebble.IterOptions{LowerBound: sp[0], UpperBound: sp[1]})
		require.NoError(t, err)
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		require.NoError(t, it.Close())
	}
	return n
}

// TestAutomaticRetention: with a fake clock, a sealed generation is dropped once its end plus
// Retention has passed, and not before; its readers then get ErrGenerationNotFound.
func TestAutomaticRetention(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := newStepClock(start)
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.GenerationSpan = time.Hour
		o.Retention = 2 * time.Hour
		o.Expert.Now = clock.Now
		o.Expert.MaintenanceInterval = time.Millisecond
	}))
	for i := range 12 {
		db.store(msg(fmt.Sprint(i), "ret/a", i))
	}
	var iters []ds.Iterator
	for _, s := range mustStreams(t, db, "ret/#") {
		iters = append(iters, mustIterator(t, db, s, "ret/#"))
	}
	waitGens := func(want []ds.GenerationID) {
		t.Helper()
		eventually(t, func() bool {
			by := generationsByShard(t, db.DB)
			for sh := range ds.ShardID(db.NShards()) {
				if !slices.Equal(by[sh], want) {
					return false
				}
			}
			return true
		}, "generations %v on every shard", want)
	}

	clock.Advance(time.Hour) // rotation: generation 1 ends at start+1h
	waitGens([]ds.GenerationID{1, 2})
	gen2 := db.store(msg("x", "ret/b", 100))

	// start+3h: generation 1 ended 2h ago, exactly Retention: kept (until + Retention < now).
	// Generation 2 is an hour old: rotation.
	clock.Advance(2 * time.Hour)
	waitGens([]ds.GenerationID{1, 2, 3})
	for _, it := range iters {
		msgs, _, err := db.drain(it, 100)
		require.ErrorIs(t, err, ds.ErrEndOfStream)
		require.NotEmpty(t, msgs)
	}
	clock.Advance(time.Microsecond)
	waitGens([]ds.GenerationID{2, 3})
	for _, it := range iters {
		_, _, err := db.Next(t.Context(), it, 100)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound)
	}
	require.Equal(t, gen2, refsOf(db.readAll()))
}

// patterns returns the streams' patterns.
func patterns(streams []ds.Stream) []string {
	var out []string
	for _, s := range streams {
		out = append(out, s.Pattern)
	}
	return out
}

// refsOf returns where the messages are stored.
func refsOf(msgs []ds.Message) []ds.Ref {
	var out []ds.Ref
	for _, m := range msgs {
		out = append(out, ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp})
	}
	return out
}

func normalizedAll(msgs []ds.Message) []ds.Message {
	out := make([]ds.Message, len(msgs))
	for i, m := range msgs {
		out[i] = normalized(m)
	}
	return out
}

func mustStreams(t testing.TB, db *testDB, filter string) []ds.Stream {
	t.Helper()
	s, err := db.Streams(filter, time.Time{})
	require.NoError(t, err)
	return s
}

func mustIterator(t testing.TB, db *testDB, s ds.Stream, filter string) ds.Iterator {
	t.Helper()
	it, err := db.Iterator(s, filter, time.Time{})
	require.NoError(t, err)
	return it
}

// onlyGeneration returns the one generation of a shard.
func onlyGeneration(t testing.TB, db *testDB, sh ds.ShardID) ds.GenerationID {
	t.Helper()
	ids := generationsByShard(t, db.DB)[sh]
	require.Len(t, ids, 1, "shard %d: %v", sh, ids)
	return ids[0]
}

// TestReaderFollowsRotations: while publishers store and generations rotate, a session that
// reads every stream to its end (ErrEndOfStream) and asks Streams again for new ones gets every
// acknowledged message exactly once, each stream in order.
func TestReaderFollowsRotations(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{3, 2} }))
	const publishers, perPub = 4, 150
	acked := make(chan ds.Ref, publishers*perPub)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPub {
				m := msg(fmt.Sprintf("pub-%d", p), fmt.Sprintf("follow/%d/%d", i%5, p), i)
				refs, err := db.Store(context.Background(), m)
				if err != nil {
					t.Error(err)
					return
				}
				acked <- refs[0]
				if p == 0 && i%30 == 29 && i < 120 { // 4 rotations while the others store
					if err := db.AddGeneration(context.Background()); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()

	type cursor struct {
		it   ds.Iterator
		done bool
	}
	cursors := map[ds.Stream]*cursor{}
	var got []ds.Message
	pass := func() {
		for _, s := range mustStreams(t, db, "follow/#") {
			if cursors[s] == nil {
				cursors[s] = &cursor{it: mustIterator(t, db, s, "follow/#")}
			}
		}
		for s, c := range cursors {
			if c.done {
				continue
			}
			msgs, next, err := db.drain(c.it, 7)
			got = append(got, msgs...)
			c.it = next
			if errors.Is(err, ds.ErrEndOfStream) {
				c.done = true
			} else {
				require.NoError(t, err, "stream %s", s)
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-db.StreamsChanged():
		case <-time.After(time.Millisecond):
		}
		pass()
	}
	require.False(t, t.Failed())
	pass() // everything is durable now
	close(acked)
	want := map[ds.Ref]bool{}
	for r := range acked {
		want[r] = true
	}
	gotBy := byRef(t, got) // no duplicates
	require.Len(t, gotBy, len(want))
	for r := range want {
		require.Contains(t, gotBy, r)
	}
	gens, err := db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, 4*5)
	// Every sealed generation's streams were read to their end.
	for s, c := range cursors {
		if s.Generation < 5 {
			require.True(t, c.done, "stream %s of a sealed generation not ended", s)
		}
	}
}

// TestClockGoesBackwards: timestamps and generations keep increasing when the clock steps
// back, within a run and across a reopen.
func TestClockGoesBackwards(t *testing.T) {
	clock := newStepClock(time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC))
	opts := fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.Retention = ds.RetainForever
		o.Expert.Now = clock.Now
	})
	db := openTestDB(t, opts)
	var refs []ds.Ref
	refs = append(refs, db.store(msg("c", "clk", 0))...)
	clock.Advance(-time.Hour)
	refs = append(refs, db.store(msg("c", "clk", 1))...)
	require.NoError(t, db.AddGeneration(t.Context()))
	refs = append(refs, db.store(msg("c", "clk", 2))...)
	db = db.reopen(nil)
	clock.Advance(-24 * time.Hour)
	refs = append(refs, db.store(msg("c", "clk", 3))...)
	require.NoError(t, db.AddGeneration(t.Context()))
	refs = append(refs, db.store(msg("c", "clk", 4), msg("c", "clk", 5))...)
	for i := 1; i < len(refs); i++ {
		require.Greater(t, refs[i].Timestamp, refs[i-1].Timestamp, "ref %d", i)
	}
	gens, err := db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, 3)
	for i := 1; i < len(gens); i++ {
		require.Equal(t, gens[i-1].Until, gens[i].Since)
		require.Greater(t, gens[i].Since, gens[i-1].Since)
	}
	require.Equal(t, refs, refsOf(db.readFilter("clk", time.Time{}, 2)))
}

// TestLayoutChangeOnReopen: a generation keeps the layout it was created with; a reopen with
// another layout or thresholds applies to new generations only, and everything stays readable.
func TestLayoutChangeOnReopen(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.WildcardThresholds = []int{2}
	}))
	var refs []ds.Ref
	for i := range 6 {
		refs = append(refs, db.store(msg("c", fmt.Sprintf("lc/%d", i), i))...)
	}
	db = db.reopen(fastOptions(func(o *ds.Options) { o.NShards = 1; o.Layout = ds.LayoutReference }))
	refs = append(refs, db.store(msg("c", "lc/9", 9))...) // still generation 1, LTS
	require.NoError(t, db.AddGeneration(t.Context()))
	for i := range 3 {
		refs = append(refs, db.store(msg("c", fmt.Sprintf("lc/%d", i), 10+i))...)
	}
	db = db.reopen(fastOptions(func(o *ds.Options) { o.NShards = 1; o.WildcardThresholds = []int{1} }))
	require.NoError(t, db.AddGeneration(t.Context()))
	refs = append(refs, db.store(msg("c", "lc/0", 20), msg("c", "lc/7", 21))...)

	gens, err := db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, 3)
	require.Equal(t, "lts[2]", gens[0].Layout.String())
	require.Equal(t, "reference", gens[1].Layout.String())
	require.Equal(t, "lts[1]", gens[2].Layout.String())
	streams := mustStreams(t, db, "lc/#")
	require.Equal(t, []string{"lc/0", "lc/1", "lc/+", "#", "lc/0", "lc/+"}, patterns(streams))
	require.Equal(t, []ds.LayoutKind{ds.LayoutLTS, ds.LayoutLTS, ds.LayoutLTS, ds.LayoutReference,
		ds.LayoutLTS, ds.LayoutLTS}, layouts(streams))
	got := refsOf(db.readFilter("lc/#", time.Time{}, 4))
	require.ElementsMatch(t, refs, got)
	for _, f := range []string{"lc/0", "lc/+", "lc/9"} {
		var want []ds.Ref
		for _, m := range db.readFilter("lc/#", time.Time{}, 100) {
			if bruteMatch(f, m.Topic) {
				want = append(want, ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp})
			}
		}
		require.ElementsMatch(t, want, refsOf(db.readFilter(f, time.Time{}, 2)), f)
	}
}

func layouts(streams []ds.Stream) []ds.LayoutKind {
	var out []ds.LayoutKind
	for _, s := range streams {
		out = append(out, s.Layout)
	}
	return out
}

// TestDropWhileReading: readers of a generation that is dropped under them get whole, correct
// batches until they get ErrGenerationNotFound. ErrEndOfStream comes only after every matching
// message of the stream was read: a drop must never look like the end of a stream.
func TestDropWhileReading(t *testing.T) {
	for round := range 5 {
		t.Run(fmt.Sprint(round), func(t *testing.T) { dropWhileReading(t) })
	}
}

func dropWhileReading(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.WildcardThresholds = []int{2}
		o.Durability = ds.Sync // the drop's fsync widens the window between commit and publish
	}))
	want := map[ds.Ref]ds.Message{}
	var batch []ds.Message
	for i := range 300 {
		batch = append(batch, msg("c", fmt.Sprintf("dr/%d/x", i%6), i))
	}
	for i, r := range db.store(batch...) {
		want[r] = stored(batch[i], r)
	}
	streams := mustStreams(t, db, "dr/#")
	require.NoError(t, db.AddGeneration(t.Context()))
	filters := []string{"dr/#", "dr/3/x", "dr/+/x"}
	// How many messages each stream holds for each filter.
	count := map[string]int{}
	for _, s := range streams {
		for _, f := range filters {
			msgs, _, err := db.drain(mustIterator(t, db, s, f), 1000)
			require.ErrorIs(t, err, ds.ErrEndOfStream)
			count[s.String()+" "+f] = len(msgs)
		}
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	for r := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			filter := filters[r%3]
			<-start
			for round := 0; ; round++ {
				for _, s := range streams {
					it, err := db.Iterator(s, filter, time.Time{})
					if err != nil {
						t.Error(err)
						return
					}
					read := 0
					for {
						msgs, next, err := db.Next(context.Background(), it, 1+r)
						if errors.Is(err, ds.ErrGenerationNotFound) {
							return
						}
						if errors.Is(err, ds.ErrEndOfStream) {
							if read != count[s.String()+" "+filter] {
								t.Errorf("reader %d: end of stream %s after %d of %d messages",
									r, s, read, count[s.String()+" "+filter])
								return
							}
							break
						}
						if err != nil {
							t.Error(err)
							return
						}
						for _, m := range msgs {
							w, ok := want[ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}]
							if !ok || !bruteMatch(filter, m.Topic) || !reflect.DeepEqual(w, normalized(m)) {
								t.Errorf("reader %d got a wrong message %+v", r, m)
								return
							}
						}
						read += len(msgs)
						it = next
					}
				}
				if round > 1000 {
					t.Errorf("reader %d never saw the drop", r)
					return
				}
			}
		}()
	}
	close(start)
	require.NoError(t, db.DropGeneration(t.Context(), 0, 1))
	wg.Wait()
}
