package ds_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// requireUsable stores a good message and reads it back: the DB still works after bad input.
func requireUsable(t *testing.T, db *testDB) {
	t.Helper()
	m := msg("good-client", fmt.Sprintf("usable/%d", time.Now().UnixNano()), 0)
	ref := db.store(m)[0]
	got := db.readFilter(m.Topic, time.Time{}, 10)
	require.Len(t, got, 1)
	require.Equal(t, stored(m, ref), normalized(got[0]))
}

// requireNothingStored checks that the DB holds exactly the messages of requireUsable calls.
func requireNothingStored(t *testing.T, db *testDB) {
	t.Helper()
	for _, m := range db.readAll() {
		require.True(t, strings.HasPrefix(m.Topic, "usable/"), "stored %q", m.Topic)
	}
}

// TestStoreRejectsBadMessages: every invalid message is refused with its sentinel error, alone
// or anywhere in a batch, and then nothing of the call is stored.
func TestStoreRejectsBadMessages(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.MaxMessageBytes = 4096 }))
	cases := []struct {
		name string
		m    ds.Message
		want error
	}{
		{"empty topic", ds.Message{ClientID: "c", Topic: ""}, ds.ErrInvalidTopic},
		{"plus", ds.Message{ClientID: "c", Topic: "a/+/b"}, ds.ErrInvalidTopic},
		{"plus alone", ds.Message{ClientID: "c", Topic: "+"}, ds.ErrInvalidTopic},
		{"hash", ds.Message{ClientID: "c", Topic: "a/#"}, ds.ErrInvalidTopic},
		{"hash inside a level", ds.Message{ClientID: "c", Topic: "a/b#"}, ds.ErrInvalidTopic},
		{"NUL", ds.Message{ClientID: "c", Topic: "a/\x00/b"}, ds.ErrInvalidTopic},
		{"invalid UTF-8", ds.Message{ClientID: "c", Topic: "a/\xff\xfe"}, ds.ErrInvalidTopic},
		{"surrogate", ds.Message{ClientID: "c", Topic: "a/\xed\xa0\x80"}, ds.ErrInvalidTopic},
		{"topic of 65536 bytes", ds.Message{ClientID: "c", Topic: strings.Repeat("t", 65536)}, ds.ErrInvalidTopic},
		{"QoS 3", ds.Message{ClientID: "c", Topic: "a", QoS: 3}, ds.ErrInvalidMessage},
		{"QoS 255", ds.Message{ClientID: "c", Topic: "a", QoS: 255}, ds.ErrInvalidMessage},
		{"payload format 2", ds.Message{ClientID: "c", Topic: "a",
			Properties: ds.Properties{PayloadFormat: 2}}, ds.ErrInvalidMessage},
		{"payload too large", ds.Message{ClientID: "c", Topic: "a", Payload: make([]byte, 4097)}, ds.ErrMessageTooLarge},
		{"properties too large", ds.Message{ClientID: "c", Topic: "a", Payload: make([]byte, 2000),
			Properties: ds.Properties{User: []ds.UserProperty{{Key: "k", Value: strings.Repeat("v", 2100)}}}},
			ds.ErrMessageTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			refs, err := db.Store(t.Context(), c.m)
			require.ErrorIs(t, err, c.want)
			require.Empty(t, refs)
			// In a batch, first, middle or last, with good messages on every shard.
			var batch []ds.Message
			for i := range 8 {
				batch = append(batch, msg(fmt.Sprintf("c%d", i), fmt.Sprintf("bad/batch/%d", i), i))
			}
			for _, at := range []int{0, 4, 8} {
				b := append(append(append([]ds.Message(nil), batch[:at]...), c.m), batch[at:]...)
				refs, err := db.Store(t.Context(), b...)
				require.ErrorIs(t, err, c.want, "bad message at %d", at)
				require.Empty(t, refs)
			}
			requireNothingStored(t, db)
			requireUsable(t, db)
		})
	}
	m, err := db.Metrics()
	require.NoError(t, err)
	require.Equal(t, uint64(len(cases)), m.Totals().Messages, "only the good messages were stored")

	// Limits are inclusive: a message of exactly MaxMessageBytes (topic + payload + client ID
	// + properties) is stored.
	exact := ds.Message{ClientID: "cl", Topic: "top", Payload: make([]byte, 4096-5)}
	db.store(exact)
}

