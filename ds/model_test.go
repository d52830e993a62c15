package ds_test

// Randomized model test, in the spirit of Pebble's metamorphic tests but smaller: a seeded random
// sequence of operations runs against a real DB (Pebble on disk) and against a dumb in-memory
// model of it, and every answer of the DB is checked against the model.
//
// The model knows, per shard, the generations (sealed, dropped, layout) and every stored message
// with its generation and timestamp. It does not know the learned topic structure, so it checks
// streams indirectly: the union of the streams that Streams returns for a filter, read to their
// end, must be exactly the model's answer; a message must always come back in the same stream;
// and an iterator that was kept across operations (stores, rotations, reopens) must have returned
// exactly what a fresh iterator over the same stream returns.
//
// Reproduce a failure with: go test -run 'Model/<config>' -model.seed=<seed> ./ds/

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

var (
	modelSeedFlag = flag.Uint64("model.seed", 0, "run TestModel with this seed only (0: the default seeds)")
	modelOpsFlag  = flag.Int("model.ops", 0, "operations per TestModel run (0: the default)")
)

// modelConfig is one configuration the random sequence runs under.
type modelConfig struct {
	name       string
	layout     ds.LayoutKind
	thresholds []int
	perShard   bool // Options.Expert.PebblePerShard
	// switchLayout makes every reopen pick another layout for new generations, so that one DB
	// holds generations of both layouts.
	switchLayout bool
}

func TestModel(t *testing.T) {
	configs := []modelConfig{
		{name: "lts-shared", layout: ds.LayoutLTS, thresholds: []int{4, 2}},
		{name: "lts-pershard", layout: ds.LayoutLTS, thresholds: []int{4, 2}, perShard: true},
		{name: "reference-shared", layout: ds.LayoutReference},
		{name: "reference-pershard", layout: ds.LayoutReference, perShard: true},
		{name: "mixed-shared", layout: ds.LayoutLTS, thresholds: []int{4, 2}, switchLayout: true},
	}
	seeds := []uint64{1, 2, uint64(time.Now().UnixNano())}
	if *modelSeedFlag != 0 {
		seeds = []uint64{*modelSeedFlag}
	}
	ops := 200
	if testing.Short() {
		ops = 80
	}
	if *modelOpsFlag > 0 {
		ops = *modelOpsFlag
	}
	for _, cfg := range configs {
		for _, seed := range seeds {
			t.Run(fmt.Sprintf("%s/seed=%d", cfg.name, seed), func(t *testing.T) {
				t.Parallel()
				t.Logf("seed %d (rerun with -run 'Model/%s' -model.seed=%d)", seed, cfg.name, seed)
				r := newModelRun(t, cfg, seed)
				r.run(ops)
			})
		}
	}
}

// modelClock is the DB's clock: it advances by 1µs per call and jumps when the test says so,
// backwards too, so timestamps come both from the clock and from last+1.
type modelClock struct{ us atomic.Int64 }

func (c *modelClock) now() time.Time { return time.UnixMicro(c.us.Add(1)) }

// modelMsg is one stored message as the model knows it.
type modelMsg struct {
	ref ds.Ref
	gen ds.GenerationID
	msg ds.Message
}

type modelGen struct {
	id           ds.GenerationID
	kind         ds.LayoutKind
	since, until uint64 // as the DB reported them; until 0 while current
	dropped      bool
	msgs         []*modelMsg // in timestamp order
}

type modelShard struct {
	gens   []*modelGen // by ID, dropped ones included
	lastTS uint64      // largest timestamp assigned in the shard
}

func (s *modelShard) current() *modelGen { return s.gens[len(s.gens)-1] }

func (s *modelShard) gen(id ds.GenerationID) *modelGen {
	for _, g := range s.gens {
		if g.id == id {
			return g
		}
	}
	return nil
}

// streamID names a stream independently of its Pattern.
type streamID struct {
	shard ds.ShardID
	gen   ds.GenerationID
	key   uint64
}

func streamIDOf(s ds.Stream) streamID {
	return streamID{shard: s.Shard, gen: s.Generation, key: s.Key}
}

// modelIter is an iterator the test keeps across operations.
type modelIter struct {
	it    ds.Iterator
	since uint64
	got   []ds.Ref // every message it returned, in order
	done  bool     // returned ErrEndOfStream
}

