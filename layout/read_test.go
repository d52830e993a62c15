package layout

import (
	"bytes"
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// readFixture is one LTS generation in an in-memory Pebble with everything it holds.
type readFixture struct {
	db   *pebble.DB
	gen  Generation
	msgs []message.Message // in timestamp order
}

// addAll adds msgs (timestamps set, increasing) in batches of batchSize, committing each.
func (f *readFixture) addAll(t testing.TB, msgs []message.Message, batchSize int) {
	t.Helper()
	for len(msgs) > 0 {
		n := min(batchSize, len(msgs))
		b := f.db.NewBatch()
		for i := range msgs[:n] {
			_, err := f.gen.Add(b, &msgs[i], topic.Split(msgs[i].Topic))
			require.NoError(t, err)
		}
		require.NoError(t, b.Commit(pebble.NoSync))
		f.gen.Commit()
		f.msgs = append(f.msgs, msgs[:n]...)
		msgs = msgs[n:]
	}
}

func newReadFixture(t testing.TB, th []int, prefix []byte) *readFixture {
	return newFixture(t, Params{Kind: stream.LayoutLTS, Thresholds: th}, prefix)
}

func newFixture(t testing.TB, p Params, prefix []byte) *readFixture {
	db := openMem(t)
	t.Cleanup(func() { db.Close() })
	g, err := New(p, prefix, 7, nil, db)
	require.NoError(t, err)
	return &readFixture{db: db, gen: g}
}

// randomReadTopic draws from a space where levels 2 and 3 fold under small thresholds and take
// repeated values, so pinned filters select a fraction of each stream.
func randomReadTopic(rng *rand.Rand) string {
	roots := []string{"s", "t", "u", "v", "$SYS"}
	levels := []string{roots[rng.IntN(len(roots))]}
	depth := 1 + rng.IntN(3)
	for d := 0; d < depth; d++ {
		switch rng.IntN(12) {
		case 0:
			levels = append(levels, "")
		default:
			levels = append(levels, fmt.Sprintf("%c%d", 'a'+d, rng.IntN(5+d*3)))
		}
	}
	return strings.Join(levels, "/")
}

// randomFilter derives a filter from a stored topic: levels kept (pinning them), replaced by
// '+', by another value, or cut with '#'.
func randomFilter(rng *rand.Rand, name string) string {
	levels := topic.Split(name)
	var out []string
	for i, lv := range levels {
		switch r := rng.IntN(10); {
		case r < 4:
			out = append(out, lv)
		case r < 7:
			out = append(out, "+")
		case r < 8:
			out = append(out, fmt.Sprintf("%c%d", 'a'+i-1, rng.IntN(6)))
		case r < 9:
			return strings.Join(append(out, "#"), "/")
		default:
			out = append(out, lv)
		}
	}
	if rng.IntN(6) == 0 {
		out = append(out, "#")
	}
	return strings.Join(out, "/")
}

func sameMessage(a, b *message.Message) bool {
	return a.Timestamp == b.Timestamp && a.Topic == b.Topic && a.ClientID == b.ClientID &&
		bytes.Equal(a.Payload, b.Payload) && a.QoS == b.QoS && a.Retain == b.Retain
}

// TestReadMatchesBruteForce: for random filters and random From/Until/Max paging, the pages of
// every stream that Streams returns, concatenated, are exactly the brute-force list of stored
// messages whose topic matches the filter within [From, Until). The reference layout, given the
// same messages, must agree.
func TestReadMatchesBruteForce(t *testing.T) {
	seeds := 4
	if testing.Short() {
		seeds = 2
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 10))
			f := newReadFixture(t, []int{3, 2}, []byte("s\x00\x01"))
			var msgs []message.Message
			ts := uint64(1000)
			for i := range 3000 {
				ts += 1 + uint64(rng.IntN(3))
				msgs = append(msgs, message.Message{
					Topic: randomReadTopic(rng), Timestamp: ts, ClientID: fmt.Sprintf("c%d", rng.IntN(50)),
					Payload: []byte(fmt.Sprintf("m%d", i)), QoS: byte(rng.IntN(3)), Retain: rng.IntN(2) == 0,
				})
			}
			ref := newFixture(t, Params{Kind: stream.LayoutReference}, nil)
			ref.addAll(t, slices.Clone(msgs), 500)
			f.addAll(t, msgs, 1+rng.IntN(200))
			if seed%2 == 1 {
				require.NoError(t, f.db.Flush())
			}
			lo, hi := f.msgs[0].Timestamp, f.msgs[len(f.msgs)-1].Timestamp+1
			for q := range 200 {
				var filter string
				if q%10 == 0 {
					filter = []string{"#", "+/#", "$SYS/#", "+/+/+", "s/+/b1", "+/a1/#"}[q/10%6]
				} else {
					filter = randomFilter(rng, f.msgs[rng.IntN(len(f.msgs))].Topic)
				}
				from := lo + uint64(rng.IntN(int(hi-lo)))
				until := from + uint64(rng.IntN(int(hi-from)+5))
				if rng.IntN(4) == 0 {
					from, until = 0, 1<<63
				}
				max := 1 + rng.IntN(40)
				checkFilter(t, f, filter, from, until, max)
				if q%5 == 0 {
					checkFilter(t, ref, filter, from, until, max)
				}
			}
		})
	}
}

