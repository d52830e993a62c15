package shard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// patience bounds the waits of these tests for something that must happen. It only turns a
// hang into a failure: no assertion depends on how long anything takes.
const patience = time.Minute

// gate stands in for one of a group commit's calls to Pebble (Config.commit or
// Config.syncWait). Its n-th call (from 1) announces itself on entered, waits while the test
// holds it, then returns the error injected for it: instead of Pebble's call for a commit
// (nothing reaches Pebble), after it for a sync wait (the batch is in the WAL, but the shard
// is told its sync failed).
type gate struct {
	real    func(*pebble.Batch) error
	after   bool     // inject errors after the real call, not instead of it
	entered chan int // call numbers, as calls enter
	seen    int      // calls the test saw enter (test goroutine only)

	mu       sync.Mutex
	calls    int
	holds    map[int]chan struct{}
	errs     map[int]error
	releases []func()
}

func newGate(real func(*pebble.Batch) error, after bool) *gate {
	return &gate{real: real, after: after, entered: make(chan int, 1<<12),
		holds: map[int]chan struct{}{}, errs: map[int]error{}}
}

func (g *gate) call(b *pebble.Batch) error {
	g.mu.Lock()
	g.calls++
	n := g.calls
	hold, err := g.holds[n], g.errs[n]
	g.mu.Unlock()
	g.entered <- n
	if hold != nil {
		<-hold
	}
	if err != nil && !g.after {
		return err
	}
	if rerr := g.real(b); rerr != nil {
		return rerr
	}
	return err
}

// hold makes call n wait until release is called. Call it before call n starts.
func (g *gate) hold(n int) (release func()) {
	ch := make(chan struct{})
	release = sync.OnceFunc(func() { close(ch) })
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holds[n] = ch
	g.releases = append(g.releases, release)
	return release
}

// releaseAll releases every hold (cleanup of a failed test, so that Close returns).
func (g *gate) releaseAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.releases {
		r()
	}
}

// fail makes call n return err. Call it before call n starts.
func (g *gate) fail(n int, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.errs[n] = err
}

// count returns the number of calls so far.
func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls
}

// await returns once call n has entered.
func (g *gate) await(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(patience)
	for g.seen < n {
		select {
		case <-g.entered:
			g.seen++
		case <-timeout:
			require.Failf(t, "gate call never came", "call %d never came (%d did)", n, g.seen)
		}
	}
}

// writerTest is a Shard with Sync on an in-memory Pebble whose commits and sync waits pass
// through gates, and what its OnDurable reported.
type writerTest struct {
	*Shard
	db           *pebble.DB
	cfg          Config
	commit, sync *gate

	mu    sync.Mutex
	steps []durableStep
}

// durableStep is what OnDurable reported once.
type durableStep struct {
	from, until uint64
	msgs        []*message.Message
}

func newWriterTest(t *testing.T, tune func(*Config)) *writerTest {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	wt := &writerTest{db: db, commit: newGate(pebbleCommit(db, true), false), sync: newGate(pebbleSyncWait(true), true)}
	var ticks atomic.Int64
	wt.cfg = Config{ID: 5, DB: db, Layout: testParams, Sync: true, FlushInterval: 0,
		MaxBatchMessages: 1000, MaxBatchBytes: 1 << 20, QueueLength: 64, MaintenanceInterval: time.Hour,
		// A clock going backwards: timestamps are last+1, and must still strictly increase.
		Now:    func() time.Time { return time.UnixMicro(1e12 - ticks.Add(1)) },
		Logger: slog.New(slog.DiscardHandler),
		OnDurable: func(d Durable) {
			wt.mu.Lock()
			defer wt.mu.Unlock()
			wt.steps = append(wt.steps, durableStep{from: d.From, until: d.Until, msgs: slices.Clone(d.Messages)})
		},
		commit: wt.commit.call, syncWait: wt.sync.call,
	}
	if tune != nil {
		tune(&wt.cfg)
	}
	wt.Shard, err = Open(wt.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { wt.Close() })
	t.Cleanup(func() { wt.commit.releaseAll(); wt.sync.releaseAll() })
	return wt
}