type modelRun struct {
	t     *testing.T
	ctx   context.Context
	rng   *rand.Rand
	cfg   modelConfig
	dir   string
	opts  ds.Options
	clock *modelClock
	db    *ds.DB

	shards   []*modelShard
	byRef    map[ds.Ref]*modelMsg
	streamOf map[ds.Ref]streamID // the stream each read message came from
	iters    []*modelIter
	nextID   int
	opLog    []string
	stats    map[string]int
	hot      []string // topics that recur, so streams hold runs of equal varying levels
}

func newModelRun(t *testing.T, cfg modelConfig, seed uint64) *modelRun {
	r := &modelRun{
		t:        t,
		ctx:      context.Background(),
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		cfg:      cfg,
		dir:      t.TempDir(),
		clock:    &modelClock{},
		byRef:    map[ds.Ref]*modelMsg{},
		streamOf: map[ds.Ref]streamID{},
		stats:    map[string]int{},
	}
	r.clock.us.Store(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro())
	r.opts = ds.Options{
		NShards:            1 + r.rng.IntN(4),
		Retention:          ds.RetainForever,
		GenerationSpan:     100000 * time.Hour, // rotation only by AddGeneration
		Layout:             cfg.layout,
		WildcardThresholds: cfg.thresholds,
		Durability:         ds.NoSync,
		FlushInterval:      -1,
		Expert: ds.ExpertOptions{
			PebblePerShard: cfg.perShard,
			MemTableBytes:  4 << 20,
			CacheBytes:     4 << 20,
			Now:            r.clock.now,
		},
	}
	if r.rng.IntN(2) == 0 {
		r.opts.FlushInterval = 200 * time.Microsecond // a group-commit window
	}
	if r.rng.IntN(3) == 0 {
		r.opts.MaxBatchMessages = 1 + r.rng.IntN(5) // small commits: one Store spans several
	}
	t.Cleanup(func() {
		if t.Failed() {
			n := min(len(r.opLog), 40)
			t.Logf("last %d of %d operations:\n%s", n, len(r.opLog), strings.Join(r.opLog[len(r.opLog)-n:], "\n"))
		}
		if r.db != nil {
			r.db.Close()
		}
	})
	r.open()
	r.shards = make([]*modelShard, r.opts.NShards)
	gens, err := r.db.Generations()
	require.NoError(t, err)
	require.Len(t, gens, r.opts.NShards, "a new DB has one generation per shard")
	for i := range r.shards {
		g := gens[i]
		require.Equal(t, ds.ShardID(i), g.Shard)
		require.True(t, g.Current())
		r.shards[i] = &modelShard{
			gens:   []*modelGen{{id: g.ID, kind: cfg.layout, since: g.Since}},
			lastTS: g.Since - 1,
		}
	}
	return r
}

func (r *modelRun) count(what string, n int) { r.stats[what] += n }

func (r *modelRun) logf(format string, args ...any) {
	r.opLog = append(r.opLog, fmt.Sprintf(format, args...))
}

func (r *modelRun) open() {
	db, err := ds.Open(r.dir, &r.opts)
	require.NoError(r.t, err)
	r.db = db
}

func (r *modelRun) run(ops int) {
	type op struct {
		weight int
		fn     func()
	}
	table := []op{
		{30, r.opStore},
		{16, r.opRead},
		{14, r.opResume},
		{4, r.opAddGeneration},
		{4, r.opDropGeneration},
		{2, r.opDropInvalid},
		{2, r.opReopen},
		{3, r.opClockJump},
	}
	total := 0
	for _, o := range table {
		total += o.weight
	}
	for i := 0; i < ops && !r.t.Failed(); i++ {
		n := r.rng.IntN(total)
		for _, o := range table {
			if n < o.weight {
				o.fn()
				break
			}
			n -= o.weight
		}
	}
	// The end: everything once more, then across a reopen.
	r.checkGenerations()
	r.readAndCheck("#", 0, false)
	r.readAndCheck("$SYS/#", 0, false)
	for range r.iters {
		r.opResume()
	}
	r.opReopen()
	r.readAndCheck("#", 0, false)
	r.readAndCheck("$SYS/#", 0, false)
	for range r.iters {
		r.opResume()
	}
	r.t.Logf("stats: %v", r.stats)
}

// Topics: levels from a small alphabet (the empty level included), so the LTS trie with small
// thresholds folds levels into '+', and some '$' topics, which '#' and '+' must not match.
var modelLevels = []string{"a", "b", "c", "d", "e", "f", ""}