func checkFilter(t *testing.T, f *readFixture, filter string, from, until uint64, max int) {
	t.Helper()
	fl := topic.Split(filter)
	var want []message.Message
	for _, m := range f.msgs {
		if topic.Match(filter, m.Topic) && m.Timestamp >= from && m.Timestamp < until {
			want = append(want, m)
		}
	}
	var got []message.Message
	for _, s := range f.gen.Streams(fl) {
		var inStream []message.Message
		next := from
		for pages := 0; ; pages++ {
			require.LessOrEqual(t, pages, len(f.msgs)+2, "filter %q stream %s: no progress at %d", filter, s.Pattern, next)
			// A non-empty out must not change what a read returns.
			out := make([]message.Message, pages%3)
			out, res, err := f.gen.Read(f.db, ReadRequest{Key: s.Key, Filter: fl, From: next, Until: until, Max: max}, out)
			require.NoError(t, err, "filter %q stream %s", filter, s.Pattern)
			page := out[pages%3:]
			require.False(t, len(page) > max || !res.Exhausted && len(page) != max,
				"filter %q stream %s: page of %d with max %d, exhausted %t", filter, s.Pattern, len(page), max, res.Exhausted)
			require.GreaterOrEqual(t, res.Next, next, "filter %q: next went back", filter)
			for _, m := range page {
				require.True(t, m.Timestamp >= next && m.Timestamp < res.Next,
					"filter %q: ts %d outside [%d, next %d)", filter, m.Timestamp, next, res.Next)
			}
			inStream = append(inStream, page...)
			next = res.Next
			if res.Exhausted {
				break
			}
		}
		require.True(t, slices.IsSortedFunc(inStream, byTimestamp), "filter %q stream %s: out of order", filter, s.Pattern)
		got = append(got, inStream...)
	}
	slices.SortFunc(got, byTimestamp)
	if len(got) != len(want) {
		require.Failf(t, "wrong message count", "filter %q [%d, %d) max %d: %d messages, brute force %d\n got %v\nwant %v",
			filter, from, until, max, len(got), len(want), topics(got), topics(want))
	}
	for i := range got {
		require.True(t, sameMessage(&got[i], &want[i]), "filter %q: message %d is %+v, want %+v", filter, i, got[i], want[i])
	}
}

func byTimestamp(a, b message.Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) }

func topics(ms []message.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = fmt.Sprintf("%d:%s", m.Timestamp, m.Topic)
	}
	return out
}

