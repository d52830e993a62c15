package ds_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestIteratorSurvivesReopen: a session reads part of its streams, keeps its iterators as
// bytes, the DB closes and reopens, and the session resumes from the bytes: no gap, no
// duplicate; what is stored after the reopen follows. Filters cover a full scan ('#'), a
// wildcard pattern and a literal that pins a varying level (the index join).
func TestIteratorSurvivesReopen(t *testing.T) {
	for _, layout := range []ds.LayoutKind{ds.LayoutLTS, ds.LayoutReference} {
		t.Run(layout.String(), func(t *testing.T) {
			opts := fastOptions(func(o *ds.Options) {
				o.Layout = layout
				o.WildcardThresholds = []int{2}
			})
			db := openTestDB(t, opts)
			var in []ds.Message
			storeRound := func(round, n int) {
				var batch []ds.Message
				for i := range n {
					batch = append(batch, msg(fmt.Sprintf("dev-%d", i%5),
						fmt.Sprintf("site/dev-%d/temp", i%6), round*1000+i))
				}
				refs := db.store(batch...)
				for i := range batch {
					in = append(in, stored(batch[i], refs[i]))
				}
			}
			storeRound(0, 120)

			filters := []string{"#", "site/+/temp", "site/dev-3/temp", "site/dev-4/#"}
			type session struct {
				filter string
				saved  [][]byte // one iterator per stream, as bytes
				got    []ds.Message
			}
			var sessions []*session
			for _, f := range filters {
				s := &session{filter: f}
				streams, err := db.Streams(f, time.Time{})
				require.NoError(t, err)
				require.NotEmpty(t, streams, f)
				for i, st := range streams {
					it, err := db.Iterator(st, f, time.Time{})
					require.NoError(t, err)
					if i%2 == 0 { // read part of every other stream before the restart
						msgs, next, err := db.Next(t.Context(), it, 4)
						require.NoError(t, err)
						s.got = append(s.got, msgs...)
						it = next
					}
					b, err := it.MarshalBinary()
					require.NoError(t, err)
					s.saved = append(s.saved, b)
				}
				sessions = append(sessions, s)
			}

			// resume reads every saved iterator to the end and saves it again.
			resume := func(db *testDB) {
				for _, s := range sessions {
					for i, b := range s.saved {
						it, err := ds.UnmarshalIterator(b)
						require.NoError(t, err)
						require.Equal(t, s.filter, it.Filter)
						msgs, next, err := db.drain(it, 3)
						require.NoError(t, err)
						s.got = append(s.got, msgs...)
						b2, err := next.MarshalBinary()
						require.NoError(t, err)
						s.saved[i] = b2
					}
				}
			}
			check := func() {
				for _, s := range sessions {
					want := map[ds.Ref]ds.Message{}
					for _, m := range in {
						if bruteMatch(s.filter, m.Topic) {
							want[ds.Ref{Shard: ds.ShardID(m.Shard), Timestamp: m.Timestamp}] = m
						}
					}
					got := byRef(t, s.got) // fails on a duplicate
					require.Len(t, got, len(want), "filter %q", s.filter)
					for r, w := range want {
						require.Equal(t, w, normalized(got[r]), "filter %q at %v", s.filter, r)
					}
				}
			}

			db = db.reopen(&ds.Options{Durability: ds.NoSync}) // NShards and layout from disk
			resume(db)
			check()

			// New messages after the restart continue the same streams (same generation).
			storeRound(1, 60)
			resume(db)
			check()

			// And once more across a restart with nothing new: nothing is returned twice.
			db = db.reopen(nil)
			resume(db)
			check()
		})
	}
}

// TestIteratorValueSemantics: Next never changes the iterator it is given, so a caller may
// keep an old one to read a batch again; and an iterator from Iterator with since starts at
// since.
func TestIteratorValueSemantics(t *testing.T) {
	db := openTestDB(t, fastOptions())
	var refs []ds.Ref
	for i := range 10 {
		refs = append(refs, db.store(msg("c", "v/s", i))...)
	}
	streams, err := db.Streams("v/s", time.Time{})
	require.NoError(t, err)
	require.Len(t, streams, 1)
	it, err := db.Iterator(streams[0], "v/s", time.Time{})
	require.NoError(t, err)
	before := it

	first, next, err := db.Next(t.Context(), it, 3)
	require.NoError(t, err)
	require.Len(t, first, 3)
	require.Equal(t, before, it)
	again, _, err := db.Next(t.Context(), it, 3)
	require.NoError(t, err)
	require.Equal(t, first, again)
	rest, _, err := db.Next(t.Context(), next, 100)
	require.NoError(t, err)
	require.Len(t, rest, 7)
	require.Equal(t, refs[3].Timestamp, rest[0].Timestamp)

	// since: exactly the messages at or after it.
	it, err = db.Iterator(streams[0], "v/s", ds.Time(refs[6].Timestamp))
	require.NoError(t, err)
	msgs, _, err := db.drain(it, 100)
	require.NoError(t, err)
	require.Len(t, msgs, 4)
	require.Equal(t, refs[6].Timestamp, msgs[0].Timestamp)
	it, err = db.Iterator(streams[0], "v/s", ds.Time(refs[9].Timestamp+1))
	require.NoError(t, err)
	msgs, _, err = db.Next(t.Context(), it, 100)
	require.NoError(t, err)
	require.Empty(t, msgs)
}

// TestIteratorSeesNewMessages: an iterator at the end of a stream of the current generation
// gets an empty batch (no more yet), then the messages stored later, in order.
func TestIteratorSeesNewMessages(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{1} }))
	// With threshold 1, "live/a/x" keeps a literal stream and every other "live/*/x" goes to
	// the stream "live/+/x".
	db.store(msg("c", "live/a/x", 0), msg("c", "live/b/x", 0))
	streams, err := db.Streams("live/+/x", time.Time{})
	require.NoError(t, err)
	require.Len(t, streams, 2)
	plus := streams[1]
	require.Equal(t, "live/+/x", plus.Pattern)
	for _, filter := range []string{"live/+/x", "live/c/x"} {
		it, err := db.Iterator(plus, filter, time.Time{})
		require.NoError(t, err)
		_, it, err = db.drain(it, 10)
		require.NoError(t, err)
		var want []uint64
		for i := range 5 {
			for _, tp := range []string{"live/b/x", "live/c/x", "live/d/x"} {
				r := db.store(msg("c", tp, i))
				if bruteMatch(filter, tp) {
					want = append(want, r[0].Timestamp)
				}
			}
			msgs, next, err := db.drain(it, 2)
			require.NoError(t, err)
			var got []uint64
			for _, m := range msgs {
				got = append(got, m.Timestamp)
			}
			require.Equal(t, want, got, "filter %q round %d", filter, i)
			want, it = want[:0], next
		}
	}
}