func (r *modelRun) randomTopic() string {
	for {
		n := 1 + r.rng.IntN(4)
		levels := make([]string, n)
		for i := range levels {
			levels[i] = modelLevels[r.rng.IntN(len(modelLevels))]
		}
		if r.rng.IntN(8) == 0 {
			levels[0] = []string{"$SYS", "$x"}[r.rng.IntN(2)]
		}
		if t := strings.Join(levels, "/"); t != "" {
			return t
		}
	}
}

// randomFilter derives a filter from a random topic: levels replaced by '+', a tail replaced by
// '#', or one of the catch-alls.
func (r *modelRun) randomFilter() string {
	switch r.rng.IntN(10) {
	case 0:
		return "#"
	case 1:
		return []string{"+/#", "$SYS/#", "+", "+/+", "$x/+/#"}[r.rng.IntN(5)]
	}
	levels := strings.Split(r.randomTopic(), "/")
	if r.rng.IntN(2) == 0 {
		levels = strings.Split(r.hotTopic(), "/")
	}
	for i := range levels {
		if r.rng.IntN(3) == 0 {
			levels[i] = "+"
		}
	}
	if r.rng.IntN(3) == 0 {
		levels = append(levels[:r.rng.IntN(len(levels))], "#")
	}
	return strings.Join(levels, "/")
}

// hotTopic returns one of a few recurring topics, now and then replacing one.
func (r *modelRun) hotTopic() string {
	if len(r.hot) < 6 || r.rng.IntN(20) == 0 {
		t := r.randomTopic()
		if len(r.hot) < 6 {
			r.hot = append(r.hot, t)
		} else {
			r.hot[r.rng.IntN(len(r.hot))] = t
		}
		return t
	}
	return r.hot[r.rng.IntN(len(r.hot))]
}

func (r *modelRun) randomMessage() ds.Message {
	r.nextID++
	topic := r.randomTopic()
	if r.rng.IntN(2) == 0 {
		topic = r.hotTopic()
	}
	m := ds.Message{
		ClientID: fmt.Sprintf("pub-%d", r.rng.IntN(12)),
		Topic:    topic,
		QoS:      byte(r.rng.IntN(3)),
		Retain:   r.rng.IntN(5) == 0,
	}
	if n := r.rng.IntN(40); n > 0 {
		m.Payload = fmt.Appendf(nil, "#%d:", r.nextID)
		for range n {
			m.Payload = append(m.Payload, byte(r.rng.IntN(256)))
		}
	}
	if r.rng.IntN(6) == 0 {
		m.Properties = ds.Properties{
			PayloadFormat:    1,
			ContentType:      "text/plain",
			MessageExpiry:    uint32(r.rng.IntN(1000)),
			HasMessageExpiry: true,
			CorrelationData:  []byte{byte(r.nextID)},
			User:             []ds.UserProperty{{Key: "k", Value: fmt.Sprint(r.nextID)}, {Key: "k", Value: ""}},
		}
	}
	return m
}