// TestBadFilters: invalid filters are refused by Streams, Iterator and Next.
func TestBadFilters(t *testing.T) {
	db := openTestDB(t, fastOptions())
	db.store(msg("c", "f/a", 0))
	streams := mustStreams(t, db, "#")
	require.NotEmpty(t, streams)
	good := mustIterator(t, db, streams[0], "#")
	for _, f := range []string{
		"", "a/#/b", "#/", "a#", "a/b+", "+a", "a/\x00", "\xff", strings.Repeat("f", 65536),
	} {
		_, err := db.Streams(f, time.Time{})
		require.ErrorIs(t, err, ds.ErrInvalidFilter, "Streams(%q)", f)
		_, err = db.Iterator(streams[0], f, time.Time{})
		require.ErrorIs(t, err, ds.ErrInvalidFilter, "Iterator(%q)", f)
		it := good
		it.Filter = f
		msgs, _, err := db.Next(t.Context(), it, 10)
		require.Error(t, err, "Next with filter %q", f)
		require.True(t, errors.Is(err, ds.ErrInvalidFilter) || errors.Is(err, ds.ErrInvalidIterator), "%v", err)
		require.Empty(t, msgs)
	}
	requireUsable(t, db)
}

// TestBadIterators: bytes that are not an iterator, damaged ones, iterators naming a shard,
// generation or stream that does not exist, and a max <= 0.
func TestBadIterators(t *testing.T) {
	db := openTestDB(t, fastOptions())
	db.store(msg("c", "i/a", 0), msg("c", "i/b", 1))
	streams := mustStreams(t, db, "i/a")
	require.Len(t, streams, 1)
	it := mustIterator(t, db, streams[0], "i/#")
	good, err := it.MarshalBinary()
	require.NoError(t, err)
	sb, err := streams[0].MarshalBinary()
	require.NoError(t, err)

	invalid := func(b []byte, what string) {
		t.Helper()
		_, err := ds.UnmarshalIterator(b)
		require.ErrorIs(t, err, ds.ErrInvalidIterator, what)
	}
	invalid(nil, "nil")
	invalid([]byte{}, "empty")
	invalid([]byte("garbage that is not an iterator"), "garbage")
	invalid(sb, "a stream's bytes")
	for n := range len(good) {
		invalid(good[:n], fmt.Sprintf("truncated to %d bytes", n))
	}
	invalid(append(append([]byte(nil), good...), 0), "a trailing byte")
	for i := range len(good) * 8 {
		b := append([]byte(nil), good...)
		b[i/8] ^= 1 << (i % 8)
		invalid(b, fmt.Sprintf("bit %d flipped", i))
	}
	_, err = ds.UnmarshalStream(good)
	require.ErrorIs(t, err, ds.ErrInvalidIterator, "an iterator's bytes as a stream")
	s2, err := ds.UnmarshalStream(sb)
	require.NoError(t, err)
	require.Equal(t, streams[0], s2)

	// Well-formed iterators that name what does not exist.
	badShard := it
	badShard.Stream.Shard = ds.ShardID(db.NShards())
	b, err := badShard.MarshalBinary()
	require.NoError(t, err)
	decoded, err := ds.UnmarshalIterator(b)
	require.NoError(t, err)
	_, _, err = db.Next(t.Context(), decoded, 10)
	require.ErrorIs(t, err, ds.ErrShardNotFound)
	_, err = db.Iterator(badShard.Stream, "#", time.Time{})
	require.ErrorIs(t, err, ds.ErrShardNotFound)
	_, err = db.DumpLayout(ds.ShardID(db.NShards()), 1)
	require.ErrorIs(t, err, ds.ErrShardNotFound)

	badGen := it
	badGen.Stream.Generation = 7
	_, _, err = db.Next(t.Context(), badGen, 10)
	require.ErrorIs(t, err, ds.ErrGenerationNotFound)

	badKey := it
	badKey.Stream.Key = 1 << 40
	_, _, err = db.Next(t.Context(), badKey, 10)
	require.ErrorIs(t, err, ds.ErrStreamNotFound)

	badLayout := it
	badLayout.Stream.Layout = ds.LayoutReference
	_, _, err = db.Next(t.Context(), badLayout, 10)
	require.ErrorIs(t, err, ds.ErrStreamNotFound)

	for _, max := range []int{0, -1} {
		msgs, _, err := db.Next(t.Context(), it, max)
		require.ErrorIs(t, err, ds.ErrInvalidIterator, "max %d", max)
		require.Empty(t, msgs)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err = db.Next(ctx, it, 10)
	require.ErrorIs(t, err, context.Canceled)
	_, err = db.Store(ctx, msg("c", "i/c", 2))
	require.ErrorIs(t, err, context.Canceled)

	// The good iterator still works.
	msgs, _, err := db.drain(it, 10)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	requireUsable(t, db)
}

// TestClosed: every method of a closed DB returns ErrClosed, Close included, and Close waits
// for nothing to leak.
func TestClosed(t *testing.T) {
	db := openTestDB(t, fastOptions())
	db.store(msg("c", "x/y", 0))
	s := mustStreams(t, db, "#")[0]
	it := mustIterator(t, db, s, "#")
	require.NoError(t, db.Close())

	ctx := context.Background()
	_, err := db.Store(ctx, msg("c", "x/y", 1))
	require.ErrorIs(t, err, ds.ErrClosed, "Store")
	_, err = db.Store(ctx, msg("c", "x/y", 1), msg("d", "x/y", 2))
	require.ErrorIs(t, err, ds.ErrClosed, "Store of a batch")
	_, err = db.Streams("#", time.Time{})
	require.ErrorIs(t, err, ds.ErrClosed, "Streams")
	_, err = db.Iterator(s, "#", time.Time{})
	require.ErrorIs(t, err, ds.ErrClosed, "Iterator")
	_, _, err = db.Next(ctx, it, 10)
	require.ErrorIs(t, err, ds.ErrClosed, "Next")
	_, err = db.Generations()
	require.ErrorIs(t, err, ds.ErrClosed, "Generations")
	require.ErrorIs(t, db.AddGeneration(ctx), ds.ErrClosed, "AddGeneration")
	require.ErrorIs(t, db.DropGeneration(ctx, 0, 1), ds.ErrClosed, "DropGeneration")
	_, err = db.Metrics()
	require.ErrorIs(t, err, ds.ErrClosed, "Metrics")
	_, err = db.DumpLayout(0, 1)
	require.ErrorIs(t, err, ds.ErrClosed, "DumpLayout")
	require.ErrorIs(t, db.Close(), ds.ErrClosed, "Close")

	// The data is intact.
	msgs := openTestDBAt(t, db.dir, nil).readFilter("#", time.Time{}, 10)
	require.Len(t, msgs, 1)
}

// TestCloseWhileStoring: Close waits for the calls in progress; every Store either succeeds
// (and its message is there after a reopen) or fails with ErrClosed.
func TestCloseWhileStoring(t *testing.T) {
	db := openTestDB(t, fastOptions())
	type result struct {
		ref ds.Ref
		err error
	}
	results := make(chan result, 1000)
	started := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if g == 0 && i == 10 {
					close(started)
				}
				refs, err := db.Store(context.Background(), msg(fmt.Sprint(g), fmt.Sprintf("cw/%d", g), i))
				r := result{err: err}
				if err == nil {
					r.ref = refs[0]
				}
				results <- r
				if err != nil {
					return
				}
			}
		}()
	}
	<-started
	require.NoError(t, db.Close())
	wg.Wait()
	close(results)
	acked := map[ds.Ref]bool{}
	for r := range results {
		if r.err != nil {
			require.ErrorIs(t, r.err, ds.ErrClosed)
			continue
		}
		acked[r.ref] = true
	}
	db = openTestDBAt(t, db.dir, db.opts)
	got := byRef(t, db.readFilter("cw/#", time.Time{}, 1000))
	for r := range acked {
		_, ok := got[r]
		require.True(t, ok, "acknowledged message %v lost", r)
	}
	require.Len(t, got, len(acked))
}

