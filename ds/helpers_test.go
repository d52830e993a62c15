package ds_test

// Helpers shared by the functional tests of package ds (roundtrip, filter, iterator,
// generation, badinput, quota, observe). Every test runs real Pebble on real disk in
// t.TempDir(); nothing is mocked.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// waitFor bounds every wait of these tests for a background event (rotation, retention,
// compaction, a notification). Generous, because -race on 2 cores is slow; a passing test
// never waits this long.
const waitFor = 20 * time.Second

// pollEvery is how often a condition is checked while waiting.
const pollEvery = 2 * time.Millisecond

// fastOptions returns Options for a small, fast test DB: 4 shards, no fsync. mods change them
// further.
func fastOptions(mods ...func(*ds.Options)) *ds.Options {
	o := &ds.Options{NShards: 4, Durability: ds.NoSync, Expert: ds.ExpertOptions{
		MemTableBytes: 8 << 20, CacheBytes: 8 << 20,
	}}
	for _, m := range mods {
		m(o)
	}
	return o
}

// testDB is a DB under test with the directory and options it was opened with, so that a test
// can close and reopen it.
type testDB struct {
	*ds.DB
	t    testing.TB
	dir  string
	opts *ds.Options
}

// openTestDB opens a DB in a fresh temporary directory. It is closed when the test ends.
func openTestDB(t testing.TB, opts *ds.Options) *testDB {
	t.Helper()
	return openTestDBAt(t, t.TempDir(), opts)
}

// openTestDBAt opens the DB in dir with opts. It is closed when the test ends.
func openTestDBAt(t testing.TB, dir string, opts *ds.Options) *testDB {
	t.Helper()
	db, err := ds.Open(dir, opts)
	require.NoError(t, err)
	d := &testDB{DB: db, t: t, dir: dir, opts: opts}
	t.Cleanup(func() {
		if err := db.Close(); !errors.Is(err, ds.ErrClosed) {
			require.NoError(t, err, "close")
		}
	})
	return d
}

// reopen closes the DB and opens it again in the same directory with opts (nil: the options
// it was opened with).
func (d *testDB) reopen(opts *ds.Options) *testDB {
	d.t.Helper()
	require.NoError(d.t, d.Close())
	if opts == nil {
		opts = d.opts
	}
	return openTestDBAt(d.t, d.dir, opts)
}

// store stores msgs in one call and returns their refs.
func (d *testDB) store(msgs ...ds.Message) []ds.Ref {
	d.t.Helper()
	refs, err := d.Store(context.Background(), msgs...)
	require.NoError(d.t, err)
	require.Len(d.t, refs, len(msgs))
	for i, r := range refs {
		require.NotZero(d.t, r.Timestamp, "ref %d", i)
		require.Equal(d.t, ds.ShardOf(msgs[i].ClientID, d.NShards()), r.Shard, "ref %d", i)
	}
	return refs
}

// drain reads it with batches of at most max messages until Next returns an empty batch or an
// error. It returns the messages, the last iterator and the error that ended the read (nil
// for an empty batch). It checks that the stream's timestamps strictly increase, that every
// message is at or after the iterator's start and that the iterator never moves backwards.
func (d *testDB) drain(it ds.Iterator, max int) ([]ds.Message, ds.Iterator, error) {
	d.t.Helper()
	var out []ds.Message
	start := it.Next
	// Plain comparisons in the loop, require only on a failure: testify's per-call cost
	// dominates a model test's reads.
	for range 1 << 20 {
		msgs, next, err := d.Next(context.Background(), it, max)
		if err != nil {
			require.Empty(d.t, msgs, "messages returned with error %v", err)
			return out, next, err
		}
		switch {
		case len(msgs) > max:
			require.Failf(d.t, "too many messages", "Next(max %d) returned %d messages", max, len(msgs))
		case next.Next < it.Next:
			require.Failf(d.t, "iterator moved backwards", "iterator moved backwards from %d to %d", it.Next, next.Next)
		case next.Stream != it.Stream || next.Filter != it.Filter:
			require.Failf(d.t, "iterator changed", "Next changed the iterator's stream or filter: %s to %s", it, next)
		}
		if len(msgs) == 0 {
			return out, next, nil
		}
		for _, m := range msgs {
			switch n := len(out); {
			case m.Timestamp < start:
				require.Failf(d.t, "message before the start", "stream %s: message at %d before the iterator's start %d", it.Stream, m.Timestamp, start)
			case n > 0 && m.Timestamp <= out[n-1].Timestamp:
				require.Failf(d.t, "out of order", "stream %s out of order: %d after %d", it.Stream, m.Timestamp, out[n-1].Timestamp)
			case m.Timestamp >= next.Next:
				require.Failf(d.t, "resume position too early", "stream %s: resume position %d at or before a returned message %d", it.Stream, next.Next, m.Timestamp)
			}
			out = append(out, m)
		}
		it = next
	}
	require.Failf(d.t, "drain did not end", "drain of %s did not end", it.Stream)
	return nil, it, nil
}

