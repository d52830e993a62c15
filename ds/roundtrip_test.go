package ds_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// roundTripMessages covers every field of a message: empty and binary payloads, every QoS,
// retain, every MQTT 5 property, repeated user properties, expiry present (including 0) and
// absent (a stale MessageExpiry without HasMessageExpiry must not come back), odd but valid
// topics.
func roundTripMessages() []ds.Message {
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 64<<10) // 256 KiB with NULs
	return []ds.Message{
		{ClientID: "c1", Topic: "a/b", Payload: []byte("hello")},
		{ClientID: "c1", Topic: "a/b", Payload: nil},
		{ClientID: "c1", Topic: "a/b", Payload: []byte{}},
		{ClientID: "c2", Topic: "a/b/c", QoS: 1, Payload: []byte{0}},
		{ClientID: "c2", Topic: "a/b/c", QoS: 2, Retain: true, Payload: big},
		{ClientID: "", Topic: "no/client/id", QoS: 0, Retain: true},
		{ClientID: "ü-clïent/with/slashes", Topic: "ünï/cødé/🙂", Payload: []byte("x")},
		{ClientID: "c3", Topic: "/", Payload: []byte("root-empty")},
		{ClientID: "c3", Topic: "//", Payload: []byte("two empty levels")},
		{ClientID: "c3", Topic: "/lead/trail/", Payload: []byte("lead and trail")},
		{ClientID: "c3", Topic: "with space/and\ttab", Payload: []byte("ws")},
		{ClientID: "c4", Topic: "$SYS/broker/uptime", Payload: []byte("42")},
		{ClientID: "c4", Topic: "$x", QoS: 1},
		{ClientID: "c4", Topic: "$", QoS: 2, Payload: []byte("dollar")},
		{ClientID: "c5", Topic: "props/all", QoS: 1, Retain: true, Payload: []byte(`{"t":21}`),
			Properties: ds.Properties{
				PayloadFormat:    1,
				MessageExpiry:    3600,
				HasMessageExpiry: true,
				ContentType:      "application/json",
				ResponseTopic:    "reply/to/me",
				CorrelationData:  []byte{0, 1, 2, 3, 0xfe},
				User: []ds.UserProperty{
					{Key: "k", Value: "v1"},
					{Key: "k", Value: "v1"}, // an exact duplicate is kept
					{Key: "k", Value: "v2"},
					{Key: "", Value: ""},
					{Key: "ключ", Value: "значение"},
				},
			}},
		{ClientID: "c5", Topic: "props/expiry-zero", Properties: ds.Properties{HasMessageExpiry: true}},
		{ClientID: "c5", Topic: "props/expiry-absent", Properties: ds.Properties{MessageExpiry: 99}},
		{ClientID: "c5", Topic: "props/empty-corr", Properties: ds.Properties{CorrelationData: []byte{}}},
		{ClientID: "c5", Topic: "props/user-only", Properties: ds.Properties{
			User: []ds.UserProperty{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}, {Key: "a", Value: "3"}}}},
		{ClientID: "c5", Topic: "props/format", Properties: ds.Properties{PayloadFormat: 1}},
		{ClientID: "c6", Topic: "max/" + strings.Repeat("z", 65535-len("max/")), Payload: []byte("longest topic")},
	}
}

// TestRoundTrip stores messages with every field set in every way, once as one Store call
// spread over shards and once as one call per message, and reads each back, field by field,
// where its Ref says it is.
func TestRoundTrip(t *testing.T) {
	for _, layout := range []ds.LayoutKind{ds.LayoutLTS, ds.LayoutReference} {
		for _, batched := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/batched=%v", layout, batched), func(t *testing.T) {
				db := openTestDB(t, fastOptions(func(o *ds.Options) { o.Layout = layout }))
				in := roundTripMessages()
				var refs []ds.Ref
				if batched {
					refs = db.store(in...)
				} else {
					for _, m := range in {
						refs = append(refs, db.store(m)...)
					}
				}
				want := map[ds.Ref]ds.Message{}
				for i, m := range in {
					want[refs[i]] = stored(m, refs[i])
				}
				require.Len(t, want, len(in), "two messages got the same Ref")

				check := func(db *testDB) {
					t.Helper()
					got := byRef(t, db.readAll())
					require.Len(t, got, len(want))
					for r, w := range want {
						g, ok := got[r]
						require.True(t, ok, "message %q at %v not read back", w.Topic, r)
						require.Equal(t, w, normalized(g), "message at %v", r)
					}
					// Each message also comes back alone, through a filter equal to its topic.
					for i, m := range in {
						msgs := db.readFilter(m.Topic, time.Time{}, 10)
						var found int
						for _, g := range msgs {
							require.Equal(t, m.Topic, g.Topic)
							if g.Timestamp == refs[i].Timestamp && ds.ShardID(g.Shard) == refs[i].Shard {
								found++
							}
						}
						require.Equal(t, 1, found, "message %d (%q) by its own topic", i, m.Topic)
					}
				}
				check(db)
				check(db.reopen(nil)) // and from disk, with the learned structure reloaded
			})
		}
	}
}

