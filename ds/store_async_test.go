package ds_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/message"
	"github.com/stretchr/testify/require"
)

// asyncOutcome is what one StoreAsync's done reported.
type asyncOutcome struct {
	i   int
	ref ds.Ref
	err error
}

// asyncOutcomes collects the done calls of StoreAsync per publisher, in the order they came.
type asyncOutcomes struct {
	mu   sync.Mutex
	by   map[string][]asyncOutcome
	wg   sync.WaitGroup
	seen atomic.Int64
}

func newAsyncOutcomes() *asyncOutcomes {
	return &asyncOutcomes{by: map[string][]asyncOutcome{}}
}

// store queues m as message i of its publisher; done records the outcome.
func (o *asyncOutcomes) store(t *testing.T, db *ds.DB, m ds.Message, i int) {
	t.Helper()
	o.wg.Add(1)
	err := db.StoreAsync(context.Background(), m, func(ref ds.Ref, err error) {
		o.mu.Lock()
		o.by[m.ClientID] = append(o.by[m.ClientID], asyncOutcome{i: i, ref: ref, err: err})
		o.mu.Unlock()
		o.seen.Add(1)
		o.wg.Done()
	})
	if err != nil {
		o.wg.Done()
		require.NoError(t, err, "StoreAsync %s #%d", m.ClientID, i)
	}
}

// wait returns once every queued message's done was called.
func (o *asyncOutcomes) wait(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() { o.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		require.Fail(t, "StoreAsync outcomes missing", "%d came", o.seen.Load())
	}
}

// checkInOrder checks that each publisher's n messages succeeded, were reported in the order
// they were queued, with strictly increasing timestamps in the publisher's shard, and returns
// every ref with the payload it stored.
func (o *asyncOutcomes) checkInOrder(t *testing.T, nShards, n int, payload func(client string, i int) string) map[ds.Ref]string {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	refs := map[ds.Ref]string{}
	for client, outs := range o.by {
		require.Len(t, outs, n, "%s: outcomes", client)
		var last uint64
		for k, out := range outs {
			require.NoError(t, out.err, "%s #%d", client, out.i)
			require.Equal(t, k, out.i, "%s: outcome %d is message %d's: out of order", client, k, out.i)
			require.Equal(t, ds.ShardOf(client, nShards), out.ref.Shard, "%s #%d: shard", client, k)
			require.Greater(t, out.ref.Timestamp, last, "%s #%d: timestamp", client, k)
			last = out.ref.Timestamp
			refs[out.ref] = payload(client, k)
		}
	}
	return refs
}

// TestStoreAsync: messages queued by StoreAsync from many publishers at once are all stored
// once, each done call reports its message's Ref, and a publisher's outcomes come in the order
// it queued its messages. Messages queued right before Close are reported before Close returns
// and are on disk after reopening.
func TestStoreAsync(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.Durability = ds.Sync }))
	const publishers, each = 20, 150
	payload := func(client string, i int) string { return fmt.Sprintf("%s#%d", client, i) }
	message := func(p, i int) ds.Message {
		client := fmt.Sprintf("pub-%d", p)
		return ds.Message{ClientID: client, Topic: "async/" + client, QoS: 1, Payload: []byte(payload(client, i))}
	}
	outs := newAsyncOutcomes()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				outs.store(t, db.DB, message(p, i), i)
			}
		}()
	}
	wg.Wait()
	outs.wait(t)
	refs := outs.checkInOrder(t, db.NShards(), each, payload)
	require.Len(t, refs, publishers*each)
	read := byRef(t, db.readAll())
	require.Len(t, read, publishers*each, "messages read")
	for ref, want := range refs {
		require.Equal(t, want, string(read[ref].Payload), "message at %v", ref)
	}

	// Queued, then Close at once: every outcome is in when Close returns.
	late := newAsyncOutcomes()
	for i := range each {
		late.store(t, db.DB, message(publishers, i), i)
	}
	require.NoError(t, db.Close())
	require.Equal(t, int64(each), late.seen.Load(), "outcomes reported when Close returned")
	lateRefs := late.checkInOrder(t, db.NShards(), each, payload)
	db = openTestDBAt(t, db.dir, db.opts)
	read = byRef(t, db.readAll())
	require.Len(t, read, (publishers+1)*each, "messages read after reopening")
	for ref, want := range lateRefs {
		require.Equal(t, want, string(read[ref].Payload), "message at %v after reopening", ref)
	}
}