// readFilter reads every message that matches filter since since, over all streams that
// Streams returns, each drained in batches of max. A read that ends with an error other than
// ErrEndOfStream fails the test. The messages come grouped by stream, in Streams order.
func (d *testDB) readFilter(filter string, since time.Time, max int) []ds.Message {
	d.t.Helper()
	streams, err := d.Streams(filter, since)
	require.NoError(d.t, err)
	require.True(d.t, slices.IsSortedFunc(streams, ds.Stream.Compare), "Streams(%q) not in read order", filter)
	var out []ds.Message
	for i, s := range streams {
		if i > 0 {
			require.NotZero(d.t, s.Compare(streams[i-1]), "Streams(%q) returned %s twice", filter, s)
		}
		it, err := d.Iterator(s, filter, since)
		require.NoError(d.t, err)
		msgs, _, err := d.drain(it, max)
		if err != nil && !errors.Is(err, ds.ErrEndOfStream) {
			require.NoError(d.t, err, "stream %s", s)
		}
		out = append(out, msgs...)
	}
	return out
}

// readAll reads every stored message: '#' for the ordinary topics, and "F/#" for each '$'
// first level F of sysFirstLevels, the only ones the tests use ('#' never matches a '$' topic).
func (d *testDB) readAll() []ds.Message {
	d.t.Helper()
	out := d.readFilter("#", time.Time{}, 1000)
	for _, m := range out {
		require.False(d.t, strings.HasPrefix(m.Topic, "$"), "'#' returned %q", m.Topic)
	}
	for _, first := range sysFirstLevels {
		out = append(out, d.readFilter(first+"/#", time.Time{}, 1000)...)
	}
	return out
}

// sysFirstLevels are the only '$' first levels the tests use, so that readAll finds them.
var sysFirstLevels = []string{"$SYS", "$x", "$"}

// byRef indexes messages by where they are stored and fails on duplicates.
func byRef(t testing.TB, msgs []ds.Message) map[ds.Ref]ds.Message {
	t.Helper()
	out := make(map[ds.Ref]ds.Message, len(msgs))
	for _, m := range msgs {
		r := ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}
		if old, dup := out[r]; dup {
			require.Failf(t, "message read twice", "message %v read twice: %q and %q", r, old.Topic, m.Topic)
		}
		out[r] = m
	}
	return out
}

// normalized returns m as the DB gives it back: the MQTT-equivalent empty and nil slices are
// nil, and the message expiry is dropped when it is absent.
func normalized(m ds.Message) ds.Message {
	if len(m.Payload) == 0 {
		m.Payload = nil
	}
	p := &m.Properties
	if len(p.CorrelationData) == 0 {
		p.CorrelationData = nil
	}
	if len(p.User) == 0 {
		p.User = nil
	}
	if !p.HasMessageExpiry {
		p.MessageExpiry = 0
	}
	return m
}

// stored returns m as it must read back from ref.
func stored(m ds.Message, ref ds.Ref) ds.Message {
	m = normalized(m)
	m.Shard, m.Timestamp = uint16(ref.Shard), ref.Timestamp
	return m
}

// requireClosed waits until ch is closed.
func requireClosed(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		require.Failf(t, "channel not closed", "%s: channel not closed after %v", what, waitFor)
	}
}

// isClosed reports whether ch is closed now.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// stepClock is a clock that moves only when told; Options.Expert.Now.
type stepClock struct{ us atomic.Int64 }

func newStepClock(start time.Time) *stepClock {
	c := &stepClock{}
	c.us.Store(start.UnixMicro())
	return c
}

func (c *stepClock) Now() time.Time          { return time.UnixMicro(c.us.Load()) }
func (c *stepClock) Advance(d time.Duration) { c.us.Add(d.Microseconds()) }

// generationsByShard returns the generation IDs of every shard.
func generationsByShard(t testing.TB, db *ds.DB) map[ds.ShardID][]ds.GenerationID {
	t.Helper()
	gens, err := db.Generations()
	require.NoError(t, err)
	out := map[ds.ShardID][]ds.GenerationID{}
	for _, g := range gens {
		out[g.Shard] = append(out[g.Shard], g.ID)
	}
	return out
}

// eventually waits until cond holds, checking every pollEvery, for at most waitFor.
func eventually(t testing.TB, cond func() bool, format string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitFor, pollEvery, fmt.Sprintf(format, args...))
}

// msg is a message with a payload that names it.
func msg(client, topic string, i int) ds.Message {
	return ds.Message{ClientID: client, Topic: topic, QoS: 1, Payload: fmt.Appendf(nil, "%s#%d", topic, i)}
}
