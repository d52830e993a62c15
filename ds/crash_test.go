package ds_test

// Crash test: writers store concurrently into a DB on Pebble's crashable in-memory filesystem;
// while they run, the test takes crash clones of the filesystem (what a machine crash could
// leave on disk: everything synced, plus none, half or all of what was not) and reopens each
// clone. Every message whose Store returned nil before the clone was taken must be there,
// exactly once, intact, with its Ref; a message whose Store had not returned may be there or
// not, but if it is, it is intact, not duplicated, and so is the rest of its shard's part of the
// same Store (atomicity). The recovered DB must then assign timestamps after every recovered one.
//
// Reproduce the random choices of a failure with -crash.seed=<seed>; the goroutines' interleaving
// is not reproducible.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
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
	crashSeedFlag = flag.Uint64("crash.seed", 0, "run TestCrash with this seed (0: random, logged)")
	// Each run takes 3 crash clones; the default (2 rounds: 15 runs) checks 45 crash points.
	// A campaign: -crash.rounds 56 gives 6×56+3 = 339 runs, 1,017 crash points.
	crashRoundsFlag = flag.Int("crash.rounds", 2, "rounds of TestCrash's repeatable cases (the expensive and special ones run once)")
)

// crashCase is one configuration of TestCrash.
type crashCase struct {
	perShard bool
	layout   ds.LayoutKind
	addGen   bool // a goroutine adds generations while the writers run
	big      bool // large payloads, so memtables flush to sstables and blob files mid-run
	// slowSync delays every fsync, as a slow disk does, which widens the windows between a
	// commit and its sync.
	slowSync bool
	// presync creates and syncs the DB directory before Open, as an operator who created it
	// would; without it Open creates the directory itself.
	presync bool
	// async: the writers store one message at a time through StoreAsync, 8 in flight each; a
	// message counts as acknowledged when its done reports success.
	async bool
}

func (c crashCase) String() string {
	s := "shared-" + c.layout.String()
	if c.perShard {
		s = "pershard-" + c.layout.String()
	}
	if c.addGen {
		s += "-addgen"
	}
	if c.big {
		s += "-big"
	}
	if c.slowSync {
		s += "-slowsync"
	}
	if !c.presync {
		s += "-newdir"
	}
	if c.async {
		s += "-async"
	}
	return s
}

func TestCrash(t *testing.T) {
	seed := *crashSeedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -crash.seed=%d)", seed, seed)
	cases := []crashCase{
		{perShard: false, layout: ds.LayoutLTS, presync: true},
		{perShard: true, layout: ds.LayoutLTS, presync: true},
		{perShard: false, layout: ds.LayoutReference, presync: true},
		{perShard: true, layout: ds.LayoutReference, presync: true},
		{perShard: false, layout: ds.LayoutLTS, addGen: true, presync: true},
		{perShard: true, layout: ds.LayoutLTS, addGen: true, presync: true},
		{perShard: false, layout: ds.LayoutLTS, addGen: true, slowSync: true, presync: true},
		{perShard: false, layout: ds.LayoutLTS, big: true, addGen: true, presync: true},
		// Open creating the directory itself.
		{perShard: false, layout: ds.LayoutLTS},
		// Acknowledged through StoreAsync's done.
		{perShard: false, layout: ds.LayoutLTS, async: true, presync: true},
		{perShard: true, layout: ds.LayoutLTS, addGen: true, async: true, presync: true},
	}
	rounds := *crashRoundsFlag
	if testing.Short() {
		rounds = 1
	}
	for i, c := range cases {
		for round := range rounds {
			if round > 0 && (c.big || c.slowSync || !c.presync) {
				continue // the expensive and the special cases run once
			}
			t.Run(fmt.Sprintf("%s/round=%d", c, round), func(t *testing.T) {
				r := newCrashRun(t, c, seed+uint64(i*rounds+round)*1000003)
				r.run()
			})
		}
	}
}

// crashMsg is a message handed to Store.
type crashMsg struct {
	call int // the Store call that carried it
	msg  ds.Message
}

