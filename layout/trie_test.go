package layout

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// trieRecord is one record emitted by the trie.
type trieRecord struct {
	seq uint32
	rec []byte
}

// recordLog collects emitted records.
type recordLog struct{ recs []trieRecord }

func (l *recordLog) emit(seq uint32, rec []byte) {
	l.recs = append(l.recs, trieRecord{seq, slices.Clone(rec)})
}

func dumpTrie(t *trie) string {
	var b strings.Builder
	t.dump(&b)
	return b.String()
}

// learnTopic learns one topic and returns its stream node ID and varying positions.
func learnTopic(tr *trie, name string, log *recordLog) (uint32, []int) {
	var emit func(uint32, []byte)
	if log != nil {
		emit = log.emit
	}
	n, varying := tr.learn(topic.Split(name), nil, emit)
	return n.id, varying
}

func patternIDs(nodes []*node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = fmt.Sprintf("%d:%s", n.id, strings.Join(n.pattern, "/"))
	}
	return out
}

func TestTrieFoldsAfterThreshold(t *testing.T) {
	tr := newTrie([]int{3, 2})
	type step struct {
		topic   string
		pattern string
		varying []int
	}
	for _, s := range []step{
		{"a/x", "a/x", nil},
		{"b/x", "b/x", nil},
		{"c/x", "c/x", nil},
		// Root has 3 literal children: the 4th distinct value folds into '+'.
		{"d/x", "+/x", []int{0}},
		{"e/x", "+/x", []int{0}},
		// Literal children learned before the fold keep their edge.
		{"a/x", "a/x", nil},
		{"c/x", "c/x", nil},
		// Below the first level the threshold is 2.
		{"a/y", "a/y", nil},
		{"a/z", "a/+", []int{1}},
		{"a/w", "a/+", []int{1}},
		{"a/x", "a/x", nil},
		// The last threshold repeats for deeper levels.
		{"a/x/1", "a/x/1", nil},
		{"a/x/2", "a/x/2", nil},
		{"a/x/3", "a/x/+", []int{2}},
		{"a/q/1/2/3", "a/+/1/2/3", []int{1}},
		{"f/q/1", "+/q/1", []int{0}},
	} {
		id, varying := learnTopic(tr, s.topic, nil)
		tr.commit()
		n := tr.stream(uint64(id))
		require.NotNil(t, n, "%s: stream %d not found", s.topic, id)
		require.Equal(t, s.pattern, strings.Join(n.pattern, "/"), "%s: pattern", s.topic)
		require.True(t, slices.Equal(varying, s.varying), "%s: varying %v, want %v", s.topic, varying, s.varying)
	}
}

func TestTrieThresholdOfOne(t *testing.T) {
	tr := newTrie([]int{1})
	for _, s := range [][2]string{{"a/b", "a/b"}, {"x/y", "+/y"}, {"z/w", "+/+"}, {"a/c", "a/+"}, {"q/y", "+/y"}} {
		id, _ := learnTopic(tr, s[0], nil)
		tr.commit()
		require.Equal(t, s[1], strings.Join(tr.stream(uint64(id)).pattern, "/"), "%s: pattern", s[0])
	}
}

// randomTopics returns n topics drawn from a small alphabet so that the trie both folds and
// keeps literal edges, with some '$' topics and empty levels.
func randomTopics(rng *rand.Rand, n int) []string {
	first := []string{"a", "b", "c", "d", "e", "$SYS", "$share", ""}
	out := make([]string, n)
	for i := range out {
		levels := []string{first[rng.IntN(len(first))]}
		for d := rng.IntN(4); d > 0; d-- {
			levels = append(levels, fmt.Sprintf("%c%d", 'k'+rng.IntN(4), rng.IntN(6)))
			if rng.IntN(10) == 0 {
				levels[len(levels)-1] = ""
			}
		}
		out[i] = strings.Join(levels, "/")
	}
	return out
}