// modelMatch is the model's own MQTT matcher: a filter level matches a name level when equal or
// '+'; '#' matches the rest, including nothing; a wildcard first level never matches '$'.
func modelMatch(filter, name string) bool {
	f, n := strings.Split(filter, "/"), strings.Split(name, "/")
	if strings.HasPrefix(name, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	for i, fl := range f {
		if fl == "#" {
			return true
		}
		if i >= len(n) || fl != "+" && fl != n[i] {
			return false
		}
	}
	return len(f) == len(n)
}

// expected returns the refs of the model's messages that match filter with ts >= since, by
// shard then timestamp.
func (r *modelRun) expected(filter string, since uint64) []ds.Ref {
	var out []ds.Ref
	for _, s := range r.shards {
		for _, g := range s.gens {
			if g.dropped {
				continue
			}
			for _, m := range g.msgs {
				if m.ref.Timestamp >= since && modelMatch(filter, m.msg.Topic) {
					out = append(out, m.ref)
				}
			}
		}
	}
	return out
}

func (r *modelRun) opStore() {
	t := r.t
	msgs := make([]ds.Message, 1+r.rng.IntN(12))
	for i := range msgs {
		msgs[i] = r.randomMessage()
	}
	sent := slices.Clone(msgs)
	refs, err := r.db.Store(r.ctx, msgs...)
	r.logf("store %d messages: err %v", len(msgs), err)
	r.count("stored", len(msgs))
	require.NoError(t, err)
	require.Len(t, refs, len(msgs))
	require.Equal(t, sent, msgs, "Store must not modify the caller's messages")
	for i, ref := range refs {
		sh := ds.ShardOf(msgs[i].ClientID, r.opts.NShards)
		require.Equal(t, sh, ref.Shard, "message %d went to the wrong shard", i)
		s := r.shards[sh]
		require.Greater(t, ref.Timestamp, s.lastTS, "timestamps must strictly increase within shard %d", sh)
		cur := s.current()
		require.GreaterOrEqual(t, ref.Timestamp, cur.since, "timestamp before its generation's start")
		s.lastTS = ref.Timestamp
		m := &modelMsg{ref: ref, gen: cur.id, msg: msgs[i]}
		cur.msgs = append(cur.msgs, m)
		_, dup := r.byRef[ref]
		require.False(t, dup, "ref %v assigned twice", ref)
		r.byRef[ref] = m
	}
}

// checkMsg checks a message returned by a read of stream s with filter and since against the
// model, and returns its ref.
func (r *modelRun) checkMsg(s ds.Stream, filter string, since uint64, got ds.Message) ds.Ref {
	t := r.t
	ref := ds.Ref{Shard: ds.ShardID(got.Shard), Timestamp: got.Timestamp}
	want, ok := r.byRef[ref]
	require.True(t, ok, "read a message the model does not have: %+v from %s", ref, s)
	require.Equal(t, s.Shard, ref.Shard, "message of shard %d read from stream %s", ref.Shard, s)
	require.Equal(t, s.Generation, want.gen, "message %+v of generation %d read from stream %s", ref, want.gen, s)
	require.Equal(t, want.msg.Topic, got.Topic, "topic of %+v", ref)
	require.Equal(t, want.msg.ClientID, got.ClientID, "client ID of %+v", ref)
	require.True(t, bytes.Equal(want.msg.Payload, got.Payload), "payload of %+v", ref)
	require.Equal(t, want.msg.QoS, got.QoS, "QoS of %+v", ref)
	require.Equal(t, want.msg.Retain, got.Retain, "retain of %+v", ref)
	require.Equal(t, want.msg.Properties, got.Properties, "properties of %+v", ref)
	require.True(t, modelMatch(filter, got.Topic), "%q does not match filter %q", got.Topic, filter)
	require.GreaterOrEqual(t, got.Timestamp, since)
	if s.Layout == ds.LayoutLTS {
		require.True(t, patternFits(s.Pattern, got.Topic), "%q read from stream with pattern %q", got.Topic, s.Pattern)
	}
	id := streamIDOf(s)
	if prev, ok := r.streamOf[ref]; ok {
		require.Equal(t, prev, id, "message %+v (%q) moved from stream %+v to %+v", ref, got.Topic, prev, id)
	} else {
		r.streamOf[ref] = id
	}
	return ref
}

// drain reads it in batches of random size, at most maxBatches (0: no limit), and checks every
// batch. It returns the refs read, the advanced iterator, and whether the iterator reached its
// end for now; err is the error that ended it (nil for an empty batch).
func (r *modelRun) drain(it ds.Iterator, since uint64, last uint64, maxBatches int) (refs []ds.Ref, next ds.Iterator, end bool, err error) {
	t := r.t
	for b := 0; maxBatches == 0 || b < maxBatches; b++ {
		max := 1 + r.rng.IntN(8)
		if r.rng.IntN(4) == 0 {
			max = 1000
		}
		msgs, nit, err := r.db.Next(r.ctx, it, max)
		if err != nil {
			require.Empty(t, msgs, "Next returned messages with error %v", err)
			return refs, it, true, err
		}
		require.LessOrEqual(t, len(msgs), max)
		require.Equal(t, it.Stream, nit.Stream, "Next changed the iterator's stream")
		require.Equal(t, it.Filter, nit.Filter, "Next changed the iterator's filter")
		require.GreaterOrEqual(t, nit.Next, it.Next, "Next moved the iterator backwards")
		if len(msgs) == 0 {
			return refs, nit, true, nil
		}
		if r.rng.IntN(8) == 0 {
			// The old iterator is a value: retrying it gives the same batch.
			again, nit2, err := r.db.Next(r.ctx, it, max)
			require.NoError(t, err)
			require.Equal(t, msgs, again, "retrying a batch with the old iterator")
			require.Equal(t, nit, nit2)
		}
		for _, m := range msgs {
			require.Greater(t, m.Timestamp, last, "timestamps must strictly increase within stream %s", it.Stream)
			last = m.Timestamp
			refs = append(refs, r.checkMsg(it.Stream, it.Filter, since, m))
		}
		require.Greater(t, nit.Next, last, "the iterator must be past its last message")
		it = nit
	}
	return refs, it, false, nil
}

// checkEnd checks how a drained iterator ended against the model.
func (r *modelRun) checkEnd(s ds.Stream, err error) {
	t := r.t
	g := r.shards[s.Shard].gen(s.Generation)
	require.NotNil(t, g, "stream %s of an unknown generation", s)
	switch {
	case g.dropped:
		r.count("end:dropped", 1)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound, "stream %s of a dropped generation", s)
	case g.until != 0:
		r.count("end:sealed", 1)
		require.ErrorIs(t, err, ds.ErrEndOfStream, "stream %s of a sealed generation read to its end", s)
	default:
		require.NoError(t, err, "stream %s of the current generation read to its end", s)
	}
}