type crashAck struct {
	id  int
	ref ds.Ref
}

type crashRun struct {
	t     *testing.T
	c     crashCase
	rng   *rand.Rand // the main goroutine's
	seed  uint64
	fs    *vfs.MemFS
	dir   string
	opts  ds.Options
	start time.Time

	nextID, nextCall atomic.Int64
	mu               sync.Mutex
	sent             map[int]crashMsg         // every message handed to Store, by ID
	calls            map[int][]int            // Store call → message IDs
	acked            []crashAck               // in the order the Stores returned
	seen             map[crashStreamID]string // every stream Streams returned, and its pattern
	ackSignal        chan struct{}            // gets a token after every acknowledgement (capacity 1)
}

type crashStreamID struct {
	shard ds.ShardID
	gen   ds.GenerationID
	key   uint64
}

func newCrashRun(t *testing.T, c crashCase, seed uint64) *crashRun {
	r := &crashRun{
		t:         t,
		c:         c,
		rng:       rand.New(rand.NewPCG(seed, 1)),
		seed:      seed,
		fs:        vfs.NewCrashableMem(),
		dir:       "/data/strata",
		sent:      map[int]crashMsg{},
		calls:     map[int][]int{},
		seen:      map[crashStreamID]string{},
		start:     time.Now(),
		ackSignal: make(chan struct{}, 1),
	}
	r.opts = ds.Options{
		NShards:            4,
		Durability:         ds.Sync,
		Layout:             c.layout,
		WildcardThresholds: []int{3, 2},
		Retention:          ds.RetainForever,
		GenerationSpan:     100000 * time.Hour,
		Expert: ds.ExpertOptions{
			FS:             vfs.FS(r.fs),
			PebblePerShard: c.perShard,
			MemTableBytes:  4 << 20,
			CacheBytes:     4 << 20,
		},
	}
	if c.slowSync {
		r.opts.Expert.FS = newModelSlowSyncFS(r.fs, 300*time.Microsecond)
	}
	if c.presync {
		require.NoError(t, r.fs.MkdirAll(r.dir, 0o755))
		for _, d := range []string{"/data", "/"} {
			f, err := r.fs.OpenDir(d)
			require.NoError(t, err)
			require.NoError(t, f.Sync())
			require.NoError(t, f.Close())
		}
	}
	return r
}

// crashPayload is "id=<id>;" and random bytes.
func crashPayload(rng *rand.Rand, id int, big bool) []byte {
	n := rng.IntN(64)
	switch {
	case big && rng.IntN(2) == 0:
		n = 8192 + rng.IntN(24576)
	case rng.IntN(8) == 0:
		n = 256 + rng.IntN(512) // above Pebble's value-separation threshold
	}
	p := fmt.Appendf(make([]byte, 0, 16+n), "id=%d;", id)
	for range n {
		p = append(p, byte(rng.IntN(256)))
	}
	return p
}

func crashPayloadID(p []byte) (int, bool) {
	s, ok := strings.CutPrefix(string(p[:min(len(p), 24)]), "id=")
	if !ok {
		return 0, false
	}
	s, _, ok = strings.Cut(s, ";")
	if !ok {
		return 0, false
	}
	id, err := strconv.Atoi(s)
	return id, err == nil
}

var crashLevels = []string{"a", "b", "c", "d", "e"}

// crashMessage is message id of writer w: one of the writer's six publishers, a random
// topic, QoS and retain flag, and a payload that names it.
func crashMessage(rng *rand.Rand, w, id int, big bool) ds.Message {
	return ds.Message{
		ClientID: fmt.Sprintf("w%d-pub-%d", w, rng.IntN(6)),
		Topic:    crashTopic(rng),
		QoS:      byte(rng.IntN(3)),
		Retain:   rng.IntN(4) == 0,
		Payload:  crashPayload(rng, id, big),
	}
}