// reopen opens the shard afresh on the same Pebble, without gates, after Close: it loads what
// the disk holds.
func (wt *writerTest) reopen(t *testing.T) *Shard {
	t.Helper()
	cfg := wt.cfg
	cfg.commit, cfg.syncWait, cfg.OnDurable = nil, nil, nil
	s, err := Open(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// submit submits one request of n messages with payloads name.1, name.2, ...
func (wt *writerTest) submit(t *testing.T, name string, n, bytes int) (Waiter, []*message.Message) {
	t.Helper()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = msg("w/"+name, fmt.Sprintf("%s.%d", name, i+1))
	}
	w, err := wt.Submit(context.Background(), msgs, bytes)
	require.NoError(t, err)
	return w, msgs
}

func (wt *writerTest) durableSteps() []durableStep {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return slices.Clone(wt.steps)
}

// checkSteps checks that OnDurable's steps follow one another from the read limit from, and
// that their messages have strictly increasing timestamps within their bounds.
func checkSteps(t *testing.T, steps []durableStep, from uint64) {
	t.Helper()
	var last uint64
	for i, st := range steps {
		require.True(t, st.from == from && st.until >= st.from, "step %d: [%d, %d), want from %d", i, st.from, st.until, from)
		for _, m := range st.msgs {
			require.True(t, m.Timestamp > last && m.Timestamp >= st.from && m.Timestamp < st.until,
				"step %d [%d, %d): message %s at %d, after %d", i, st.from, st.until, m.Payload, m.Timestamp, last)
			last = m.Timestamp
		}
		from = st.until
	}
}

func isDone(w Waiter) bool {
	select {
	case <-w.r.done:
		return true
	default:
		return false
	}
}

// waitFor returns the outcome of a request that must complete.
func waitFor(t *testing.T, w Waiter) error {
	t.Helper()
	select {
	case <-w.r.done:
		return w.r.err
	case <-time.After(patience):
		require.Fail(t, "request never completed")
		return nil
	}
}

// stored returns the payloads of the messages readers see, in timestamp order.
func stored(t *testing.T, c *core) []string {
	t.Helper()
	var all []message.Message
	for _, s := range c.Streams(topic.Split("#"), 0) {
		msgs, _, err := c.Read(stream.Iterator{Stream: s, Filter: "#"}, topic.Split("#"), 1<<20, nil)
		if !errors.Is(err, ErrEndOfStream) {
			require.NoError(t, err)
		}
		all = append(all, msgs...)
	}
	slices.SortFunc(all, func(a, b message.Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
	out := []string{}
	for _, m := range all {
		out = append(out, string(m.Payload))
	}
	return out
}

func checkStored(t *testing.T, c *core, want ...string) {
	t.Helper()
	got := stored(t, c)
	require.True(t, slices.Equal(got, want), "readers see %q, want %q", got, want)
}

// checkCount checks generation 1's message count (which includes messages applied but not yet
// durable).
func checkCount(t *testing.T, c *core, want int) {
	t.Helper()
	u, err := c.GenerationUsage(1)
	require.NoError(t, err)
	require.True(t, u.Counted, "generation 1 not counted")
	require.Equal(t, uint64(want), u.Messages, "generation 1 messages")
}

// TestWriterGroupCommit: Submit calls made concurrently while a commit is blocked are all
// queued, then committed in as few batches as Config.MaxBatchMessages allows, with strictly
// increasing timestamps across batches; each batch is one commit, one sync, one OnDurable.
func TestWriterGroupCommit(t *testing.T) {
	wt := newWriterTest(t, func(c *Config) { c.MaxBatchMessages = 8 })
	limit0 := wt.ReadLimit()
	release := wt.commit.hold(1)
	first, _ := wt.submit(t, "first", 1, 10)
	wt.commit.await(t, 1)

	const n = 40
	ws := make([]Waiter, n)
	msgs := make([]*message.Message, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs[i] = msg("w/c", fmt.Sprint(i))
			ws[i], errs[i] = wt.Submit(context.Background(), []*message.Message{msgs[i]}, 10)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int64(n), wt.Metrics.QueueDepth.Load(), "queue depth")
	for i, w := range ws {
		require.False(t, isDone(w), "request %d done while the first commit is blocked", i)
	}
	release()
	require.NoError(t, waitFor(t, first))
	for _, w := range ws {
		require.NoError(t, waitFor(t, w))
	}

	steps := wt.durableSteps()
	checkSteps(t, steps, limit0)
	// The first request alone, then the 40 queued behind it in full batches of 8.
	require.Len(t, steps, 1+n/8, "batches")
	seen := map[*message.Message]bool{}
	for i, st := range steps[1:] {
		require.Len(t, st.msgs, 8, "batch %d", i+2)
		for _, m := range st.msgs {
			seen[m] = true
		}
	}
	for i, m := range msgs {
		require.True(t, seen[m], "message %d in no batch", i)
	}
	require.Equal(t, len(steps), wt.commit.count(), "commits, one per batch")
	require.Equal(t, len(steps), wt.sync.count(), "syncs, one per batch")
	require.Equal(t, uint64(len(steps)), wt.Metrics.Batches.Load(), "batches counted")
	require.Equal(t, steps[len(steps)-1].until, wt.ReadLimit(), "read limit")
	require.Len(t, stored(t, wt.core), n+1, "messages readable")
}

// TestWriterBatchBounds: which queued requests share a batch. A request joins only if the
// batch stays within MaxBatchMessages and MaxBatchBytes, else it starts the next one; a request
// larger than the bounds commits alone; an admin request is a batch of its own.
func TestWriterBatchBounds(t *testing.T) {
	wt := newWriterTest(t, func(c *Config) { c.MaxBatchMessages, c.MaxBatchBytes = 5, 100 })
	release := wt.commit.hold(1)
	owner := map[*message.Message]string{}
	var ws []Waiter
	add := func(name string, n, bytes int) {
		w, msgs := wt.submit(t, name, n, bytes)
		for _, m := range msgs {
			owner[m] = name
		}
		ws = append(ws, w)
	}
	add("r0", 1, 10)
	wt.commit.await(t, 1)
	add("r1", 2, 10)
	add("r2", 2, 10)
	add("r3", 2, 10) // 6 messages with r1 and r2: starts the next batch
	add("r4", 1, 90) // exactly 100 bytes with r3: joins
	add("r5", 1, 500)
	add("r6", 1, 10)
	admin := &request{kind: reqAddGeneration, done: make(chan struct{})}
	require.NoError(t, wt.enqueue(context.Background(), admin))
	ws = append(ws, Waiter{admin})
	add("r7", 1, 50)
	add("r8", 1, 60) // 110 bytes with r7: starts the next batch
	add("r9", 1, 10)
	release()
	for _, w := range ws {
		require.NoError(t, waitFor(t, w))
	}

	var batches []string
	for _, st := range wt.durableSteps() {
		var names []string
		for _, m := range st.msgs {
			if o := owner[m]; len(names) == 0 || names[len(names)-1] != o {
				names = append(names, o)
			}
		}
		if len(st.msgs) == 0 {
			names = []string{"gen"}
		}
		batches = append(batches, strings.Join(names, " "))
	}
	want := []string{"r0", "r1 r2", "r3 r4", "r5", "r6", "gen", "r7", "r8 r9"}
	require.Equal(t, want, batches, "batches")
	require.Len(t, wt.Generations(), 2, "generations")
}

// TestWriterWakeOrder: the writer commits batches while earlier ones wait for their sync, but a
// batch's callers are woken, and its messages readable, only once its sync completed and
// those of every earlier batch too.
func TestWriterWakeOrder(t *testing.T) {
	wt := newWriterTest(t, nil)
	limit0 := wt.ReadLimit()
	release1, release2, release3 := wt.sync.hold(1), wt.sync.hold(2), wt.sync.hold(3)

	a, am := wt.submit(t, "a", 1, 10)
	wt.sync.await(t, 1)
	require.False(t, isDone(a), "batch 1 done before its sync")
	require.Equal(t, limit0, wt.ReadLimit(), "read limit before batch 1's sync")
	b, bm := wt.submit(t, "b", 1, 10)
	wt.commit.await(t, 2)
	c, cm := wt.submit(t, "c", 1, 10)
	wt.commit.await(t, 3) // the writer is done with batch 2
	require.False(t, isDone(a) || isDone(b) || isDone(c), "done %v %v %v before any sync", isDone(a), isDone(b), isDone(c))
	require.Equal(t, limit0, wt.ReadLimit(), "read limit before any sync")

	// Batch 3's sync may complete first: its callers still wait for batches 1 and 2.
	release3()
	require.False(t, isDone(b) || isDone(c), "batch 2 or 3 woken before batch 1's sync")
	release1()
	require.NoError(t, waitFor(t, a))
	require.Equal(t, am[0].Timestamp+1, wt.ReadLimit(), "read limit when woken")
	wt.sync.await(t, 2) // the syncer is done with batch 1
	require.False(t, isDone(b) || isDone(c), "done %v %v before batch 2's sync", isDone(b), isDone(c))
	checkStored(t, wt.core, "a.1")

	release2()
	require.NoError(t, waitFor(t, b))
	require.GreaterOrEqual(t, wt.ReadLimit(), bm[0].Timestamp+1, "read limit when woken")
	require.NoError(t, waitFor(t, c))
	require.Equal(t, cm[0].Timestamp+1, wt.ReadLimit(), "read limit when woken")
	checkStored(t, wt.core, "a.1", "b.1", "c.1")
	checkCount(t, wt.core, 3)
	steps := wt.durableSteps()
	checkSteps(t, steps, limit0)
	require.True(t, len(steps) == 3 && steps[0].msgs[0] == am[0] && steps[1].msgs[0] == bm[0] && steps[2].msgs[0] == cm[0],
		"OnDurable steps %+v, want a, b, c", steps)
}

// TestWriterCommitFailure: a batch whose commit fails fails every caller in it with the commit's
// error, and is aborted (invariant 3): nothing of it is readable or counted, its timestamps are
// given again, and the shard goes on (the failure is not sticky: the disk holds what memory
// holds), as a shard opened afresh on the same Pebble confirms.
func TestWriterCommitFailure(t *testing.T) {
	wt := newWriterTest(t, nil)
	limit0 := wt.ReadLimit()
	errCommit := errors.New("injected commit failure")
	release := wt.commit.hold(1)
	wt.commit.fail(2, errCommit)
	a, am := wt.submit(t, "a", 1, 10)
	wt.commit.await(t, 1)
	var failed []Waiter
	for _, name := range []string{"b", "c", "d"} {
		w, _ := wt.submit(t, name, 2, 10)
		failed = append(failed, w)
	}
	release()
	require.NoError(t, waitFor(t, a))
	for i, w := range failed {
		err := waitFor(t, w)
		require.ErrorIs(t, err, errCommit, "caller %d of the failed batch: want the commit's error", i)
		require.NotErrorIs(t, err, ErrFailed, "caller %d of the failed batch", i)
	}
	require.Equal(t, am[0].Timestamp+1, wt.ReadLimit(), "read limit after the failed batch")
	checkStored(t, wt.core, "a.1")
	checkCount(t, wt.core, 1)

	e, em := wt.submit(t, "e", 1, 10)
	require.NoError(t, waitFor(t, e))
	require.Equal(t, am[0].Timestamp+1, em[0].Timestamp, "next message: the failed batch's timestamps were not given back")
	checkStored(t, wt.core, "a.1", "e.1")
	checkCount(t, wt.core, 2)
	steps := wt.durableSteps()
	checkSteps(t, steps, limit0)
	require.Len(t, steps, 2, "steps")
	require.Equal(t, 3, wt.commit.count(), "commits")
	require.Equal(t, 2, wt.sync.count(), "syncs")
	limit := wt.ReadLimit()
	require.NoError(t, wt.Close())
	s := wt.reopen(t)
	require.Equal(t, limit, s.ReadLimit(), "reopened: read limit")
	checkStored(t, s.core, "a.1", "e.1")
	checkCount(t, s.core, 2)
}

// TestWriterSyncFailure: a failed WAL sync fails its batch's callers and the shard for good
// (ErrFailed, wrapping the sync's error): the batches committed after it fail too although
// their sync succeeded, nothing more is published, and later writes fail without reaching
// Pebble.
func TestWriterSyncFailure(t *testing.T) {
	wt := newWriterTest(t, nil)
	limit0 := wt.ReadLimit()
	errSync := errors.New("injected sync failure")
	release := wt.sync.hold(1)
	wt.sync.fail(1, errSync)
	a, _ := wt.submit(t, "a", 1, 10)
	wt.sync.await(t, 1)
	b, _ := wt.submit(t, "b", 1, 10)
	wt.commit.await(t, 2) // batch 2 is committed, its sync to wait for after batch 1's
	release()
	for i, w := range []Waiter{a, b} {
		err := waitFor(t, w)
		require.ErrorIs(t, err, ErrFailed, "batch %d", i+1)
		require.ErrorIs(t, err, errSync, "batch %d: want ErrFailed wrapping the sync error", i+1)
	}
	require.Equal(t, 2, wt.sync.count(), "sync waits")

	cm := []*message.Message{msg("w/c", "c.1")}
	err := wt.Store(context.Background(), cm, 10)
	require.ErrorIs(t, err, ErrFailed, "Store after the failure")
	require.ErrorIs(t, err, errSync, "Store after the failure")
	require.ErrorIs(t, wt.AddGeneration(context.Background()), ErrFailed, "AddGeneration after the failure")
	require.Equal(t, 2, wt.commit.count(), "commits: a write after the failure was applied")
	require.Zero(t, cm[0].Timestamp, "a write after the failure was applied")
	require.Equal(t, limit0, wt.ReadLimit(), "published after the failure: read limit")
	require.Empty(t, wt.durableSteps(), "published after the failure: steps")
	require.Zero(t, wt.Metrics.Messages.Load(), "published after the failure: messages")
	checkStored(t, wt.core)
	require.NoError(t, wt.Close())
}

// TestWriterContext: ctx bounds only the wait for room in the queue. A call whose ctx ends
// while the queue is full returns ctx's error and is never applied; once a request is queued,
// its ctx no longer matters: the call reports the commit's outcome.
func TestWriterContext(t *testing.T) {
	wt := newWriterTest(t, func(c *Config) { c.QueueLength = 1 })
	release := wt.commit.hold(1)
	a, _ := wt.submit(t, "a", 1, 10)
	wt.commit.await(t, 1)
	b, _ := wt.submit(t, "b", 1, 10) // the queue is full

	ctx, cancel := context.WithCancel(context.Background())
	cm := []*message.Message{msg("w/c", "c.1")}
	res := make(chan error, 1)
	go func() { res <- wt.Store(ctx, cm, 10) }()
	cancel()
	select {
	case err := <-res:
		require.ErrorIs(t, err, context.Canceled, "Store cancelled while waiting for room")
	case <-time.After(patience):
		require.Fail(t, "Store did not return when its context was cancelled")
	}
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancel2()
	dm := []*message.Message{msg("w/d", "d.1")}
	_, err := wt.Submit(expired, dm, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded, "Submit past its deadline with the queue full")
	require.Equal(t, int64(1), wt.Metrics.QueueDepth.Load(), "queue depth")
	release()
	require.NoError(t, waitFor(t, a))
	require.NoError(t, waitFor(t, b))

	// Cancelled after it was queued, while its batch commits: Store still reports success.
	release3 := wt.commit.hold(3)
	ctx3, cancel3 := context.WithCancel(context.Background())
	em := []*message.Message{msg("w/e", "e.1")}
	go func() { res <- wt.Store(ctx3, em, 10) }()
	wt.commit.await(t, 3)
	cancel3()
	release3()
	select {
	case err := <-res:
		require.NoError(t, err)
	case <-time.After(patience):
		require.Fail(t, "Store never returned")
	}
	// Submitted, then cancelled before Wait.
	ctx4, cancel4 := context.WithCancel(context.Background())
	fm := []*message.Message{msg("w/f", "f.1")}
	f, err := wt.Submit(ctx4, fm, 10)
	require.NoError(t, err)
	cancel4()
	require.NoError(t, waitFor(t, f))

	require.True(t, cm[0].Timestamp == 0 && dm[0].Timestamp == 0 && em[0].Timestamp != 0 && fm[0].Timestamp != 0,
		"timestamps c %d, d %d, e %d, f %d; want only e and f set", cm[0].Timestamp, dm[0].Timestamp, em[0].Timestamp, fm[0].Timestamp)
	checkStored(t, wt.core, "a.1", "b.1", "e.1", "f.1")
	checkCount(t, wt.core, 4)
	require.Equal(t, 4, wt.commit.count(), "commits")
}

// TestWriterClose: Close refuses new requests at once, but commits every accepted one before it
// returns; afterwards every call returns ErrClosed. The writer drains the queue either in its
// usual loop or in its closing branch (a random select picks): several rounds cover both.
func TestWriterClose(t *testing.T) {
	for i := range 20 {
		t.Run(fmt.Sprint(i), testWriterClose)
	}
}

func testWriterClose(t *testing.T) {
	wt := newWriterTest(t, nil)
	release := wt.commit.hold(1)
	w, _ := wt.submit(t, "a", 1, 10)
	ws := []Waiter{w}
	wt.commit.await(t, 1)
	for _, name := range []string{"b", "c", "d"} {
		w, _ := wt.submit(t, name, 1, 10)
		ws = append(ws, w)
	}
	closed := make(chan error, 1)
	go func() { closed <- wt.Close() }()
	select {
	case <-wt.closing:
	case <-time.After(patience):
		require.Fail(t, "Close did not start")
	}
	em := []*message.Message{msg("w/e", "e.1")}
	_, err := wt.Submit(context.Background(), em, 10)
	require.ErrorIs(t, err, ErrClosed, "Submit while closing")
	require.Empty(t, closed, "Close returned before the accepted requests were committed")
	release()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(patience):
		require.Fail(t, "Close never returned")
	}
	for i, w := range ws {
		require.True(t, isDone(w), "accepted request %d not done after Close", i)
		require.NoError(t, w.r.err, "accepted request %d after Close", i)
	}

	ctx := context.Background()
	require.ErrorIs(t, wt.Store(ctx, em, 10), ErrClosed, "Store after Close")
	_, err = wt.SubmitTxns(ctx, []*Txn{{Writes: []RecordWrite{put("k", "v")}}}, 1)
	require.ErrorIs(t, err, ErrClosed, "SubmitTxns after Close")
	require.ErrorIs(t, wt.AddGeneration(ctx), ErrClosed, "AddGeneration after Close")
	require.ErrorIs(t, wt.DropGeneration(ctx, 1), ErrClosed, "DropGeneration after Close")
	require.NoError(t, wt.Close())
	require.Zero(t, em[0].Timestamp, "refused message applied")
	s := wt.reopen(t)
	checkStored(t, s.core, "a.1", "b.1", "c.1", "d.1")
	checkCount(t, s.core, 4)
}

// TestWriterStages: where a message's time goes between Store and its acknowledgement is
// summed per stage and weighted by messages: a sync wait the test holds is counted in the sync
// stage of every message of the batch, a commit it holds in the commit stage, and the wait of a
// request queued behind them in the queue stage.
func TestWriterStages(t *testing.T) {
	wt := newWriterTest(t, nil)
	releaseCommit := wt.commit.hold(1)
	releaseSync := wt.sync.hold(1)
	w1, _ := wt.submit(t, "a", 3, 30)
	wt.commit.await(t, 1)
	w2, _ := wt.submit(t, "b", 2, 20) // queued behind batch 1's commit
	heldCommit := time.Now()
	require.Eventually(t, func() bool { return wt.Metrics.QueueDepth.Load() == 1 }, patience, time.Millisecond)
	commitHeld := time.Since(heldCommit) // taken before the release: the stages span more
	releaseCommit()
	wt.sync.await(t, 1)
	heldSync := time.Now()
	require.Eventually(t, func() bool { return wt.commit.count() == 2 }, patience, time.Millisecond) // batch 2 committed behind the held sync
	syncHeld := time.Since(heldSync)
	releaseSync()
	require.NoError(t, w1.Wait())
	require.NoError(t, w2.Wait())

	stage := func(s Stage) time.Duration { return time.Duration(wt.Metrics.StageNanos[s].Load()) }
	require.Equal(t, uint64(5), wt.Metrics.Messages.Load())
	// Batch 1's three messages waited at least the held commit in the commit stage and the held
	// sync in the sync stage; batch 2's two messages waited in the queue while commit 1 was held.
	require.GreaterOrEqual(t, stage(StageCommit), 3*commitHeld, "commit stage")
	require.GreaterOrEqual(t, stage(StageSync), 3*syncHeld, "sync stage")
	require.GreaterOrEqual(t, stage(StageQueue), 2*commitHeld, "queue stage")
	for s := range NumStages {
		require.GreaterOrEqual(t, stage(s), time.Duration(0), StageNames[s])
	}
}

// TestWriterNotifyOrder: SubmitNotify's callbacks come in the order the requests were queued,
// exactly once each, failures included: a batch whose commit fails, and requests refused for
// the quota, are told so only after the batches queued before them (still waiting for their
// sync here) were told their outcome. A connection acknowledges its PUBLISHes in that order.
func TestWriterNotifyOrder(t *testing.T) {
	var quota atomic.Bool // set: the next quota check refuses, and signals refused
	refused := make(chan struct{})
	wt := newWriterTest(t, func(c *Config) {
		c.QuotaExceeded = func() bool {
			if quota.CompareAndSwap(true, false) {
				close(refused)
				return true
			}
			return false
		}
	})
	errCommit := errors.New("injected commit failure")
	release := wt.sync.hold(1)
	wt.commit.fail(2, errCommit)

	var mu sync.Mutex
	var got []string
	outcomes := make(chan struct{}, 16)
	notify := func(name string) notifyFunc {
		return func(err error) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s: %v", name, err))
			outcomes <- struct{}{}
		}
	}
	submit := func(name string) {
		t.Helper()
		m := msg("w/"+name, name)
		require.NoError(t, wt.SubmitNotify(context.Background(), []*message.Message{m}, 10, notify(name)))
	}
	submit("a") // batch 1: committed, its sync held
	wt.sync.await(t, 1)
	submit("b") // batch 2: its commit fails
	wt.commit.await(t, 2)
	quota.Store(true)
	submit("c") // refused: over the quota
	select {
	case <-refused:
	case <-time.After(patience):
		require.Fail(t, "the quota was never checked")
	}
	submit("d") // batch 3: stored
	wt.commit.await(t, 3)
	select {
	case <-outcomes:
		mu.Lock()
		defer mu.Unlock()
		require.Failf(t, "an outcome came before batch 1's sync", "%q", got)
	default:
	}
	release()
	for range 4 {
		select {
		case <-outcomes:
		case <-time.After(patience):
			require.Fail(t, "outcomes missing")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 4)
	require.Equal(t, "a: <nil>", got[0])
	require.Equal(t, "b: "+errCommit.Error(), got[1])
	require.True(t, strings.HasPrefix(got[2], "c: ") && strings.Contains(got[2], ErrQuotaExceeded.Error()), "got %q", got[2])
	require.Equal(t, "d: <nil>", got[3])
	checkStored(t, wt.core, "a", "d")
}

// notifyFunc is a func as a Notifier.
type notifyFunc func(error)

func (f notifyFunc) Notify(err error) { f(err) }