// readAndCheck reads every stream for filter since `since` to its end and compares the union
// with the model. With keep, some iterators are kept open for later operations.
func (r *modelRun) readAndCheck(filter string, since uint64, keep bool) {
	t := r.t
	streams, err := r.db.Streams(filter, modelTime(since))
	require.NoError(t, err)
	r.logf("read %q since %d: %d streams", filter, since, len(streams))
	require.True(t, slices.IsSortedFunc(streams, ds.Stream.Compare), "Streams must be ordered by shard, generation, key")
	var got []ds.Ref
	seen := map[streamID]bool{}
	for _, s := range streams {
		require.False(t, seen[streamIDOf(s)], "stream %s returned twice", s)
		seen[streamIDOf(s)] = true
		g := r.shards[s.Shard].gen(s.Generation)
		require.NotNil(t, g, "stream %s of an unknown generation", s)
		require.False(t, g.dropped, "stream %s of a dropped generation", s)
		require.Equal(t, g.kind, s.Layout, "stream %s has the wrong layout", s)
		require.True(t, g.until == 0 || g.until > since, "stream %s of a generation that ended before %d", s, since)
		it, err := r.db.Iterator(s, filter, modelTime(since))
		require.NoError(t, err)
		refs, _, _, err := r.drain(it, since, 0, 0)
		r.checkEnd(s, err)
		got = append(got, refs...)
		if strings.Contains(s.Pattern, "+") {
			r.count("read streams with +", 1)
		}
		// Keep some iterators, mostly of the current generation: they see later stores.
		if keep && len(r.iters) < 24 && (g.until == 0 && r.rng.IntN(3) == 0 || r.rng.IntN(12) == 0) {
			mi := &modelIter{it: it, since: since}
			r.advance(mi, r.rng.IntN(3))
			r.iters = append(r.iters, mi)
		}
	}
	want := r.expected(filter, since)
	r.count("reads", 1)
	r.count("read msgs", len(want))
	r.count("read streams", len(streams))
	slices.SortFunc(got, modelCompareRefs)
	require.Equal(t, want, got, "filter %q since %d: the union of the streams differs from the model", filter, since)
}

// modelTime converts a timestamp to a since argument; 0 is the zero time (the beginning).
func modelTime(ts uint64) time.Time {
	if ts == 0 {
		return time.Time{}
	}
	return ds.Time(ts)
}

func modelCompareRefs(a, b ds.Ref) int {
	if a.Shard != b.Shard {
		return int(a.Shard) - int(b.Shard)
	}
	switch {
	case a.Timestamp < b.Timestamp:
		return -1
	case a.Timestamp > b.Timestamp:
		return 1
	}
	return 0
}

func (r *modelRun) opRead() {
	var since uint64
	if r.rng.IntN(3) == 0 && len(r.byRef) > 0 {
		// Since a stored timestamp (some shard's), or just after one.
		s := r.shards[r.rng.IntN(len(r.shards))]
		since = s.lastTS - uint64(r.rng.IntN(20))
		if r.rng.IntN(2) == 0 {
			for _, g := range s.gens {
				if len(g.msgs) > 0 && r.rng.IntN(2) == 0 {
					since = g.msgs[r.rng.IntN(len(g.msgs))].ref.Timestamp + uint64(r.rng.IntN(2))
				}
			}
		}
	}
	r.readAndCheck(r.randomFilter(), since, true)
}