func crashTopic(rng *rand.Rand) string {
	levels := make([]string, 1+rng.IntN(3))
	for i := range levels {
		levels[i] = crashLevels[rng.IntN(len(crashLevels))]
	}
	if rng.IntN(6) == 0 {
		levels = append([]string{"$SYS"}, levels...)
	}
	return strings.Join(levels, "/")
}

// write stores batches until stop is closed or the DB is closed.
func (r *crashRun) write(db *ds.DB, w int, stop <-chan struct{}) {
	if r.c.async {
		r.writeAsync(db, w, stop)
		return
	}
	rng := rand.New(rand.NewPCG(r.seed, uint64(w)+2))
	ctx := context.Background()
	for {
		select {
		case <-stop:
			return
		default:
		}
		call := int(r.nextCall.Add(1))
		msgs := make([]ds.Message, 1+rng.IntN(4))
		ids := make([]int, len(msgs))
		r.mu.Lock()
		for i := range msgs {
			id := int(r.nextID.Add(1))
			msgs[i] = crashMessage(rng, w, id, r.c.big)
			ids[i] = id
			r.sent[id] = crashMsg{call: call, msg: msgs[i]}
		}
		r.calls[call] = ids
		r.mu.Unlock()
		refs, err := db.Store(ctx, msgs...)
		if errors.Is(err, ds.ErrClosed) {
			return
		}
		if err != nil {
			r.t.Errorf("writer %d: Store: %v", w, err)
			return
		}
		r.mu.Lock()
		for i, id := range ids {
			r.acked = append(r.acked, crashAck{id: id, ref: refs[i]})
		}
		r.mu.Unlock()
		select {
		case r.ackSignal <- struct{}{}:
		default:
		}
	}
}

// writeAsync is write through StoreAsync: one message per call, up to 8 in flight; a message
// is acknowledged when its done reports success. It returns once the writer's last outcome
// came in.
func (r *crashRun) writeAsync(db *ds.DB, w int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.seed, uint64(w)+2))
	ctx := context.Background()
	slots := make(chan struct{}, 8)
	defer func() {
		for range cap(slots) {
			slots <- struct{}{}
		}
	}()
	for {
		select {
		case <-stop:
			return
		case slots <- struct{}{}:
		}
		call := int(r.nextCall.Add(1))
		id := int(r.nextID.Add(1))
		m := crashMessage(rng, w, id, r.c.big)
		r.mu.Lock()
		r.sent[id] = crashMsg{call: call, msg: m}
		r.calls[call] = []int{id}
		r.mu.Unlock()
		err := db.StoreAsync(ctx, m, func(ref ds.Ref, err error) {
			defer func() { <-slots }()
			if err != nil {
				r.t.Errorf("writer %d: StoreAsync's outcome: %v", w, err)
				return
			}
			r.mu.Lock()
			r.acked = append(r.acked, crashAck{id: id, ref: ref})
			r.mu.Unlock()
			select {
			case r.ackSignal <- struct{}{}:
			default:
			}
		})
		if err != nil {
			<-slots
			if !errors.Is(err, ds.ErrClosed) {
				r.t.Errorf("writer %d: StoreAsync: %v", w, err)
			}
			return
		}
	}
}

func (r *crashRun) nAcked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.acked)
}

// waitAcked waits until at least n messages are acknowledged; it fails the test if the writers
// make no progress for 30 s (a loaded CI machine runs several test packages at once).
func (r *crashRun) waitAcked(n int) {
	r.t.Helper()
	stuck := time.NewTimer(30 * time.Second)
	defer stuck.Stop()
	for {
		got := r.nAcked()
		if got >= n {
			return
		}
		select {
		case <-r.ackSignal:
		case <-stuck.C:
			require.Failf(r.t, "writers are stuck", "writers are stuck: %d of %d acknowledged", got, n)
		}
	}
}

// crashClone is one crash image and what was acknowledged before it was taken.
type crashClone struct {
	pct   int
	fs    *vfs.MemFS
	acked []crashAck
	seen  map[crashStreamID]string
}