func TestTrieTopicNeverMovesStreams(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		tr := newTrie([]int{2, 1, 3})
		log := &recordLog{}
		first := map[string]uint32{}
		firstVarying := map[string][]int{}
		topics := randomTopics(rng, 400)
		for i, name := range topics {
			id, varying := learnTopic(tr, name, log)
			if prev, ok := first[name]; ok {
				require.True(t, prev == id && slices.Equal(varying, firstVarying[name]),
					"seed %d: %q moved from stream %d %v to %d %v", seed, name, prev, firstVarying[name], id, varying)
			} else {
				first[name], firstVarying[name] = id, varying
			}
			if i%7 == 0 {
				tr.commit()
			}
		}
		tr.commit()
		// Every topic again, in another order, and after a replay of the records.
		re := newTrie([]int{2, 1, 3})
		for _, r := range log.recs {
			require.NoError(t, re.replay(r.seq, r.rec))
		}
		for _, tt := range []*trie{tr, re} {
			for _, i := range rng.Perm(len(topics)) {
				name := topics[i]
				id, varying := learnTopic(tt, name, nil)
				require.True(t, first[name] == id && slices.Equal(varying, firstVarying[name]),
					"seed %d: %q moved from stream %d to %d", seed, name, first[name], id)
			}
		}
		// The topic's stream pattern matches the topic, with '+' exactly at the varying levels.
		for name, id := range first {
			n := tr.stream(uint64(id))
			levels := topic.Split(name)
			require.True(t, topic.MatchLevels(n.pattern, levels), "seed %d: pattern %v does not match %q", seed, n.pattern, name)
			var plus []int
			for i, p := range n.pattern {
				if p == "+" {
					plus = append(plus, i)
				}
			}
			require.True(t, slices.Equal(plus, firstVarying[name]), "seed %d: %q: '+' at %v, varying %v", seed, name, plus, firstVarying[name])
		}
	}
}

// TestTrieMatchAgreesWithTopics checks match against the topics learned: for every filter, the
// streams returned are exactly the streams of the learned topics that the filter matches, plus
// only streams whose pattern could match. '$' topics are never reached by a first-level
// wildcard.
func TestTrieMatchAgreesWithTopics(t *testing.T) {
	filters := []string{"#", "+", "+/#", "+/+", "+/+/+", "a/#", "a/+", "a/k1", "+/k1/#", "$SYS/#",
		"$SYS/+", "$share/+/#", "+/+/+/+", "/#", "a/+/+", "e/l2/#", "$SYS", "a"}
	for seed := uint64(0); seed < 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 2))
		tr := newTrie([]int{2, 1})
		topics := randomTopics(rng, 300)
		streamOf := map[string]uint32{}
		for _, name := range topics {
			streamOf[name], _ = learnTopic(tr, name, nil)
		}
		tr.commit()
		for _, f := range filters {
			fl := topic.Split(f)
			got := map[uint32]bool{}
			for _, n := range tr.match(fl) {
				got[n.id] = true
				require.Equal(t, strings.HasPrefix(fl[0], "$"), rootOf(n) == sysRootNode,
					"seed %d: filter %q reached stream %v under the wrong root", seed, f, n.pattern)
			}
			for name, id := range streamOf {
				if topic.Match(f, name) {
					require.True(t, got[id], "seed %d: filter %q matches %q but not its stream %d", seed, f, name, id)
				}
			}
		}
	}
}

func TestTrieSysRootNeverMatchesFirstLevelWildcards(t *testing.T) {
	// Threshold 1 everywhere: the '$' root folds at once, so its streams are "+/..." patterns
	// under the '$' root, which a first-level '+' or '#' must still not reach.
	tr := newTrie([]int{1})
	for _, name := range []string{"$SYS/a", "$SYS/b", "$other/x/y", "$x", "$share/g/t"} {
		learnTopic(tr, name, nil)
	}
	tr.commit()
	for _, f := range []string{"#", "+", "+/#", "+/+", "+/+/+", "+/a"} {
		got := tr.match(topic.Split(f))
		require.Empty(t, got, "filter %q matched '$' streams %v", f, patternIDs(got))
	}
	for _, f := range []string{"$SYS/#", "$SYS/+", "$other/+/y", "$x", "$x/#"} {
		require.NotEmpty(t, tr.match(topic.Split(f)), "filter %q matched nothing", f)
	}
	learnTopic(tr, "plain/topic", nil)
	tr.commit()
	got := patternIDs(tr.match([]string{"#"}))
	require.Len(t, got, 1, "# matched %v, want the one ordinary stream", got)
}

