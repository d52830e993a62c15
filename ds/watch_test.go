package ds_test

import (
	"context"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestWatcherNamesChangedStreams: a Watcher parked in Next is woken by a durable Store and
// names the shard, the streams that received messages with their newest timestamps, and the
// read limit; an iterator on a named stream reads the new message.
func TestWatcherNamesChangedStreams(t *testing.T) {
	d := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{100, 1} }))
	w, err := d.Watch()
	require.NoError(t, err)
	defer w.Close()

	got := make(chan []ds.Change, 1)
	go func() {
		ch, err := w.Next(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- ch
	}()
	refs := d.store(msg("c", "a/1", 0), msg("c", "b/1", 1), msg("c", "a/1", 2))
	changes := <-got
	require.Len(t, changes, 1)
	c := changes[0]
	require.Equal(t, refs[0].Shard, c.Shard)
	require.Greater(t, c.Until, refs[2].Timestamp)
	require.Len(t, c.Streams, 2, "a/1 and b/1 are two streams")
	lasts := map[string]uint64{}
	for _, sc := range c.Streams {
		lasts[sc.Stream.Pattern] = sc.Last
		it, err := d.Iterator(sc.Stream, "#", time.Time{})
		require.NoError(t, err)
		msgs, _, err := d.Next(context.Background(), it, 10)
		require.NoError(t, err)
		require.Equal(t, sc.Last, msgs[len(msgs)-1].Timestamp)
	}
	require.Equal(t, map[string]uint64{"a/1": refs[2].Timestamp, "b/1": refs[1].Timestamp}, lasts)

	// Changes accumulate between calls.
	r1 := d.store(msg("c", "a/1", 3))
	r2 := d.store(msg("c", "a/1", 4))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	changes, err = w.Next(ctx)
	require.NoError(t, err)
	require.Len(t, changes, 1)
	require.Len(t, changes[0].Streams, 1)
	require.Equal(t, r2[0].Timestamp, changes[0].Streams[0].Last)
	require.Greater(t, r2[0].Timestamp, r1[0].Timestamp)

	require.NoError(t, w.Close())
	_, err = w.Next(ctx)
	require.ErrorIs(t, err, ds.ErrWatcherClosed)
}