// TestStoreDoesNotRetainMessages: the DB copies what it stores, so a caller may reuse its
// buffers once Store returns, and a reader may modify what it got.
func TestStoreDoesNotRetainMessages(t *testing.T) {
	db := openTestDB(t, fastOptions())
	payload := []byte("original")
	corr := []byte("corr")
	user := []ds.UserProperty{{Key: "k", Value: "v"}}
	m := ds.Message{ClientID: "c", Topic: "t", Payload: payload,
		Properties: ds.Properties{CorrelationData: corr, User: user}}
	db.store(m)
	copy(payload, "XXXXXXXX")
	copy(corr, "YYYY")
	user[0].Value = "changed"

	got := db.readFilter("t", time.Time{}, 10)
	require.Len(t, got, 1)
	require.Equal(t, "original", string(got[0].Payload))
	require.Equal(t, "corr", string(got[0].Properties.CorrelationData))
	require.Equal(t, "v", got[0].Properties.User[0].Value)

	got[0].Payload[0] = 'Z'
	again := db.readFilter("t", time.Time{}, 10)
	require.Equal(t, "original", string(again[0].Payload))
}

// TestTimestampOrderPerPublisher: a publisher's messages get strictly increasing timestamps in
// store order, whether stored one per call or in a batch, and come back from their stream in
// that order, equal to the Refs.
func TestTimestampOrderPerPublisher(t *testing.T) {
	db := openTestDB(t, fastOptions())
	const topic = "order/one/stream"
	var in []ds.Message
	var refs []ds.Ref
	for i := range 50 {
		m := msg("publisher", topic, i)
		in = append(in, m)
		refs = append(refs, db.store(m)...)
	}
	var batch []ds.Message
	for i := 50; i < 150; i++ {
		batch = append(batch, msg("publisher", topic, i))
	}
	in = append(in, batch...)
	refs = append(refs, db.store(batch...)...)

	for i := 1; i < len(refs); i++ {
		require.Equal(t, refs[0].Shard, refs[i].Shard)
		require.Greater(t, refs[i].Timestamp, refs[i-1].Timestamp, "ref %d", i)
	}
	streams, err := db.Streams(topic, time.Time{})
	require.NoError(t, err)
	require.Len(t, streams, 1)
	got := db.readFilter(topic, time.Time{}, 7)
	require.Len(t, got, len(in))
	for i := range in {
		require.Equal(t, stored(in[i], refs[i]), normalized(got[i]), "message %d", i)
	}
}