// watch calls Streams until stop is closed and records every stream it returns: a stream a
// reader has seen (and may have kept an iterator of) must survive a crash with its pattern.
func (r *crashRun) watch(db *ds.DB, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Microsecond):
		}
		for _, filter := range []string{"#", "$SYS/#"} {
			streams, err := db.Streams(filter, time.Time{})
			if errors.Is(err, ds.ErrClosed) {
				return
			}
			if err != nil {
				r.t.Errorf("Streams: %v", err)
				return
			}
			r.mu.Lock()
			for _, s := range streams {
				r.seen[crashStreamID{s.Shard, s.Generation, s.Key}] = s.Pattern
			}
			r.mu.Unlock()
		}
	}
}

func (r *crashRun) run() {
	t := r.t
	db, err := ds.Open(r.dir, &r.opts)
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() { r.write(db, w, stop) })
	}
	wg.Go(func() { r.watch(db, stop) })
	var rotations atomic.Int64
	if r.c.addGen {
		rng := rand.New(rand.NewPCG(r.seed, 1000))
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(1+rng.IntN(5)) * time.Millisecond):
				}
				if err := db.AddGeneration(context.Background()); errors.Is(err, ds.ErrClosed) {
					return
				} else if err != nil {
					t.Errorf("AddGeneration: %v", err)
					return
				}
				rotations.Add(1)
			}
		})
	}

	// Crash at a random point: after a random number of acknowledged messages, or a random
	// time. Each clone is taken while the writers run, so each sees a different moment.
	var clones []crashClone
	target := 50 + r.rng.IntN(600)
	if r.c.big {
		target = 400 + r.rng.IntN(400)
	}
	if r.rng.IntN(3) == 0 {
		// The crash point is a random moment (the timer is the test's input, not a wait for
		// something to happen), once at least one message was acknowledged.
		<-time.After(time.Duration(20+r.rng.IntN(200)) * time.Millisecond)
		target = 1
	}
	r.waitAcked(target)
	for _, pct := range []int{0, 50, 100} {
		r.mu.Lock()
		acked := slices.Clone(r.acked)
		seen := maps.Clone(r.seen)
		r.mu.Unlock()
		fs := r.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: r.rng})
		clones = append(clones, crashClone{pct: pct, fs: fs, acked: acked, seen: seen})
		r.waitAcked(len(acked) + r.rng.IntN(20)) // the next clone sees a later moment
	}
	r.waitAcked(r.nAcked() + r.rng.IntN(30)) // writers go on after the last clone
	close(stop)
	wg.Wait()
	require.NoError(t, db.Close())
	t.Logf("files: %v", crashFileKinds(r.fs, r.dir))
	t.Logf("%d messages sent, %d acknowledged, %d generations added; clones after %d, %d, %d acknowledged",
		len(r.sent), len(r.acked), rotations.Load(), len(clones[0].acked), len(clones[1].acked), len(clones[2].acked))

	for _, c := range clones {
		t.Run(fmt.Sprintf("unsynced=%d", c.pct), func(t *testing.T) {
			r.verify(t, c.fs, c.acked, c.seen)
		})
	}
	// The original, closed cleanly: everything acknowledged is there.
	t.Run("closed", func(t *testing.T) {
		r.verify(t, r.fs, r.acked, r.seen)
	})
}