// TestReopenShardMismatch: a DB keeps its NShards; another value is refused with a message
// naming both, and 0 takes the stored value.
func TestReopenShardMismatch(t *testing.T) {
	db := openTestDB(t, fastOptions())
	ref := db.store(msg("c", "n/s", 0))[0]
	require.NoError(t, db.Close())

	for _, n := range []int{1, 3, 5, 16} {
		_, err := ds.Open(db.dir, fastOptions(func(o *ds.Options) { o.NShards = n }))
		require.ErrorIs(t, err, ds.ErrShardMismatch, "NShards %d", n)
		require.Contains(t, err.Error(), "4")
		require.Contains(t, err.Error(), fmt.Sprint(n))
	}
	db2 := openTestDBAt(t, db.dir, fastOptions(func(o *ds.Options) { o.NShards = 0 }))
	require.Equal(t, 4, db2.NShards())
	msgs := db2.readFilter("n/s", time.Time{}, 10)
	require.Equal(t, []ds.Ref{ref}, refsOf(msgs))
	db2.store(msg("c", "n/s", 1))
}

// TestOptionsValidate: Validate reports every problem at once; Open refuses such options and
// creates nothing.
func TestOptionsValidate(t *testing.T) {
	require.NoError(t, ds.DefaultOptions().Validate())
	forever := &ds.Options{Retention: ds.RetainForever}
	forever.EnsureDefaults()
	require.NoError(t, forever.Validate())

	bad := &ds.Options{
		NShards:            -1,
		Layout:             ds.LayoutLTS,
		Retention:          -2 * time.Hour,
		GenerationSpan:     -time.Minute,
		WildcardThresholds: []int{0},
		MaxBatchMessages:   -1,
		MaxBatchBytes:      -1,
		QueueLength:        -1,
		Durability:         7,
		MaxMessageBytes:    ds.MaxMessageBytesLimit + 1,
		StorageQuota:       -1,
		Expert:             ds.ExpertOptions{MemTableBytes: -1, CacheBytes: -1, MaintenanceInterval: -1},
	}
	err := bad.Validate()
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
	for _, want := range []string{"NShards", "Retention", "GenerationSpan", "threshold", "MaxBatchMessages",
		"MaxBatchBytes", "QueueLength", "Durability", "MaxMessageBytes", "StorageQuota", "MemTableBytes",
		"CacheBytes", "MaintenanceInterval"} {
		require.Contains(t, err.Error(), want)
	}
	for _, o := range []*ds.Options{
		{NShards: ds.MaxShards + 1},
		{Retention: time.Hour, GenerationSpan: 2 * time.Hour},
		{Layout: 9},
		{WildcardThresholds: []int{10, 1 << 20}},
	} {
		o.EnsureDefaults()
		require.ErrorIs(t, o.Validate(), ds.ErrInvalidOptions, "%+v", o)
	}

	dir := t.TempDir() + "/db"
	_, err = ds.Open(dir, bad)
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
	require.NoDirExists(t, dir)
	// Open validates a copy with the defaults filled in, and does not change the caller's.
	o := fastOptions()
	db := openTestDBAt(t, dir, o)
	require.Equal(t, fastOptions(), o)
	requireUsable(t, db)
}