// TestTrieAbort: Abort restores the exact trie of the last commit (same dump) and the record
// seq, whatever the aborted batch learned; replaying the committed records gives the same trie.
func TestTrieAbort(t *testing.T) {
	for seed := uint64(0); seed < 30; seed++ {
		rng := rand.New(rand.NewPCG(seed, 3))
		tr := newTrie([]int{2, 1})
		var committed []trieRecord
		for batch := 0; batch < 40; batch++ {
			before, seqBefore, nodesBefore := dumpTrie(tr), tr.records, len(tr.nodes)
			streamsBefore := patternIDs(tr.match([]string{"#"}))
			log := &recordLog{}
			for _, name := range randomTopics(rng, 1+rng.IntN(8)) {
				learnTopic(tr, name, log)
			}
			for i, r := range log.recs {
				require.Equal(t, seqBefore+uint32(i), r.seq, "seed %d: record %d seq", seed, i)
			}
			if rng.IntN(3) == 0 {
				tr.abort()
				require.Equal(t, before, dumpTrie(tr), "seed %d batch %d: trie after abort", seed, batch)
				require.Equal(t, seqBefore, tr.records, "seed %d: seq after abort", seed)
				require.Len(t, tr.nodes, nodesBefore, "seed %d: nodes after abort", seed)
				got := patternIDs(tr.match([]string{"#"}))
				require.True(t, slices.Equal(got, streamsBefore), "seed %d: streams after abort %v, want %v", seed, got, streamsBefore)
				continue
			}
			tr.commit()
			committed = append(committed, log.recs...)
		}
		re := newTrie([]int{2, 1})
		for _, r := range committed {
			require.NoError(t, re.replay(r.seq, r.rec))
		}
		require.Equal(t, dumpTrie(tr), dumpTrie(re), "seed %d: replayed trie, as the live one", seed)
		require.Equal(t, tr.records, re.records, "seed %d: replayed seq, as the live one", seed)
	}
}

// TestTrieUncommittedInvisible: what a batch learned is invisible to readers (Streams, Stream)
// until Commit, so a reader never sees a stream that an abort then takes back. This covers a
// stream on a node that already existed (an inner node of a longer, committed topic).
func TestTrieUncommittedInvisible(t *testing.T) {
	tr := newTrie([]int{10})
	learnTopic(tr, "a/b/c", nil)
	tr.commit()
	id, _ := learnTopic(tr, "a/b", nil) // node "a/b" exists and is committed; the stream is new
	learnTopic(tr, "x/y", nil)          // new nodes
	require.Equal(t, []string{"4:a/b/c"}, patternIDs(tr.match([]string{"#"})), "before commit, # matched")
	require.Nil(t, tr.stream(uint64(id)), "before commit, stream %d is visible", id)
	n, s := tr.size()
	require.True(t, n == 5 && s == 1, "before commit, size %d nodes %d streams, want 5 and 1", n, s)
	tr.abort()
	require.Equal(t, []string{"4:a/b/c"}, patternIDs(tr.match([]string{"#"})), "after abort, # matched")
	learnTopic(tr, "a/b", nil)
	require.True(t, tr.commit(), "commit reported no new stream")
	require.Equal(t, []string{"3:a/b", "4:a/b/c"}, patternIDs(tr.match([]string{"#"})), "after commit, # matched")
}

// TestTrieConcurrentReaders runs readers against a learning writer (for -race).
func TestTrieConcurrentReaders(t *testing.T) {
	tr := newTrie([]int{2, 1})
	rng := rand.New(rand.NewPCG(4, 4))
	topics := randomTopics(rng, 2000)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				for _, n := range tr.match([]string{"#"}) {
					if tr.stream(uint64(n.id)) == nil {
						t.Errorf("matched stream %d is not a stream", n.id)
						return
					}
				}
				tr.size()
				dumpTrie(tr)
			}
		}()
	}
	for i, name := range topics {
		learnTopic(tr, name, nil)
		if i%3 == 0 {
			tr.abort()
		} else {
			tr.commit()
		}
	}
	close(done)
	wg.Wait()
}

// buildTrie learns topics with commits, returning the trie and its records.
func buildTrie(t *testing.T, th []int, topics []string) (*trie, []trieRecord) {
	tr := newTrie(th)
	log := &recordLog{}
	for _, name := range topics {
		learnTopic(tr, name, log)
	}
	tr.commit()
	return tr, log.recs
}