// verify opens the DB on fs and checks it against what was sent and acknowledged.
func (r *crashRun) verify(t *testing.T, fs *vfs.MemFS, acked []crashAck, seen map[crashStreamID]string) {
	opts := r.opts
	opts.Expert.FS = fs
	opts.NShards = 0 // from the DB
	// The clock went back across the crash (say, a reboot before NTP): new timestamps must
	// still follow the recovered ones, from what the shards persisted.
	opts.Expert.Now = func() time.Time { return r.start }
	if _, err := fs.Stat(fs.PathJoin(r.dir, "STRATA")); err != nil {
		list, _ := fs.List("/data")
		require.NoError(t, err, "the DB's manifest did not survive the crash, though %d messages were acknowledged; /data holds %q",
			len(acked), list)
	}
	db, err := ds.Open(r.dir, &opts)
	require.NoError(t, err)
	defer func() {
		if db != nil {
			require.NoError(t, db.Close())
		}
	}()
	require.Equal(t, 4, db.NShards(), "NShards recovered from the DB")

	found := r.readAll(t, db)
	for _, a := range acked {
		ref, ok := found[a.id]
		require.True(t, ok, "acknowledged message %d (%+v) lost; %d of %d acknowledged, %d found",
			a.id, a.ref, len(acked), len(r.acked), len(found))
		require.Equal(t, a.ref, ref, "acknowledged message %d came back with another Ref", a.id)
	}
	// A shard's part of one Store is atomic.
	for call, ids := range r.calls {
		present := map[ds.ShardID][2]int{} // shard → {present, total}
		for _, id := range ids {
			sh := ds.ShardOf(r.sent[id].msg.ClientID, 4)
			p := present[sh]
			p[1]++
			if _, ok := found[id]; ok {
				p[0]++
			}
			present[sh] = p
		}
		for sh, p := range present {
			require.True(t, p[0] == 0 || p[0] == p[1], "Store call %d: %d of its %d messages for shard %d recovered",
				call, p[0], p[1], sh)
		}
	}
	var maxTS [4]uint64
	for _, ref := range found {
		maxTS[ref.Shard] = max(maxTS[ref.Shard], ref.Timestamp)
	}
	t.Logf("%d messages recovered, %d of them acknowledged before the crash", len(found), len(acked))

	// The recovered DB takes new writes, after every recovered timestamp.
	ctx := context.Background()
	var more []ds.Message
	for sh := range 4 {
		for i := 0; len(more) < 2*(sh+1); i++ {
			cid := fmt.Sprintf("after-%d", i)
			if ds.ShardOf(cid, 4) == ds.ShardID(sh) {
				id := int(r.nextID.Add(1))
				more = append(more, ds.Message{ClientID: cid, Topic: "after/" + strconv.Itoa(sh), Payload: fmt.Appendf(nil, "id=%d;", id)})
			}
		}
	}
	refs, err := db.Store(ctx, more...)
	require.NoError(t, err)
	for i, ref := range refs {
		require.Greater(t, ref.Timestamp, maxTS[ref.Shard], "shard %d: a timestamp after recovery repeats or precedes a recovered one", ref.Shard)
		id, _ := crashPayloadID(more[i].Payload)
		r.mu.Lock()
		r.sent[id] = crashMsg{call: -1, msg: more[i]}
		r.mu.Unlock()
		found[id] = ref
	}
	// And across one more clean reopen, the recovered and the new messages are all there.
	require.NoError(t, db.Close())
	db, err = ds.Open(r.dir, &opts)
	require.NoError(t, err)
	again := r.readAll(t, db)
	require.Equal(t, found, again, "messages after recovery, new writes and a reopen")

	// Every stream a reader saw before the crash is still there, with the same pattern: a
	// session may hold an iterator of it.
	now := map[crashStreamID]string{}
	for _, filter := range []string{"#", "$SYS/#"} {
		streams, err := db.Streams(filter, time.Time{})
		require.NoError(t, err)
		for _, s := range streams {
			now[crashStreamID{s.Shard, s.Generation, s.Key}] = s.Pattern
		}
	}
	var lost, changed []string
	for id, pattern := range seen {
		p, ok := now[id]
		switch {
		case !ok:
			lost = append(lost, fmt.Sprintf("%d/%d/%d(%s)", id.shard, id.gen, id.key, pattern))
		case p != pattern:
			changed = append(changed, fmt.Sprintf("%d/%d/%d(%s) is now (%s)", id.shard, id.gen, id.key, pattern, p))
		}
	}
	slices.Sort(lost)
	slices.Sort(changed)
	require.Empty(t, changed, "streams that a reader saw before the crash name another pattern after it")
	require.Empty(t, lost, "streams that a reader saw before the crash are gone after it (of %d seen)", len(seen))
}