// advance reads up to maxBatches batches of mi (0: to its end) and checks what it gets against
// the model.
func (r *modelRun) advance(mi *modelIter, maxBatches int) {
	t := r.t
	if mi.done {
		return
	}
	var last uint64
	if len(mi.got) > 0 {
		last = mi.got[len(mi.got)-1].Timestamp
	}
	refs, next, end, err := r.drain(mi.it, mi.since, last, maxBatches)
	mi.got = append(mi.got, refs...)
	mi.it = next
	if !end {
		return
	}
	r.checkEnd(mi.it.Stream, err)
	if errors.Is(err, ds.ErrEndOfStream) {
		mi.done = true
	} else if err != nil {
		return
	}
	// Continuity: what the kept iterator returned over its life, across stores, rotations and
	// reopens, is exactly what a fresh iterator returns now.
	fresh := ds.Iterator{Stream: mi.it.Stream, Filter: mi.it.Filter, Next: mi.since}
	all, _, _, err := r.drain(fresh, mi.since, 0, 0)
	r.checkEnd(mi.it.Stream, err)
	r.count("kept iterators compared", 1)
	r.count("kept iterator msgs", len(all))
	require.Equal(t, all, mi.got, "a kept iterator over %s (filter %q since %d) returned other messages than a fresh one",
		mi.it.Stream, mi.it.Filter, mi.since)
}

func (r *modelRun) opResume() {
	if len(r.iters) == 0 {
		return
	}
	i := r.rng.IntN(len(r.iters))
	mi := r.iters[i]
	g := r.shards[mi.it.Stream.Shard].gen(mi.it.Stream.Generation)
	r.logf("resume %s (%d read, done %v, dropped %v)", mi.it, len(mi.got), mi.done, g.dropped)
	if g.dropped {
		msgs, _, err := r.db.Next(r.ctx, mi.it, 10)
		require.ErrorIs(r.t, err, ds.ErrGenerationNotFound, "iterator into a dropped generation")
		r.count("kept iterator dropped", 1)
		require.Empty(r.t, msgs)
		r.iters = slices.Delete(r.iters, i, i+1)
		return
	}
	if mi.done {
		// Past the end of a sealed generation it stays at the end.
		msgs, _, err := r.db.Next(r.ctx, mi.it, 10)
		require.ErrorIs(r.t, err, ds.ErrEndOfStream)
		require.Empty(r.t, msgs)
		r.count("kept iterator ended", 1)
		if r.rng.IntN(2) == 0 {
			r.iters = slices.Delete(r.iters, i, i+1)
		}
		return
	}
	maxBatches := 0
	if r.rng.IntN(2) == 0 {
		maxBatches = 1 + r.rng.IntN(3)
	}
	r.advance(mi, maxBatches)
}

func (r *modelRun) opAddGeneration() {
	t := r.t
	err := r.db.AddGeneration(r.ctx)
	r.logf("add generation: %v", err)
	r.count("rotations", 1)
	require.NoError(t, err)
	gens, err := r.db.Generations()
	require.NoError(t, err)
	for sh, s := range r.shards {
		prev := s.current()
		var added ds.GenerationInfo
		for _, g := range gens {
			if g.Shard == ds.ShardID(sh) && g.Current() {
				added = g
			}
		}
		require.Greater(t, added.ID, prev.id, "shard %d: the new generation's ID", sh)
		require.Greater(t, added.Since, s.lastTS, "shard %d: the new generation must start after every stored message", sh)
		require.Greater(t, added.Since, prev.since, "shard %d: generations must not overlap", sh)
		prev.until = added.Since
		s.gens = append(s.gens, &modelGen{id: added.ID, kind: r.opts.Layout, since: added.Since})
		s.lastTS = added.Since - 1
	}
	r.checkGenerations()
}

func (r *modelRun) opDropGeneration() {
	t := r.t
	var cands []streamID
	for sh, s := range r.shards {
		for _, g := range s.gens {
			if !g.dropped && g.until != 0 {
				cands = append(cands, streamID{shard: ds.ShardID(sh), gen: g.id})
			}
		}
	}
	if len(cands) == 0 {
		r.opAddGeneration()
		return
	}
	c := cands[r.rng.IntN(len(cands))]
	err := r.db.DropGeneration(r.ctx, c.shard, c.gen)
	r.logf("drop shard %d generation %d: %v", c.shard, c.gen, err)
	require.NoError(t, err)
	r.shards[c.shard].gen(c.gen).dropped = true
	r.count("drops", 1)
	r.checkGenerations()
}