// TestConcurrentStoreTimestamps: many goroutines store at once, alone and in batches over
// several shards. Every shard's timestamps are unique, each publisher's increase in its store
// order, and everything reads back exactly once, each stream in timestamp order.
func TestConcurrentStoreTimestamps(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) { o.QueueLength = 8 }))
	const goroutines, perG = 16, 40
	type result struct {
		client string
		msgs   []ds.Message
		refs   []ds.Ref
	}
	results := make([]result, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[g]
			r.client = fmt.Sprintf("pub-%d", g)
			for i := 0; i < perG; {
				if i%5 == 0 && i+3 <= perG {
					// A batch with this publisher's next three messages and one of another
					// publisher that lands on some other shard.
					ms := []ds.Message{
						msg(r.client, fmt.Sprintf("conc/%d/%d", g, i%7), i),
						msg(r.client, fmt.Sprintf("conc/%d/%d", g, (i+1)%7), i+1),
						msg(fmt.Sprintf("other-%d-%d", g, i), fmt.Sprintf("conc/other/%d", g), i),
						msg(r.client, fmt.Sprintf("conc/%d/%d", g, (i+2)%7), i+2),
					}
					refs, err := db.Store(context.Background(), ms...)
					if err != nil {
						t.Error(err)
						return
					}
					r.msgs, r.refs = append(r.msgs, ms...), append(r.refs, refs...)
					i += 3
					continue
				}
				m := msg(r.client, fmt.Sprintf("conc/%d/%d", g, i%7), i)
				refs, err := db.Store(context.Background(), m)
				if err != nil {
					t.Error(err)
					return
				}
				r.msgs, r.refs = append(r.msgs, m), append(r.refs, refs[0])
				i++
			}
		}()
	}
	wg.Wait()
	require.False(t, t.Failed())

	want := map[ds.Ref]ds.Message{}
	for _, r := range results {
		var last uint64
		for i, m := range r.msgs {
			ref := r.refs[i]
			require.Equal(t, ds.ShardOf(m.ClientID, db.NShards()), ref.Shard)
			require.NotContains(t, want, ref, "Ref %v given to two messages", ref)
			want[ref] = stored(m, ref)
			if m.ClientID == r.client {
				require.Greater(t, ref.Timestamp, last, "%s message %d", r.client, i)
				last = ref.Timestamp
			}
		}
	}
	got := byRef(t, db.readAll())
	require.Len(t, got, len(want))
	for ref, w := range want {
		require.Equal(t, w, normalized(got[ref]), "message at %v", ref)
	}
	// Per shard, timestamps are unique (byRef) and every one read is one that Store returned.
	perShard := map[ds.ShardID][]uint64{}
	for ref := range got {
		perShard[ref.Shard] = append(perShard[ref.Shard], ref.Timestamp)
	}
	for sh, tss := range perShard {
		slices.Sort(tss)
		require.Equal(t, len(tss), len(slices.Compact(slices.Clone(tss))), "shard %d", sh)
	}
}

// TestShardOfIsStable: the publisher → shard mapping is part of the on-disk format
// (xxhash64 of the client ID bytes modulo NShards) and must never change. The values for ""
// follow from XXH64("") = 0xef46db3751d8e999.
func TestShardOfIsStable(t *testing.T) {
	for _, c := range []struct {
		clientID       string
		n4, n16, n1024 ds.ShardID
	}{
		{"", 1, 9, 409},
		{"c", 1, 13, 1005},
		{"client-1", 3, 3, 755},
		{"sensor-17", 0, 4, 244},
		{"ünï", 1, 9, 969},
	} {
		require.Equal(t, c.n4, ds.ShardOf(c.clientID, 4), "%q", c.clientID)
		require.Equal(t, c.n16, ds.ShardOf(c.clientID, 16), "%q", c.clientID)
		require.Equal(t, c.n1024, ds.ShardOf(c.clientID, 1024), "%q", c.clientID)
		require.Zero(t, ds.ShardOf(c.clientID, 1))
	}
}

// TestLargeStoreIsOneCommit: a Store larger than MaxBatchMessages and MaxBatchBytes is still
// committed as one batch per shard (all or nothing), and keeps its order.
func TestLargeStoreIsOneCommit(t *testing.T) {
	db := openTestDB(t, fastOptions(func(o *ds.Options) {
		o.NShards = 1
		o.MaxBatchMessages = 10
		o.MaxBatchBytes = 1000
	}))
	var batch []ds.Message
	for i := range 50 {
		batch = append(batch, ds.Message{ClientID: "c", Topic: "big/batch", Payload: make([]byte, 100+i)})
	}
	refs := db.store(batch...)
	m, err := db.Metrics()
	require.NoError(t, err)
	require.Equal(t, uint64(1), m.Shards[0].Batches)
	require.Equal(t, uint64(50), m.Shards[0].Messages)
	got := db.readFilter("big/batch", time.Time{}, 1000)
	require.Equal(t, refs, refsOf(got))
	for i := range got {
		require.Len(t, got[i].Payload, 100+i)
	}
}
