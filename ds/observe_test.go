package ds_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestStreamsChanged: the channel closes when a new topic pattern is learned and when a
// generation is added or dropped, not when a message goes to a known stream; once closed,
// Streams shows the change, and StreamsChanged hands out a new channel.
func TestStreamsChanged(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{2} }))
	ch := db.StreamsChanged()
	require.False(t, isClosed(ch), "closed before any change")

	db.store(msg("c", "w/a", 0))
	requireClosed(t, ch, "new pattern w/a")
	require.Len(t, mustStreams(t, db, "w/#"), 1)

	ch = db.StreamsChanged()
	require.False(t, isClosed(ch), "a new channel is open")
	db.store(msg("c", "w/a", 1)) // a known stream: no change
	db.store(msg("c", "w/a", 2))
	require.False(t, isClosed(ch), "closed without a new stream")

	db.store(msg("c", "w/b", 0), msg("c", "w/c", 0)) // "w/b" literal, "w/c" into "w/+"
	requireClosed(t, ch, "new patterns w/b, w/+")
	require.Equal(t, []string{"w/a", "w/b", "w/+"}, patterns(mustStreams(t, db, "w/#")))

	ch = db.StreamsChanged()
	db.store(msg("c", "w/d", 0)) // into the known "w/+"
	require.False(t, isClosed(ch), "closed for a message of a known '+' stream")

	// A '$' topic is a new pattern too.
	db.store(msg("c", "$SYS/up", 0))
	requireClosed(t, ch, "new pattern $SYS/up")

	ch = db.StreamsChanged()
	require.NoError(t, db.AddGeneration(t.Context()))
	requireClosed(t, ch, "AddGeneration")

	ch = db.StreamsChanged()
	sh := ds.ShardOf("c", db.NShards())
	require.NoError(t, db.DropGeneration(t.Context(), sh, 1))
	requireClosed(t, ch, "DropGeneration")

	// A failed call changes nothing.
	ch = db.StreamsChanged()
	require.Error(t, db.DropGeneration(t.Context(), sh, 1))
	_, err := db.Store(t.Context(), ds.Message{ClientID: "c", Topic: "w/+"})
	require.Error(t, err)
	require.False(t, isClosed(ch))

	// A waiter blocked on the channel wakes when another goroutine stores a new pattern.
	ch = db.StreamsChanged()
	woke := make(chan []ds.Stream)
	go func() {
		<-ch
		s, _ := db.Streams("new/#", time.Time{})
		woke <- s
	}()
	db.store(msg("c", "new/topic", 0))
	select {
	case s := <-woke:
		require.Len(t, s, 1, "the new stream is visible once the channel closes")
	case <-time.After(waitFor):
		require.Fail(t, "waiter not woken")
	}
}

// TestMetrics: per-shard and total counters match what was stored, and String renders a row
// per shard and a total.
func TestMetrics(t *testing.T) {
	db := openTestDB(t, fastOptions())
	perShard := map[ds.ShardID]uint64{}
	bytesPerShard := map[ds.ShardID]uint64{}
	topicsPerShard := map[ds.ShardID]map[string]bool{}
	var total uint64
	for i := range 60 {
		m := ds.Message{ClientID: fmt.Sprintf("client-%d", i%9), Topic: fmt.Sprintf("m/%d", i%3),
			Payload: make([]byte, i)}
		if i%10 == 0 {
			m.Topic = "$SYS/m"
		}
		var err error
		if i%2 == 0 {
			_, err = db.Store(t.Context(), m)
		} else {
			_, err = db.Store(t.Context(), m, ds.Message{ClientID: m.ClientID, Topic: m.Topic})
			perShard[ds.ShardOf(m.ClientID, 4)]++
			bytesPerShard[ds.ShardOf(m.ClientID, 4)] += uint64(len(m.ClientID) + len(m.Topic))
			total++
		}
		require.NoError(t, err)
		sh := ds.ShardOf(m.ClientID, 4)
		perShard[sh]++
		bytesPerShard[sh] += uint64(len(m.ClientID) + len(m.Topic) + len(m.Payload))
		total++
		if topicsPerShard[sh] == nil {
			topicsPerShard[sh] = map[string]bool{}
		}
		topicsPerShard[sh][m.Topic] = true
	}

	m, err := db.Metrics()
	require.NoError(t, err)
	require.Len(t, m.Shards, 4)
	for i, s := range m.Shards {
		require.Equal(t, ds.ShardID(i), s.Shard)
		require.Equal(t, perShard[s.Shard], s.Messages, "shard %d messages", i)
		require.Equal(t, perShard[s.Shard], s.Held, "shard %d messages held", i)
		require.Equal(t, bytesPerShard[s.Shard], s.Bytes, "shard %d bytes", i)
		require.Equal(t, 1, s.Generations)
		if s.Messages > 0 {
			require.NotZero(t, s.Batches)
			require.LessOrEqual(t, s.Batches, s.Messages)
		}
		require.Zero(t, s.QueueDepth)
		var commits uint64
		for _, c := range s.CommitLatency {
			commits += c
		}
		require.GreaterOrEqual(t, commits, s.Batches)
	}
	tot := m.Totals()
	require.Equal(t, total, tot.Messages)
	require.Equal(t, 4, tot.Generations)
	require.NotZero(t, m.DiskBytes)
	require.Len(t, m.Pebble, 1)

	// String: a header, a row per shard, a total row whose counters are the totals.
	str := m.String()
	lines := strings.Split(strings.TrimSpace(str), "\n")
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	for sh := range 4 {
		row, ok := rows[strconv.Itoa(sh)]
		require.True(t, ok, "no row for shard %d in\n%s", sh, str)
		require.Equal(t, strconv.FormatUint(perShard[ds.ShardID(sh)], 10), row[1], "shard %d in\n%s", sh, str)
	}
	require.Contains(t, rows, "total", str)
	require.Equal(t, strconv.FormatUint(total, 10), rows["total"][1], str)
	require.Contains(t, strings.Fields(lines[0]), "messages")
	require.Contains(t, str, "disk bytes")

	// Generations count every shard's generations.
	require.NoError(t, db.AddGeneration(t.Context()))
	m, err = db.Metrics()
	require.NoError(t, err)
	require.Equal(t, 8, m.Totals().Generations)
}

// TestMetricsStreams: ShardMetrics.Streams counts the streams of the current generation, '$'
// topics included.
//
// TestMetricsStreams: the stream count includes the streams under the '$' root.
func TestMetricsStreams(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.NShards = 1 }))
	db.store(msg("c", "a/b", 0), msg("c", "a/c", 0), msg("c", "$SYS/up", 0), msg("c", "$SYS/down", 0),
		msg("c", "$", 0))
	m, err := db.Metrics()
	require.NoError(t, err)
	require.Equal(t, 5, m.Shards[0].Streams)
}