// opDropInvalid drops the current generation, a dropped one or one that never existed.
func (r *modelRun) opDropInvalid() {
	t := r.t
	sh := ds.ShardID(r.rng.IntN(len(r.shards)))
	s := r.shards[sh]
	switch r.rng.IntN(3) {
	case 0:
		err := r.db.DropGeneration(r.ctx, sh, s.current().id)
		r.logf("drop current shard %d generation %d: %v", sh, s.current().id, err)
		require.ErrorIs(t, err, ds.ErrCurrentGeneration)
	case 1:
		for _, g := range s.gens {
			if g.dropped {
				err := r.db.DropGeneration(r.ctx, sh, g.id)
				r.logf("drop dropped shard %d generation %d: %v", sh, g.id, err)
				require.ErrorIs(t, err, ds.ErrGenerationNotFound)
				break
			}
		}
	default:
		id := s.current().id + 1 + ds.GenerationID(r.rng.IntN(3))
		err := r.db.DropGeneration(r.ctx, sh, id)
		r.logf("drop unknown shard %d generation %d: %v", sh, id, err)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound)
	}
	r.checkGenerations()
}

// checkGenerations compares the DB's generation tables with the model.
func (r *modelRun) checkGenerations() {
	t := r.t
	gens, err := r.db.Generations()
	require.NoError(t, err)
	var want, got []string
	for sh, s := range r.shards {
		for _, g := range s.gens {
			if !g.dropped {
				want = append(want, fmt.Sprintf("shard %d gen %d %s [%d, %d)", sh, g.id, g.kind, g.since, g.until))
			}
			for _, m := range g.msgs {
				require.True(t, m.ref.Timestamp >= g.since && (g.until == 0 || m.ref.Timestamp < g.until),
					"message %+v outside its generation %d [%d, %d)", m.ref, g.id, g.since, g.until)
			}
		}
	}
	for _, g := range gens {
		got = append(got, fmt.Sprintf("shard %d gen %d %s [%d, %d)", g.Shard, g.ID, g.Layout.Kind, g.Since, g.Until))
	}
	require.Equal(t, want, got, "generation tables")
}

func (r *modelRun) opReopen() {
	t := r.t
	saved := make([][]byte, len(r.iters))
	for i, mi := range r.iters {
		b, err := mi.it.MarshalBinary()
		require.NoError(t, err)
		saved[i] = b
	}
	require.NoError(t, r.db.Close())
	_, err := r.db.Streams("#", time.Time{})
	require.ErrorIs(t, err, ds.ErrClosed)
	if r.cfg.switchLayout {
		if r.opts.Layout == ds.LayoutLTS {
			r.opts.Layout = ds.LayoutReference
		} else {
			r.opts.Layout = ds.LayoutLTS
			r.opts.WildcardThresholds = [][]int{{4, 2}, {1}, {2, 1, 3}, nil}[r.rng.IntN(4)]
		}
	}
	r.count("reopens", 1)
	r.count("iterators across reopen", len(saved))
	r.logf("reopen (layout of new generations %s %v)", r.opts.Layout, r.opts.WildcardThresholds)
	r.open()
	for i, b := range saved {
		it, err := ds.UnmarshalIterator(b)
		require.NoError(t, err)
		require.Equal(t, r.iters[i].it, it, "iterator changed across marshalling")
		r.iters[i].it = it
	}
	r.checkGenerations()
}

func (r *modelRun) opClockJump() {
	d := int64(r.rng.IntN(5_000_000))
	if r.rng.IntN(2) == 0 {
		d = -d // the clock goes back: timestamps must still increase
	}
	r.clock.us.Add(d)
	r.logf("clock %+dµs", d)
}

