package ds_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/shard"
	"github.com/stretchr/testify/require"
)

// recordingBackend passes every call on to the embedded Backend of Open and counts them, to
// check what OpenBackend and the DB ask of a Backend. It does not implement StorageStatser.
type recordingBackend struct {
	b                       ds.Backend
	shards, watches, closes atomic.Int32
	changes                 atomic.Int32 // notifications of the backend passed to the DB
}

func (r *recordingBackend) Shards() []ds.ShardBackend {
	r.shards.Add(1)
	return r.b.Shards()
}

func (r *recordingBackend) Watch(f func()) {
	r.watches.Add(1)
	r.b.Watch(func() {
		r.changes.Add(1)
		f()
	})
}

func (r *recordingBackend) WatchDurable(f func(shard.Durable)) { r.b.WatchDurable(f) }

func (r *recordingBackend) Close() error {
	r.closes.Add(1)
	return r.b.Close()
}

// statsBackend is a recordingBackend that passes StorageStats on too.
type statsBackend struct{ *recordingBackend }

func (s statsBackend) StorageStats() ds.StorageStats {
	return s.b.(ds.StorageStatser).StorageStats()
}

// reversedBackend hands out its shards in the wrong order.
type reversedBackend struct{ *recordingBackend }

func (r reversedBackend) Shards() []ds.ShardBackend {
	s := r.recordingBackend.Shards()
	slices.Reverse(s)
	return s
}

// openRecording opens the embedded storage in dir with fastOptions and wraps it. The storage
// is closed when the test ends unless a DB closed it.
func openRecording(t *testing.T, dir string) *recordingBackend {
	t.Helper()
	b, err := ds.OpenEmbedded(dir, fastOptions())
	require.NoError(t, err)
	r := &recordingBackend{b: b}
	t.Cleanup(func() {
		if r.closes.Load() == 0 {
			require.NoError(t, b.Close())
		}
	})
	return r
}

// TestOpenBackend: a DB over a Backend stores, lists, reads and administers exactly like one
// from Open; it asks the Backend for its shards and registers its watch once, closes it once,
// and what it stored is on disk for Open afterwards.
func TestOpenBackend(t *testing.T) {
	dir := t.TempDir()
	rb := openRecording(t, dir)
	db, err := ds.OpenBackend(rb, &ds.Options{MaxMessageBytes: 1 << 10})
	require.NoError(t, err)
	require.EqualValues(t, 1, rb.shards.Load(), "Shards calls")
	require.EqualValues(t, 1, rb.watches.Load(), "Watch calls")
	require.Equal(t, 4, db.NShards())
	d := &testDB{DB: db, t: t}
	ctx := context.Background()

	// One message (Store's fast path), then a batch over several shards.
	changed := db.StreamsChanged()
	in := []ds.Message{msg("c0", "ob/a", 0)}
	refs := d.store(in[0])
	requireClosed(t, changed, "StreamsChanged after a new stream")
	require.NotZero(t, rb.changes.Load(), "the backend's notification did not reach the DB")
	var batch []ds.Message
	for i := range 40 {
		batch = append(batch, msg(fmt.Sprintf("c%d", i%7), fmt.Sprintf("ob/%c", 'a'+i%3), i))
	}
	refs = append(refs, d.store(batch...)...)
	in = append(in, batch...)
	want := make(map[ds.Ref]ds.Message, len(in))
	for i, m := range in {
		want[refs[i]] = stored(m, refs[i])
	}
	require.Equal(t, want, byRef(t, d.readFilter("ob/#", time.Time{}, 7)))
	require.Len(t, d.readFilter("ob/b", time.Time{}, 100), 13)

	// The DB's own options apply: MaxMessageBytes bounds Store.
	_, err = db.Store(ctx, ds.Message{ClientID: "c", Topic: "ob/big", Payload: make([]byte, 2<<10)})
	require.ErrorIs(t, err, ds.ErrMessageTooLarge)

	// Administration goes through the shards too.
	require.NoError(t, db.AddGeneration(ctx))
	gens := generationsByShard(t, db)
	require.Len(t, gens, 4)
	for sh, ids := range gens {
		require.Equal(t, []ds.GenerationID{1, 2}, ids, "shard %d", sh)
	}
	require.NoError(t, db.DropGeneration(ctx, 0, 1))
	require.ErrorIs(t, db.DropGeneration(ctx, 0, 2), ds.ErrCurrentGeneration)
	require.ErrorIs(t, db.DropGeneration(ctx, 4, 1), ds.ErrShardNotFound)
	dump, err := db.DumpLayout(1, 1)
	require.NoError(t, err)
	require.NotEmpty(t, dump)

	// Counters come from the shards; the storage fields stay zero, as recordingBackend does not
	// report them.
	m, err := db.Metrics()
	require.NoError(t, err)
	require.Len(t, m.Shards, 4)
	require.EqualValues(t, len(in), m.Totals().Messages)
	require.Zero(t, m.DiskBytes)
	require.Zero(t, m.BytesWritten)
	require.Empty(t, m.Pebble)

	require.NoError(t, db.Close())
	require.EqualValues(t, 1, rb.closes.Load(), "Close calls")
	require.True(t, isClosed(db.StreamsChanged()), "StreamsChanged open after Close")
	require.ErrorIs(t, db.Close(), ds.ErrClosed)
	_, err = db.Store(ctx, msg("c0", "ob/a", 1))
	require.ErrorIs(t, err, ds.ErrClosed)
	require.EqualValues(t, 1, rb.closes.Load(), "Close calls after a second Close")
	require.EqualValues(t, 1, rb.shards.Load(), "Shards calls")
	require.EqualValues(t, 1, rb.watches.Load(), "Watch calls")

	// The backend released the directory, with everything in it but the dropped generation.
	var kept []ds.Message
	for _, w := range want {
		if w.Shard != 0 {
			kept = append(kept, w)
		}
	}
	d = openTestDBAt(t, dir, fastOptions())
	require.ElementsMatch(t, kept, d.readFilter("ob/#", time.Time{}, 100))
}

