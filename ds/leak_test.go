package ds_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestCloseLeavesNoGoroutines: Close stops every goroutine the DB started (shard writers and
// syncers, background compactions of dropped generations, the subscription feeds, Pebble's
// own) and ends waiting subscriptions and watchers.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	for _, perShard := range []bool{false, true} {
		db, err := ds.Open(t.TempDir(), fastOptions(func(o *ds.Options) { o.Expert.PebblePerShard = perShard }))
		require.NoError(t, err)
		ctx := context.Background()
		for i := range 50 {
			_, err := db.Store(ctx, msg("c", "leak/a", i), msg("d", "leak/b", i))
			require.NoError(t, err)
		}
		require.NoError(t, db.AddGeneration(ctx))
		gens, err := db.Generations()
		require.NoError(t, err)
		require.NoError(t, db.DropGeneration(ctx, gens[0].Shard, gens[0].ID))
		ss, err := db.Streams("#", time.Time{})
		require.NoError(t, err)
		for _, s := range ss {
			it, err := db.Iterator(s, "#", time.Time{})
			require.NoError(t, err)
			_, _, _ = db.Next(ctx, it, 10)
		}
		// Subscriptions (one behind the tail, reading shards in parallel, one waiting at the
		// tail) and a watcher end with the DB.
		sub, err := db.Subscribe("leak/#", db.StartPosition(time.Time{}), nil)
		require.NoError(t, err)
		msgs, err := sub.Next(ctx, 10)
		require.NoError(t, err)
		require.NotEmpty(t, msgs)
		tail, err := db.TailPosition()
		require.NoError(t, err)
		waiting, err := db.Subscribe("leak/#", tail, nil)
		require.NoError(t, err)
		w, err := db.Watch()
		require.NoError(t, err)
		ended := make(chan error, 2)
		go func() { _, err := waiting.Next(ctx, 10); ended <- err }()
		go func() { _, err := w.Next(ctx); ended <- err }()
		require.NoError(t, db.Close())
		for range 2 {
			err := <-ended
			require.True(t, errors.Is(err, ds.ErrSubscriptionClosed) || errors.Is(err, ds.ErrWatcherClosed), "%v", err)
		}
		_, err = sub.Next(ctx, 10)
		require.ErrorIs(t, err, ds.ErrSubscriptionClosed)
	}
	ok := assertEventually(func() bool { return runtime.NumGoroutine() <= before }, 10*time.Second)
	if !ok {
		buf := make([]byte, 1<<20)
		require.Failf(t, "goroutines leaked", "goroutines: %d before Open, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// assertEventually polls cond until it holds or limit passes. Polling is the only way here:
// nothing signals a goroutine's exit to another package, and testify's Eventually would add a
// goroutine of its own to the count being checked.
func assertEventually(cond func() bool, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}