// TestModelDropWhileReading reads a sealed generation while it is dropped. The model of one
// read is simple: a read of the generation returns all of its messages, or fails with
// ErrGenerationNotFound. It must never return part of them, or none, as if that were the
// whole generation (nil or ErrEndOfStream): the reader would take a dropped generation for a
// complete one. Syncs are slowed down to widen the window between a drop becoming visible in
// Pebble and the shard publishing it.
func TestModelDropWhileReading(t *testing.T) {
	ctx := context.Background()
	db, err := ds.Open("db", &ds.Options{
		NShards:        1,
		Durability:     ds.Sync,
		Retention:      ds.RetainForever,
		GenerationSpan: 100000 * time.Hour,
		Expert:         ds.ExpertOptions{FS: newModelSlowSyncFS(vfs.NewMem(), 2*time.Millisecond), MemTableBytes: 4 << 20, CacheBytes: 1 << 20},
	})
	require.NoError(t, err)
	defer db.Close()
	const n = 20
	var bad atomic.Int64
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	for round := range rounds {
		msgs := make([]ds.Message, n)
		for i := range msgs {
			msgs[i] = ds.Message{ClientID: "c", Topic: "t/x", Payload: []byte{byte(i)}}
		}
		_, err := db.Store(ctx, msgs...)
		require.NoError(t, err)
		gens, err := db.Generations()
		require.NoError(t, err)
		gen := gens[len(gens)-1].ID
		require.NoError(t, db.AddGeneration(ctx))

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var reads, notFound atomic.Int64
		readDone := make(chan struct{}, 64) // a token per read, dropped when full
		waitReads := func(k int) {
			for range k {
				select {
				case <-readDone:
				case <-time.After(10 * time.Second):
					require.Failf(t, "readers made no progress", "round %d", round)
				}
			}
		}
		for range 2 {
			wg.Go(func() {
				// The streams are taken once, as a session keeps its iterators: after the
				// drop Streams no longer lists them, but the kept ones are still read.
				streams, err := db.Streams("#", time.Time{})
				if err != nil { // not the test's goroutine: no require
					t.Errorf("Streams: %v", err)
					return
				}
				for {
					select {
					case <-stop:
						return
					default:
					}
					for _, s := range streams {
						if s.Generation != gen {
							continue
						}
						it, err := db.Iterator(s, "#", time.Time{})
						if err != nil {
							t.Errorf("Iterator: %v", err)
							return
						}
						got, _, err := db.Next(ctx, it, 1000)
						reads.Add(1)
						select {
						case readDone <- struct{}{}:
						default:
						}
						switch {
						case errors.Is(err, ds.ErrGenerationNotFound):
							notFound.Add(1)
						case len(got) != n:
							if bad.Add(1) <= 3 {
								t.Errorf("round %d: a read of generation %d while it was dropped returned %d of its %d messages and error %v",
									round, gen, len(got), n, err)
							}
						}
					}
				}
			})
		}
		waitReads(4) // readers are reading the generation…
		for len(readDone) > 0 {
			<-readDone
		}
		require.NoError(t, db.DropGeneration(ctx, 0, gen))
		waitReads(4) // …and go on across the drop
		close(stop)
		wg.Wait()
		t.Logf("round %d: %d reads, %d ErrGenerationNotFound", round, reads.Load(), notFound.Load())
	}
}

// modelSlowSyncFS delays every file sync, as a slow disk does, by the current value of delay.
type modelSlowSyncFS struct {
	vfs.FS
	delay *atomic.Int64 // nanoseconds
}

func newModelSlowSyncFS(fs vfs.FS, d time.Duration) modelSlowSyncFS {
	s := modelSlowSyncFS{FS: fs, delay: new(atomic.Int64)}
	s.delay.Store(int64(d))
	return s
}

func (fs modelSlowSyncFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return modelSlowSyncFile{File: f, delay: fs.delay}, nil
}

func (fs modelSlowSyncFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.Create(name, c))
}

func (fs modelSlowSyncFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, c, opts...))
}

func (fs modelSlowSyncFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, c))
}

// modelSlowSyncFile delays every sync by delay: it emulates a slow disk (the sleep is the fault
// being injected, not a wait for some condition).
type modelSlowSyncFile struct {
	vfs.File
	delay *atomic.Int64
}

func (f modelSlowSyncFile) Sync() error {
	time.Sleep(time.Duration(f.delay.Load()))
	return f.File.Sync()
}

func (f modelSlowSyncFile) SyncData() error {
	time.Sleep(time.Duration(f.delay.Load()))
	return f.File.SyncData()
}

func (f modelSlowSyncFile) SyncTo(length int64) (bool, error) {
	time.Sleep(time.Duration(f.delay.Load()))
	return f.File.SyncTo(length)
}