// plusPaths returns the patterns of every node of tr that is a '+' edge or lies on a path to
// one, one per node, with the node's kind.
func plusPaths(tr *trie) []string {
	var out []string
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			if hasPlus(c) {
				out = append(out, fmt.Sprintf("%d %s", rootOf(c), strings.Join(patternOf(c), "/")))
				walk(c)
			}
		}
		if n.plusEdge != nil {
			out = append(out, fmt.Sprintf("%d %s", rootOf(n.plusEdge), strings.Join(patternOf(n.plusEdge), "/")))
			walk(n.plusEdge)
		}
	}
	walk(tr.nodes[rootNode])
	walk(tr.nodes[sysRootNode])
	slices.Sort(out)
	return out
}

func rootOf(n *node) uint32 {
	for n.parent != nil {
		n = n.parent
	}
	return n.id
}

func TestTrieInherit(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 5))
		topics := randomTopics(rng, 300)
		prev, recs := buildTrie(t, []int{2, 1}, topics)

		var first []trieRecord
		var firstDump string
		// The same inheritance, many times and from a replayed copy of prev (other map
		// insertion order), must give the same records.
		replayed := newTrie([]int{2, 1})
		for _, r := range recs {
			require.NoError(t, replayed.replay(r.seq, r.rec))
		}
		for i := range 10 {
			src := prev
			if i%2 == 1 {
				src = replayed
			}
			next := newTrie([]int{2, 1})
			log := &recordLog{}
			next.inheritFrom(src, log.emit)
			next.commit()
			if i == 0 {
				first, firstDump = log.recs, dumpTrie(next)
				// Only '+' edges and the literal paths to them, all of them, no streams.
				got, want := plusPaths(next), plusPaths(prev)
				require.True(t, slices.Equal(got, want), "seed %d: inherited\n%v\nwant\n%v", seed, got, want)
				for _, n := range next.nodes[2:] {
					require.True(t, n.plus || hasPlus(n), "seed %d: inherited literal node %v without a '+' below", seed, patternOf(n))
					require.False(t, n.stream, "seed %d: inherited a stream", seed)
				}
				for j, r := range log.recs {
					require.True(t, r.seq == uint32(j) && r.rec[0] == recordEdge,
						"seed %d: record %d: seq %d kind %d, want seq %d kind %d", seed, j, r.seq, r.rec[0], j, recordEdge)
				}
				// Replaying the inherited records rebuilds the same trie.
				re := newTrie([]int{2, 1})
				for _, r := range log.recs {
					require.NoError(t, re.replay(r.seq, r.rec))
				}
				require.Equal(t, firstDump, dumpTrie(re), "seed %d: replay of inherited records differs", seed)
				continue
			}
			require.True(t, slices.EqualFunc(log.recs, first, func(a, b trieRecord) bool { return a.seq == b.seq && bytes.Equal(a.rec, b.rec) }),
				"seed %d: inheritance %d wrote other records", seed, i)
			require.Equal(t, firstDump, dumpTrie(next), "seed %d: inheritance %d built another trie", seed, i)
		}
	}
}

// TestTrieInheritPlusOnlyExample spells out one inheritance.
func TestTrieInheritPlusOnlyExample(t *testing.T) {
	prev, _ := buildTrie(t, []int{1}, []string{"a/b/c", "a/x/c", "q/r", "$SYS/a", "$SYS/b"})
	// prev: root "a" ("b"/"c", + "c"), + (q/r folded at the root) "r"; $root "$SYS" ("a", +).
	next := newTrie([]int{1})
	next.inheritFrom(prev, nil)
	want := "root\n  \"a\" #3\n    + #4\n  + #2\n$root\n  \"$SYS\" #5\n    + #6\n"
	require.Equal(t, want, dumpTrie(next), "inherited from\n%s", dumpTrie(prev))
}

// validRecords returns the records of a random trie, for fuzz seeds.
func validRecords(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 6))
	tr := newTrie([]int{2, 1})
	log := &recordLog{}
	for _, name := range randomTopics(rng, 20) {
		learnTopic(tr, name, log)
	}
	return encodeRecords(log.recs)
}

// encodeRecords encodes records as the fuzz input: per record, uvarint(len) | record. Seqs are
// consecutive from 0 (the fuzzer's seqSkew breaks that).
func encodeRecords(recs []trieRecord) []byte {
	var b []byte
	for _, r := range recs {
		b = binary.AppendUvarint(b, uint64(len(r.rec)))
		b = append(b, r.rec...)
	}
	return b
}