// readAll reads every message of db through Streams("#") and Streams("$SYS/#"), checks each
// against what was sent, and returns the Ref of each message ID.
func (r *crashRun) readAll(t *testing.T, db *ds.DB) map[int]ds.Ref {
	ctx := context.Background()
	gens, err := db.Generations()
	require.NoError(t, err)
	type genKey struct {
		shard ds.ShardID
		gen   ds.GenerationID
	}
	genOf := map[genKey]ds.GenerationInfo{}
	for _, g := range gens {
		genOf[genKey{g.Shard, g.ID}] = g
	}
	found := map[int]ds.Ref{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, filter := range []string{"#", "$SYS/#"} {
		streams, err := db.Streams(filter, time.Time{})
		require.NoError(t, err)
		for _, s := range streams {
			g, ok := genOf[genKey{s.Shard, s.Generation}]
			require.True(t, ok, "stream %s of a generation Generations does not list", s)
			it, err := db.Iterator(s, filter, time.Time{})
			require.NoError(t, err)
			var last uint64
			for {
				msgs, next, err := db.Next(ctx, it, 1+r.rng.IntN(300))
				if errors.Is(err, ds.ErrEndOfStream) {
					require.False(t, g.Current(), "ErrEndOfStream from the current generation")
					break
				}
				require.NoError(t, err, "reading %s", s)
				if len(msgs) == 0 {
					break
				}
				for _, m := range msgs {
					require.Greater(t, m.Timestamp, last, "timestamps must strictly increase within stream %s", s)
					last = m.Timestamp
					require.True(t, m.Timestamp >= g.Since && (g.Current() || m.Timestamp < g.Until),
						"message at %d outside its generation %s", m.Timestamp, g.Info)
					id, ok := crashPayloadID(m.Payload)
					require.True(t, ok, "a message with a damaged payload: %q on %q", m.Payload, m.Topic)
					want, ok := r.sent[id]
					require.True(t, ok, "message %d was never sent", id)
					require.Equal(t, want.msg.ClientID, m.ClientID, "message %d", id)
					require.Equal(t, want.msg.Topic, m.Topic, "message %d", id)
					require.True(t, bytes.Equal(want.msg.Payload, m.Payload), "message %d: payload damaged", id)
					require.Equal(t, want.msg.QoS, m.QoS, "message %d", id)
					require.Equal(t, want.msg.Retain, m.Retain, "message %d", id)
					require.Equal(t, ds.ShardOf(m.ClientID, 4), ds.ShardID(m.Shard), "message %d in the wrong shard", id)
					require.Equal(t, s.Shard, ds.ShardID(m.Shard), "message %d read from another shard's stream", id)
					prev, dup := found[id]
					require.False(t, dup, "message %d recovered twice: %+v and shard %d ts %d", id, prev, m.Shard, m.Timestamp)
					found[id] = ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}
				}
				it = next
			}
		}
	}
	return found
}

// crashFileKinds counts the files under dir by extension, for the log.
func crashFileKinds(fs vfs.FS, dir string) map[string]int {
	out := map[string]int{}
	var walk func(d string)
	walk = func(d string) {
		names, _ := fs.List(d)
		for _, n := range names {
			p := fs.PathJoin(d, n)
			if st, err := fs.Stat(p); err == nil && st.IsDir() {
				walk(p)
				continue
			}
			ext := n
			if i := strings.LastIndexByte(n, '.'); i >= 0 {
				ext = n[i:]
			} else if i := strings.IndexByte(n, '-'); i >= 0 {
				ext = n[:i]
			}
			out[ext]++
		}
	}
	walk(dir)
	return out
}