// TestOpenBackendStorageStats: a Backend that implements StorageStatser fills the storage
// fields of Metrics.
func TestOpenBackendStorageStats(t *testing.T) {
	rb := openRecording(t, t.TempDir())
	db, err := ds.OpenBackend(statsBackend{rb}, nil)
	require.NoError(t, err)
	d := &testDB{DB: db, t: t}
	for i := range 20 {
		d.store(msg("c", "st/x", i))
	}
	m, err := db.Metrics()
	require.NoError(t, err)
	require.NotZero(t, m.DiskBytes)
	require.NotZero(t, m.BytesWritten)
	require.Len(t, m.Pebble, 1)
	require.NoError(t, db.Close())
	require.EqualValues(t, 1, rb.closes.Load())
}

// TestOpenBackendRefuses: OpenBackend refuses invalid options, a shard count other than
// Options.NShards and shards out of order, and leaves the Backend to its caller then.
func TestOpenBackendRefuses(t *testing.T) {
	rb := openRecording(t, t.TempDir())
	_, err := ds.OpenBackend(rb, &ds.Options{MaxMessageBytes: -1, QueueLength: -1})
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
	require.True(t, strings.Contains(err.Error(), "MaxMessageBytes") && strings.Contains(err.Error(), "QueueLength"), "%v", err)

	_, err = ds.OpenBackend(rb, &ds.Options{NShards: 3})
	require.ErrorIs(t, err, ds.ErrShardMismatch)

	_, err = ds.OpenBackend(reversedBackend{rb}, nil)
	require.Error(t, err)
	require.Zero(t, rb.closes.Load(), "a failed OpenBackend closed the backend")

	// The backend is still usable: a DB over it works.
	db, err := ds.OpenBackend(rb, &ds.Options{NShards: 4})
	require.NoError(t, err)
	(&testDB{DB: db, t: t}).store(msg("c", "rf/x", 0))
	require.NoError(t, db.Close())
	require.EqualValues(t, 1, rb.closes.Load())
	require.ErrorIs(t, db.Close(), ds.ErrClosed)
}
