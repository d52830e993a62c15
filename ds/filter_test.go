package ds_test

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// bruteMatch is the MQTT topic matching rule (MQTT 5 §4.7), written plainly and independently
// of internal/topic, as the model the DB's reads are checked against:
//
//   - levels are separated by '/'; empty levels are levels;
//   - '+' matches exactly one level, any value (the empty one too);
//   - '#' (last level only) matches the parent level and any number of levels below;
//   - a filter whose first level is a wildcard never matches a topic starting with '$'.
func bruteMatch(filter, topic string) bool {
	f, n := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	var match func(f, n []string) bool
	match = func(f, n []string) bool {
		switch {
		case len(f) == 0:
			return len(n) == 0
		case f[0] == "#":
			return true
		case len(n) == 0:
			return false
		case f[0] == "+" || f[0] == n[0]:
			return match(f[1:], n[1:])
		default:
			return false
		}
	}
	return match(f, n)
}

func TestBruteMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"#", "a", true}, {"#", "/", true}, {"#", "$SYS/x", false}, {"+/#", "$SYS/x", false},
		{"$SYS/#", "$SYS", true}, {"$SYS/#", "$SYS/a/b", true}, {"+", "$x", false},
		{"a/#", "a", true}, {"a/+", "a", false}, {"a/+", "a/", true}, {"+/+", "/", true},
		{"+", "/", false}, {"/+", "/", true}, {"a/b", "a/b", true}, {"a/b", "a/b/c", false},
		{"a/+/c", "a/x/c", true}, {"a/+/c", "a/x/d", false}, {"+/+/#", "a", false},
		{"+/+/#", "a/b", true}, {"$x/+", "$x/y", true}, {"a//#", "a/", true}, {"a//#", "a", false}, {"a//#", "a//", true},
	} {
		require.Equal(t, c.want, bruteMatch(c.filter, c.topic), "%q ~ %q", c.filter, c.topic)
	}
}

// topicGen draws random topics: levels from small alphabets, some very common values and many
// rare ones, so the learned structure both keeps literal levels and folds levels into '+'.
type topicGen struct {
	r          *rand.Rand
	first, sub []string
}

func newTopicGen(seed uint64) *topicGen {
	g := &topicGen{r: rand.New(rand.NewPCG(seed, 0x5eed))}
	g.first = []string{"a", "b", "", "sensor", "$SYS", "$x", "$"}
	for i := range 6 {
		g.first = append(g.first, fmt.Sprintf("$d%d", i))
	}
	for i := range 140 {
		g.first = append(g.first, fmt.Sprintf("f%d", i))
	}
	g.sub = []string{"", "a", "b", "c", "temp", "ü"}
	for i := range 30 {
		g.sub = append(g.sub, fmt.Sprint(i))
	}
	return g
}

// skewed picks from vals with a bias towards the front.
func (g *topicGen) skewed(vals []string) string {
	return vals[g.r.IntN(g.r.IntN(len(vals))+1)]
}

func (g *topicGen) topic() string {
	for {
		depth := 1 + g.r.IntN(g.r.IntN(7)+1)
		levels := []string{g.skewed(g.first)}
		for len(levels) < depth {
			levels = append(levels, g.skewed(g.sub))
		}
		if t := strings.Join(levels, "/"); t != "" {
			return t
		}
	}
}

// filter derives a filter from a stored topic (so that most filters match something) or makes
// one up, with '+', '#', '$' literals and empty levels.
func (g *topicGen) filter(stored []string) string {
	for {
		var levels []string
		if g.r.IntN(5) == 0 {
			for range 1 + g.r.IntN(5) {
				levels = append(levels, []string{"+", g.skewed(g.sub)}[g.r.IntN(2)])
			}
			if g.r.IntN(2) == 0 {
				levels[0] = g.skewed(g.first)
			}
		} else {
			levels = strings.Split(stored[g.r.IntN(len(stored))], "/")
			for i := range levels {
				switch g.r.IntN(10) {
				case 0, 1, 2:
					levels[i] = "+"
				case 3:
					if i == 0 {
						levels[i] = g.skewed(g.first)
					} else {
						levels[i] = g.skewed(g.sub)
					}
				}
			}
		}
		switch g.r.IntN(10) {
		case 0, 1, 2:
			levels = append(levels[:g.r.IntN(len(levels))], "#")
		case 3:
			levels = append(levels, "#")
		case 4:
			levels = append(levels, g.skewed(g.sub))
		case 5:
			if len(levels) > 1 {
				levels = levels[:len(levels)-1]
			}
		}
		if f := strings.Join(levels, "/"); f != "" {
			return f
		}
	}
}

// fixedFilters are always checked, whatever the random ones are.
var fixedFilters = []string{
	"#", "+", "+/#", "+/+", "+/+/+", "/#", "/+", "$SYS/#", "$SYS/+", "$x", "$x/#", "$/#", "$d3/#",
	"+/temp", "a/#", "a/+/#", "sensor/+/temp", "f1/#", "f139/+/+", "a//#", "a/", "+/",
}