// FuzzTrieReplay feeds arbitrary record bytes to replay (as Load does with what it reads from
// disk): it must never panic, every error must wrap ErrCorrupt, and a trie built from records
// that replay must be usable (match, learn, dump, inherit, replay of its own records again).
func FuzzTrieReplay(f *testing.F) {
	for s := range uint64(4) {
		f.Add(validRecords(s), uint8(0))
	}
	f.Add([]byte{10, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0}, uint8(0))
	f.Add([]byte{5, 2, 0, 0, 0, 1}, uint8(0))
	f.Add([]byte{0}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, seqSkew uint8) {
		tr := newTrie([]int{2, 1})
		var ok []trieRecord
		for i := 0; len(data) > 0; i++ {
			n, w := binary.Uvarint(data)
			if w <= 0 || n > uint64(len(data)-w) {
				break
			}
			rec := data[w : w+int(n)]
			data = data[w+int(n):]
			seq := uint32(i)
			if seqSkew != 0 && i == int(seqSkew%8) {
				seq += uint32(seqSkew)
			}
			if err := tr.replay(seq, rec); err != nil {
				require.ErrorIs(t, err, ErrCorrupt, "record %d", i)
				break
			}
			ok = append(ok, trieRecord{seq, slices.Clone(rec)})
		}
		d := dumpTrie(tr)
		for _, f := range []string{"#", "+/+", "a/#", "$SYS/#", "+"} {
			tr.match(topic.Split(f))
		}
		// The replayed trie rebuilds identically, and stays usable.
		re := newTrie([]int{2, 1})
		for _, r := range ok {
			require.NoError(t, re.replay(r.seq, r.rec), "second replay")
		}
		require.Equal(t, d, dumpTrie(re), "second replay built another trie")
		next := newTrie([]int{2, 1})
		next.inheritFrom(tr, nil)
		for _, name := range []string{"a/b", "a/b/c", "$SYS/x", "", "/"} {
			learnTopic(tr, name, nil)
		}
		tr.abort()
		require.Equal(t, d, dumpTrie(tr), "abort after learning on a replayed trie changed it")
	})
}

// TestLoadCorrupt: Load refuses damaged trie records with an error that wraps ErrCorrupt.
func TestLoadCorrupt(t *testing.T) {
	p := Params{Kind: stream.LayoutLTS, Thresholds: []int{1}}
	base := genPrefix(nil, keyspaceTrie, 1)
	seqKey := func(seq uint32, extra ...byte) []byte {
		return append(binary.BigEndian.AppendUint32(slices.Clone(base), seq), extra...)
	}
	for _, tc := range []struct {
		name   string
		damage func(db *pebble.DB) error
	}{
		{"long key", func(db *pebble.DB) error { return db.Set(seqKey(1, 0), []byte{recordStream, 0, 0, 0, 3}, nil) }},
		{"short key", func(db *pebble.DB) error { return db.Set(base, nil, nil) }},
		{"missing record", func(db *pebble.DB) error { return db.Delete(seqKey(1), nil) }},
		{"garbage record", func(db *pebble.DB) error { return db.Set(seqKey(2), []byte{7, 7, 7}, nil) }},
		{"record past the end", func(db *pebble.DB) error { return db.Set(seqKey(99), []byte{recordStream, 0, 0, 0, 3}, nil) }},
		{"stream on a root", func(db *pebble.DB) error { return db.Set(seqKey(2), []byte{recordStream, 0, 0, 0, 1}, nil) }},
		{"edge to an unknown parent", func(db *pebble.DB) error {
			return db.Set(seqKey(0), []byte{recordEdge, 0, 0, 0, 9, 0, 0, 0, 2, 0, 'a'}, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openMem(t)
			defer db.Close()
			g, err := New(p, nil, 1, nil, db)
			require.NoError(t, err)
			b := db.NewBatch()
			for _, name := range []string{"a/b", "c/d", "a/e"} {
				_, err := g.Add(b, &message.Message{Topic: name, Timestamp: 1}, topic.Split(name))
				require.NoError(t, err)
			}
			require.NoError(t, b.Commit(pebble.NoSync))
			g.Commit()
			_, err = Load(db, p, nil, 1)
			require.NoError(t, err, "undamaged")
			require.NoError(t, tc.damage(db))
			_, err = Load(db, p, nil, 1)
			require.ErrorIs(t, err, ErrCorrupt, "Load")
		})
	}
}