// TestZeroOptionsValidate: "the zero value of every field means its documented default", so
// the zero Options (what Open(dir, nil) uses) are valid, and so is any field left zero.
//
// TestZeroOptionsValidate: every zero field means its default, so zero Options validate (a broker
// may validate its configuration before Open).
func TestZeroOptionsValidate(t *testing.T) {
	require.NoError(t, (&ds.Options{}).Validate())
	require.NoError(t, (&ds.Options{NShards: 4, Durability: ds.NoSync}).Validate())
}

// TestBadManifest: a DB directory whose STRATA file does not decode is refused as corruption,
// one of another format version as a mismatch; nothing is overwritten.
func TestBadManifest(t *testing.T) {
	db := openTestDB(t, fastOptions())
	db.store(msg("c", "mf", 0))
	require.NoError(t, db.Close())
	path := filepath.Join(db.dir, "STRATA")
	orig, err := os.ReadFile(path)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o644))
	_, err = ds.Open(db.dir, fastOptions())
	require.ErrorIs(t, err, ds.ErrCorruption)
	require.True(t, ds.IsCorruptionError(err))

	other := strings.Replace(string(orig), `"format": 1`, `"format": 2`, 1)
	require.NotEqual(t, string(orig), other, "manifest format: %s", orig)
	require.NoError(t, os.WriteFile(path, []byte(other), 0o644))
	_, err = ds.Open(db.dir, fastOptions())
	require.ErrorIs(t, err, ds.ErrShardMismatch)

	bad, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, other, string(bad), "a refused Open rewrote the manifest")
	require.NoError(t, os.WriteFile(path, orig, 0o644))
	require.Len(t, openTestDBAt(t, db.dir, fastOptions()).readFilter("mf", time.Time{}, 10), 1)
}