// TestFilterModel stores thousands of random messages and reads many random filters, each over
// all its streams, against the brute-force model: exactly the messages whose topic matches,
// each once, each stream in timestamp order, each message in a stream whose pattern fits its
// topic. It runs over the layouts and learned-structure settings, across a generation rotation
// and a reopen, with random start times and batch sizes.
func TestFilterModel(t *testing.T) {
	type variant struct {
		name    string
		opts    func(*ds.Options)
		msgs    int
		filters int
		foldSys bool // the '$' topics' first level folds too
	}
	variants := []variant{
		// One shard, so that its generations see more than the default 100 distinct first levels.
		{"lts-default-1-shard", func(o *ds.Options) { o.NShards = 1 }, 1400, 100, false},
		{"lts-small-thresholds", func(o *ds.Options) { o.WildcardThresholds = []int{3, 2} }, 1600, 120, true},
		{"lts-threshold-1-per-shard-pebble", func(o *ds.Options) {
			o.WildcardThresholds = []int{1}
			o.Expert.PebblePerShard = true
		}, 1000, 80, true},
		{"reference", func(o *ds.Options) { o.Layout = ds.LayoutReference }, 1000, 60, false},
	}
	for vi, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			db := openTestDB(t, fastOptions(v.opts))
			gen := newTopicGen(uint64(vi + 1))
			type storedMsg struct {
				m   ds.Message
				ref ds.Ref
			}
			var all []storedMsg
			var topics []string
			storeSome := func(n int) {
				for n > 0 {
					batch := make([]ds.Message, min(n, 1+gen.r.IntN(120)))
					for i := range batch {
						tp := gen.topic()
						topics = append(topics, tp)
						batch[i] = ds.Message{
							ClientID: fmt.Sprintf("client-%d", gen.r.IntN(40)),
							Topic:    tp, QoS: byte(gen.r.IntN(3)),
							Payload: fmt.Appendf(nil, "%d:%s", len(all)+i, tp),
						}
					}
					refs := db.store(batch...)
					for i := range batch {
						all = append(all, storedMsg{batch[i], refs[i]})
					}
					n -= len(batch)
				}
			}
			storeSome(v.msgs / 2)
			require.NoError(t, db.AddGeneration(t.Context()))
			storeSome(v.msgs - v.msgs/2)
			// The learned structure must have folded levels into '+', at the first level too,
			// or the test would not test wildcard streams.
			dump, err := db.DumpLayout(0, 1)
			require.NoError(t, err)
			if !strings.Contains(dump, "reference") {
				root, sysRoot, _ := strings.Cut(dump, "$root\n")
				require.Contains(t, root, "\n  + #", "no '+' at the first level:\n%s", dump)
				require.Contains(t, root, "\n    + #", "no '+' at the second level:\n%s", dump)
				if v.foldSys {
					require.Contains(t, "\n"+sysRoot, "\n  + #", "no '+' under the '$' root:\n%s", dump)
				}
			}

			// check reads filter since since in batches of max messages; max 0 picks small
			// batches (many Next calls, resumption) for small results and large ones otherwise.
			check := func(db *testDB, filter string, since time.Time, max int) {
				t.Helper()
				want := map[ds.Ref]ds.Message{}
				for _, s := range all {
					if bruteMatch(filter, s.m.Topic) && s.ref.Timestamp >= ds.Micros(since) {
						want[s.ref] = stored(s.m, s.ref)
					}
				}
				if max == 0 {
					max = 1000
					if len(want) < 100 {
						max = 1 + gen.r.IntN(5)
					}
				}
				streams, err := db.Streams(filter, since)
				require.NoError(t, err)
				var got []ds.Message
				for _, s := range streams {
					it, err := db.Iterator(s, filter, since)
					require.NoError(t, err)
					msgs, _, err := db.drain(it, max)
					if err != nil {
						require.ErrorIs(t, err, ds.ErrEndOfStream, "stream %s", s)
					}
					for _, m := range msgs {
						if ds.ShardID(m.Shard) != s.Shard || !patternFits(s.Pattern, m.Topic) {
							require.Failf(t, "message outside its stream", "stream %s gave %q from shard %d", s, m.Topic, m.Shard)
						}
					}
					got = append(got, msgs...)
				}
				gotBy := byRef(t, got)
				for r, w := range want {
					g, ok := gotBy[r]
					if !ok {
						require.Failf(t, "message missing", "filter %q since %d: %q at %v missing (%d of %d read)",
							filter, ds.Micros(since), w.Topic, r, len(got), len(want))
					}
					if !reflect.DeepEqual(w, normalized(g)) {
						require.Equal(t, w, normalized(g), "filter %q", filter)
					}
				}
				for r, g := range gotBy {
					if _, ok := want[r]; !ok {
						require.Failf(t, "message read but does not match", "filter %q since %d: %q at %v read but does not match",
							filter, ds.Micros(since), g.Topic, r)
					}
				}
			}

			filters := append([]string(nil), fixedFilters...)
			for range v.filters {
				filters = append(filters, gen.filter(topics))
			}
			filters = append(filters, topics[:20]...) // exact topics
			run := func(db *testDB) {
				for i, f := range filters {
					var since time.Time
					if i%3 == 2 {
						since = ds.Time(all[gen.r.IntN(len(all))].ref.Timestamp)
					}
					check(db, f, since, 0)
				}
			}
			run(db)
			if t.Failed() {
				return
			}
			// The learned structure and the data come back from disk the same.
			db = db.reopen(nil)
			filters = filters[:len(fixedFilters)+10] // sstable reads are slow under -race
			run(db)
		})
	}
}

// patternFits reports whether a topic belongs in a stream of the given pattern: "#" (the
// reference layout's one stream) holds everything; otherwise the topic has as many levels as
// the pattern and equals it on every level that is not '+'.
func patternFits(pattern, topic string) bool {
	if pattern == "#" {
		return true
	}
	p, n := strings.Split(pattern, "/"), strings.Split(topic, "/")
	if len(p) != len(n) {
		return false
	}
	for i := range p {
		if p[i] != "+" && p[i] != n[i] {
			return false
		}
	}
	return true
}
