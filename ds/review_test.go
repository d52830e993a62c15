package ds_test

// Regression tests for findings of a code review: option bounds, Close waking StreamsChanged
// waiters, batch bounds, the storage mode on reopen, and a failed WAL fsync.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestQueueLengthBounded: a huge QueueLength is refused by Validate and Open (it used to pass
// Validate and panic in make(chan)).
func TestQueueLengthBounded(t *testing.T) {
	o := fastOptions(func(o *ds.Options) { o.QueueLength = 1 << 60 })
	require.ErrorIs(t, o.Validate(), ds.ErrInvalidOptions)
	var err error
	require.NotPanics(t, func() {
		var db *ds.DB
		db, err = ds.Open(t.TempDir(), o)
		if db != nil {
			db.Close()
		}
	})
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
}

// TestStreamsChangedClosedOnClose: a reader blocked on StreamsChanged is woken by Close, and
// later calls return a closed channel.
func TestStreamsChangedClosedOnClose(t *testing.T) {
	db, err := ds.Open(t.TempDir(), fastOptions())
	require.NoError(t, err)
	ch := db.StreamsChanged()
	require.NoError(t, db.Close())
	select {
	case <-ch:
	case <-time.After(200 * time.Millisecond):
		require.Fail(t, "StreamsChanged channel still open after Close: waiters never wake")
	}
	select {
	case <-db.StreamsChanged():
	default:
		require.Fail(t, "StreamsChanged after Close returns an open channel")
	}
}

// TestBatchWithinMaxBatchMessages: MaxBatchMessages bounds one shard commit: two concurrent
// Stores of 9 messages with a bound of 10 commit as two batches, not one of 18.
func TestBatchWithinMaxBatchMessages(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.MaxBatchMessages = 10
		o.FlushInterval = 300 * time.Millisecond
	}))
	batch := func(c string) []ds.Message {
		var ms []ds.Message
		for i := range 9 {
			ms = append(ms, msg(c, "b/"+c, i))
		}
		return ms
	}
	// The stores run on goroutines of their own, which must not call require (db.store does):
	// they send their outcome back and the test checks it, as db.store would.
	type stored struct {
		msgs []ds.Message
		refs []ds.Ref
		err  error
	}
	results := make(chan stored, 2)
	var wg sync.WaitGroup
	for _, c := range []string{"x", "y"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := batch(c)
			refs, err := db.Store(context.Background(), msgs...)
			results <- stored{msgs, refs, err}
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		require.NoError(t, r.err)
		require.Len(t, r.refs, len(r.msgs))
		for i, ref := range r.refs {
			require.NotZero(t, ref.Timestamp, "ref %d", i)
			require.Equal(t, ds.ShardOf(r.msgs[i].ClientID, db.NShards()), ref.Shard, "ref %d", i)
		}
	}
	m, err := db.Metrics()
	require.NoError(t, err)
	tot := m.Totals()
	require.Equal(t, uint64(18), tot.Messages)
	require.Equal(t, uint64(2), tot.Batches, "one commit held %d messages, MaxBatchMessages is 10", tot.Messages/tot.Batches)
}

// TestStorageModeFixedAtCreation: the storage mode is chosen at creation; a reopen that asks
// for the other one uses the stored mode and finds the data.
func TestStorageModeFixedAtCreation(t *testing.T) {
	dir := t.TempDir()
	db, err := ds.Open(dir, fastOptions(func(o *ds.Options) { o.Expert.PebblePerShard = true }))
	require.NoError(t, err)
	_, err = db.Store(context.Background(), msg("c", "m/1", 0))
	require.NoError(t, err)
	require.NoError(t, db.Close())
	db, err = ds.Open(dir, fastOptions(func(o *ds.Options) { o.Expert.PebblePerShard = false }))
	require.NoError(t, err)
	defer db.Close()
	ss, err := db.Streams("m/#", time.Time{})
	require.NoError(t, err)
	require.Len(t, ss, 1)
	it, err := db.Iterator(ss[0], "m/#", time.Time{})
	require.NoError(t, err)
	msgs, _, err := db.Next(context.Background(), it, 10)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	_, err = os.Stat(filepath.Join(dir, "pebble"))
	require.ErrorIs(t, err, os.ErrNotExist, "a shared Pebble was created next to the per-shard ones")
}

// TestFailedSyncFailsShard: a failed WAL fsync fails the Store with ErrFailed (durability
// unknown: the message may or may not be there after a reopen), and every later write to the
// shard fails the same way until the DB is reopened; after the reopen every acknowledged
// message is there and the DB takes writes again.
func TestFailedSyncFailsShard(t *testing.T) {
	mem := vfs.NewMem()
	tog := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") {
				return errors.New("injected fsync error")
			}
		}
		return nil
	})}
	o := &ds.Options{NShards: 1, Expert: ds.ExpertOptions{FS: errorfs.Wrap(mem, tog), MemTableBytes: 8 << 20, CacheBytes: 8 << 20}}
	db, err := ds.Open("db", o)
	require.NoError(t, err)
	_, err = db.Store(context.Background(), msg("c", "f/1", 0))
	require.NoError(t, err)
	tog.On()
	_, err = db.Store(context.Background(), msg("c", "f/2", 1))
	require.ErrorIs(t, err, ds.ErrFailed)
	tog.Off()
	_, err = db.Store(context.Background(), msg("c", "f/3", 2))
	require.ErrorIs(t, err, ds.ErrFailed, "the shard keeps failing until reopened")
	db.Close()

	o.Expert.FS = mem
	db, err = ds.Open("db", o)
	require.NoError(t, err)
	defer db.Close()
	ss, err := db.Streams("f/#", time.Time{})
	require.NoError(t, err)
	var topics []string
	for _, s := range ss {
		it, err := db.Iterator(s, "f/#", time.Time{})
		require.NoError(t, err)
		msgs, _, err := db.Next(context.Background(), it, 100)
		require.NoError(t, err)
		for _, m := range msgs {
			topics = append(topics, m.Topic)
		}
	}
	require.Contains(t, topics, "f/1", "the acknowledged message survived")
	require.NotContains(t, topics, "f/3", "a write refused after the failure was stored")
	_, err = db.Store(context.Background(), msg("c", "f/4", 3))
	require.NoError(t, err)
}