// TestCrashStreamNotVisibleBeforeDurable: a Store that creates a stream is held in its WAL
// sync; meanwhile the stream is not visible to readers (a reader never learns of data a crash
// can take away), and a crash at that point loses the message and the stream together. Once
// the sync completes the Store returns and the stream appears.
func TestCrashStreamNotVisibleBeforeDurable(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewCrashableMem()
	require.NoError(t, mem.MkdirAll("/db", 0o755))
	root, err := mem.OpenDir("/")
	require.NoError(t, err)
	require.NoError(t, root.Sync())
	require.NoError(t, root.Close())
	gate := &syncGate{FS: mem}
	opts := ds.Options{NShards: 1, Durability: ds.Sync, Retention: ds.RetainForever,
		Expert: ds.ExpertOptions{FS: gate, MemTableBytes: 4 << 20, CacheBytes: 1 << 20}}
	db, err := ds.Open("/db", &opts)
	require.NoError(t, err)
	_, err = db.Store(ctx, ds.Message{ClientID: "c", Topic: "a/b", Payload: []byte("durable")})
	require.NoError(t, err)

	started, release := gate.holdNext()
	stored := make(chan error, 1)
	go func() {
		_, err := db.Store(ctx, ds.Message{ClientID: "c", Topic: "x/y", Payload: []byte("in flight")})
		stored <- err
	}()
	select {
	case <-started: // the Store's batch is committed to Pebble, its WAL sync held
	case err := <-stored:
		require.Failf(t, "the Store returned without syncing the WAL", "Store returned %v", err)
	case <-time.After(10 * time.Second):
		require.Fail(t, "no WAL sync within 10s of the Store")
	}
	seen, err := db.Streams("x/#", time.Time{})
	require.NoError(t, err)
	require.Empty(t, seen, "a stream is visible while the Store that creates it waits for its sync")
	crashed := mem.CrashClone(vfs.CrashCloneCfg{}) // only what was synced
	close(release)
	require.NoError(t, <-stored)
	seen, err = db.Streams("x/#", time.Time{})
	require.NoError(t, err)
	require.Len(t, seen, 1, "the stream once its Store returned")
	require.NoError(t, db.Close())

	// The crash took the unsynced message, and the stream with it; the durable one is there.
	opts.Expert.FS = crashed
	db, err = ds.Open("/db", &opts)
	require.NoError(t, err)
	defer db.Close()
	seen, err = db.Streams("x/#", time.Time{})
	require.NoError(t, err)
	require.Empty(t, seen, "a stream whose only message was never synced survived the crash")
	durable, err := db.Streams("a/#", time.Time{})
	require.NoError(t, err)
	require.Len(t, durable, 1)
	it, err := db.Iterator(durable[0], "#", time.Time{})
	require.NoError(t, err)
	msgs, _, err := db.Next(ctx, it, 10)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	require.Equal(t, "durable", string(msgs[0].Payload))
	_, err = db.Store(ctx, ds.Message{ClientID: "c", Topic: "x/y", Payload: []byte("after")})
	require.NoError(t, err)
}

// syncGate is a file system whose next sync, once armed by holdNext, signals that it started
// and waits until released.
type syncGate struct {
	vfs.FS
	mu      sync.Mutex
	started chan struct{}
	release chan struct{}
}

func (g *syncGate) holdNext() (started, release chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.started, g.release = make(chan struct{}), make(chan struct{})
	return g.started, g.release
}

func (g *syncGate) hold() {
	g.mu.Lock()
	started, release := g.started, g.release
	g.started, g.release = nil, nil
	g.mu.Unlock()
	if started != nil {
		close(started)
		<-release
	}
}

func (g *syncGate) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return gatedFile{File: f, g: g}, nil
}

func (g *syncGate) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return g.wrap(g.FS.Create(name, c))
}

func (g *syncGate) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return g.wrap(g.FS.OpenReadWrite(name, c, opts...))
}

func (g *syncGate) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return g.wrap(g.FS.ReuseForWrite(oldname, newname, c))
}

type gatedFile struct {
	vfs.File
	g *syncGate
}

func (f gatedFile) Sync() error {
	f.g.hold()
	return f.File.Sync()
}

func (f gatedFile) SyncData() error {
	f.g.hold()
	return f.File.SyncData()
}