// TestReadRechecksTopicOnCollision forges an index entry as if xxhash("f") == xxhash("e"): the
// join must re-check the topic on the data key and drop the message.
func TestReadRechecksTopicOnCollision(t *testing.T) {
	f := newReadFixture(t, []int{1}, nil)
	f.addAll(t, []message.Message{
		{Topic: "a/b/c", Timestamp: 10},
		{Topic: "a/e/c", Timestamp: 11},
		{Topic: "a/f/c", Timestamp: 12},
		{Topic: "a/e/c", Timestamp: 13},
	}, 10)
	s := f.gen.Streams([]string{"a", "e", "c"})
	require.Len(t, s, 1, "streams %v", s)
	require.Equal(t, "a/+/c", s[0].Pattern, "streams %v", s)
	keys := newStreamKeys(nil, 7, s[0].Key)
	require.NoError(t, f.db.Set(keys.appendIndexKey(nil, 2, xxhash.Sum64String("e"), 12), nil, nil))
	out, res, err := f.gen.Read(f.db, ReadRequest{Key: s[0].Key, Filter: []string{"a", "e", "c"}, Until: 100, Max: 10}, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"11:a/e/c", "13:a/e/c"}, topics(out), "read %+v", res)
	require.True(t, res.Exhausted, "read %+v", res)
}

// countingReader counts the point keys that iterators opened through it surface, via Pebble's
// SkipPoint hook, which the iterator calls for every key it steps onto.
type countingReader struct {
	pebble.Reader
	keys atomic.Int64
}

func (r *countingReader) NewIter(o *pebble.IterOptions) (*pebble.Iterator, error) {
	var opts pebble.IterOptions
	if o != nil {
		opts = *o
	}
	opts.SkipPoint = func([]byte) bool { r.keys.Add(1); return false }
	return r.Reader.NewIter(&opts)
}

// TestReadCostFollowsMatches: one publisher's 100 messages among 100k, interleaved in one stream.
// A filter that pins the publisher's level must visit O(100) keys, not O(100k); the unpinned
// scan of the same stream, as a control, visits them all.
func TestReadCostFollowsMatches(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200k keys")
	}
	const publishers, perPublisher = 1000, 100
	for _, flush := range []bool{false, true} {
		t.Run(fmt.Sprintf("flushed=%t", flush), func(t *testing.T) {
			f := newReadFixture(t, []int{10, 1}, nil)
			// "dev/p0/temp" takes the literal edge under "dev"; every other publisher folds
			// into the one stream dev/+/temp.
			msgs := make([]message.Message, 0, publishers*perPublisher)
			for i := range publishers * perPublisher {
				msgs = append(msgs, message.Message{
					Topic: fmt.Sprintf("dev/p%d/temp", i%publishers), Timestamp: uint64(1 + i),
					ClientID: fmt.Sprintf("p%d", i%publishers), Payload: []byte("21.5"),
				})
			}
			f.addAll(t, msgs, 10000)
			if flush {
				require.NoError(t, f.db.Flush())
			}
			streams := f.gen.Streams([]string{"dev", "p500", "temp"})
			var key uint64
			for _, s := range streams {
				if s.Pattern == "dev/+/temp" {
					key = s.Key
				}
			}
			r := &countingReader{Reader: f.db}

			read := func(filter string, max int) (n int, visited int64) {
				r.keys.Store(0)
				next := uint64(0)
				for {
					out, res, err := f.gen.Read(r, ReadRequest{Key: key, Filter: topic.Split(filter), From: next, Until: 1 << 62, Max: max}, nil)
					require.NoError(t, err)
					for _, m := range out {
						if filter == "dev/p500/temp" {
							require.Equal(t, "dev/p500/temp", m.Topic, "read")
						}
					}
					n += len(out)
					next = res.Next
					if res.Exhausted {
						return n, r.keys.Load()
					}
				}
			}
			n, visited := read("dev/p500/temp", 1000)
			t.Logf("pinned: %d messages, %d keys visited", n, visited)
			require.Equal(t, perPublisher, n, "pinned read: messages")
			require.LessOrEqual(t, visited, int64(4*perPublisher+10), "pinned read: keys visited; want O(%d)", perPublisher)
			n, visited = read("dev/p500/temp", 7)
			t.Logf("pinned, pages of 7: %d messages, %d keys visited", n, visited)
			require.Equal(t, perPublisher, n, "paged pinned read: messages")
			require.LessOrEqual(t, visited, int64(4*perPublisher+4*(perPublisher/7+1)+10), "paged pinned read: keys visited")
			n, visited = read("dev/+/temp", 1<<20)
			t.Logf("unpinned control: %d messages, %d keys visited", n, visited)
			require.Equal(t, (publishers-1)*perPublisher, n, "control: messages")
			require.GreaterOrEqual(t, visited, int64(n), "control: keys visited")
		})
	}
}