// TestStoreAsyncRefused: a message StoreAsync does not queue gets the same errors as Store,
// returned at once, and its done is never called.
func TestStoreAsyncRefused(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.MaxMessageBytes = 1 << 10 }))
	never := func(ds.Ref, error) { t.Errorf("done called for a message that was not queued") }
	ctx := context.Background()
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		m    ds.Message
		want error
	}{
		{"wildcard topic", ctx, ds.Message{ClientID: "c", Topic: "a/+/b", QoS: 1}, ds.ErrInvalidTopic},
		{"empty topic", ctx, ds.Message{ClientID: "c", QoS: 1}, ds.ErrInvalidTopic},
		{"QoS 3", ctx, ds.Message{ClientID: "c", Topic: "a", QoS: 3}, ds.ErrInvalidMessage},
		{"too large", ctx, ds.Message{ClientID: "c", Topic: "a", Payload: make([]byte, 2<<10)}, ds.ErrMessageTooLarge},
		{"canceled", canceled, ds.Message{ClientID: "c", Topic: "a"}, context.Canceled},
	} {
		err := db.StoreAsync(c.ctx, c.m, never)
		require.ErrorIs(t, err, c.want, c.name)
	}
	require.NoError(t, db.Close())
	require.ErrorIs(t, db.StoreAsync(ctx, ds.Message{ClientID: "c", Topic: "a"}, never), ds.ErrClosed)
}

// waiterOnlyBackend hands out shards that offer only Submit with a Waiter (as a replicated
// backend does), each Wait held until the test releases it, so that a shard's Waits can
// return out of order.
type waiterOnlyBackend struct {
	*recordingBackend
	gates chan chan struct{} // one per Submit, in order; the test closes them
}

func (b *waiterOnlyBackend) Shards() []ds.ShardBackend {
	shards := b.recordingBackend.Shards()
	for i, s := range shards {
		shards[i] = waiterOnlyShard{ShardBackend: s, gates: b.gates}
	}
	return shards
}

// waiterOnlyShard hides every method but ShardBackend's (the embedded shard's SubmitNotify).
type waiterOnlyShard struct {
	ds.ShardBackend
	gates chan chan struct{}
}

func (s waiterOnlyShard) Submit(ctx context.Context, msgs []*message.Message, bytes int) (ds.Waiter, error) {
	w, err := s.ShardBackend.Submit(ctx, msgs, bytes)
	if err != nil {
		return nil, err
	}
	gate := make(chan struct{})
	s.gates <- gate
	return heldWaiter{w: w, gate: gate}, nil
}

type heldWaiter struct {
	w    ds.Waiter
	gate chan struct{}
}

func (h heldWaiter) Wait() error {
	<-h.gate
	return h.w.Wait()
}

// TestStoreAsyncWaiterBackend: over a backend whose Waiters finish in any order, StoreAsync
// still reports a shard's outcomes in the order the messages were queued, and Close returns
// only once every outcome was reported.
func TestStoreAsyncWaiterBackend(t *testing.T) {
	b := &waiterOnlyBackend{recordingBackend: openRecording(t, t.TempDir()), gates: make(chan chan struct{}, 16)}
	db, err := ds.OpenBackend(b, nil)
	require.NoError(t, err)
	var mu sync.Mutex
	var got []string
	outcome := make(chan struct{}, 16)
	ctx := context.Background()
	store := func(name string) chan struct{} {
		t.Helper()
		err := db.StoreAsync(ctx, ds.Message{ClientID: "one", Topic: "w/" + name, Payload: []byte(name)}, func(ref ds.Ref, err error) {
			mu.Lock()
			got = append(got, fmt.Sprintf("%s %v", name, err))
			mu.Unlock()
			outcome <- struct{}{}
		})
		require.NoError(t, err)
		return <-b.gates
	}
	gates := []chan struct{}{store("a"), store("b"), store("c")}
	close(gates[2]) // c's Wait returns first, then b's: their outcomes still wait for a's
	close(gates[1])
	select { // an absence: given time to show up, no outcome may come before a's
	case <-outcome:
		mu.Lock()
		defer mu.Unlock()
		require.Failf(t, "an outcome came before the first message's", "%q", got)
	case <-time.After(50 * time.Millisecond):
	}
	close(gates[0])
	for range 3 {
		<-outcome
	}
	mu.Lock()
	require.Equal(t, []string{"a <nil>", "b <nil>", "c <nil>"}, got)
	mu.Unlock()

	// Close waits for the outcome of a message still waited for.
	last := store("d")
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	select { // an absence: Close must not return while an outcome is still to come
	case err := <-closed:
		require.Failf(t, "Close returned before the last outcome", "Close: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(last)
	require.NoError(t, <-closed)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"a <nil>", "b <nil>", "c <nil>", "d <nil>"}, got, "outcomes when Close returned")
}
