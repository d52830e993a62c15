package layout

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
)

// lts is the learned-topic-structure layout of one generation.
type lts struct {
	params Params
	prefix []byte
	gen    stream.GenerationID
	trie   *trie

	// Scratch of the single writer, reused across Add calls.
	key     []byte
	dk      []byte
	value   []byte
	varying []int
	vals    []string
	emit    func(uint32, []byte) // writes trie records to emitTo
	emitTo  Writer
	emitErr error
}

func newLTS(p Params, prefix []byte, gen stream.GenerationID) *lts {
	return &lts{params: p, prefix: prefix, gen: gen, trie: newTrie(p.thresholds())}
}

func (l *lts) Params() Params { return l.params }

// emitter returns a function that writes trie records into b; the first error is kept in *err.
func (l *lts) emitter(b Writer, err *error) func(uint32, []byte) {
	base := genPrefix(l.prefix, keyspaceTrie, l.gen)
	return func(seq uint32, rec []byte) {
		k := binary.BigEndian.AppendUint32(append([]byte(nil), base...), seq)
		if e := b.Set(k, rec, nil); e != nil && *err == nil {
			*err = e
		}
	}
}

func (l *lts) load(r pebble.Reader) error {
	lo := genPrefix(l.prefix, keyspaceTrie, l.gen)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != len(lo)+4 {
			return fmt.Errorf("%w: trie key of %d bytes", ErrCorrupt, len(k))
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := l.trie.replay(binary.BigEndian.Uint32(k[len(lo):]), v); err != nil {
			return err
		}
	}
	return it.Error()
}

func (l *lts) Add(b Writer, m *message.Message, levels []string) (uint64, error) {
	if l.emit == nil {
		// One closure for the generation's life: Add runs per message and must not allocate
		// one per call.
		l.emit = l.emitter(writerFunc(func(k, v []byte, o *pebble.WriteOptions) error {
			return l.emitTo.Set(k, v, o)
		}), &l.emitErr)
	}
	l.emitTo, l.emitErr = b, nil
	n, varying := l.trie.learn(levels, l.varying[:0], l.emit)
	l.varying, l.emitTo = varying, nil
	if l.emitErr != nil {
		return 0, l.emitErr
	}
	keys := newStreamKeysInto(l.key[:0], l.prefix, l.gen, uint64(n.id))
	l.key = keys.base
	l.vals = l.vals[:0]
	for _, pos := range varying {
		l.vals = append(l.vals, levels[pos])
	}
	l.value = message.AppendRecord(l.value[:0], m)
	l.dk = keys.appendDataKey(l.dk[:0], m.Timestamp, l.vals)
	key := uint64(n.id)
	if err := b.Set(l.dk, l.value, nil); err != nil {
		return key, err
	}
	for _, pos := range varying {
		l.dk = keys.appendIndexKey(l.dk[:0], uint16(pos+1), xxhash.Sum64String(levels[pos]), m.Timestamp)
		if err := b.Set(l.dk, nil, nil); err != nil {
			return key, err
		}
	}
	return key, nil
}

// writerFunc adapts a function to Writer.
type writerFunc func(key, value []byte, opts *pebble.WriteOptions) error

func (f writerFunc) Set(key, value []byte, opts *pebble.WriteOptions) error {
	return f(key, value, opts)
}

func newStreamKeysInto(dst, prefix []byte, gen stream.GenerationID, static uint64) streamKeys {
	dst = append(dst, prefix...)
	dst = append(dst, keyspaceData)
	dst = binary.BigEndian.AppendUint32(dst, uint32(gen))
	return streamKeys{base: binary.BigEndian.AppendUint64(dst, static)}
}

func (l *lts) Commit() bool { return l.trie.commit() }

func (l *lts) CommitPending() (bool, uint64) {
	news, mark := l.trie.commitPending()
	return news, uint64(mark)
}

func (l *lts) Publish(mark uint64) { l.trie.publish(uint32(mark)) }
func (l *lts) Abort()              { l.trie.abort() }

func (l *lts) Streams(filter []string) []StreamInfo {
	nodes := l.trie.match(filter)
	out := make([]StreamInfo, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, StreamInfo{Key: uint64(n.id), Pattern: joinLevels(n.pattern)})
	}
	return out
}

func (l *lts) StreamCount() int {
	_, streams := l.trie.size()
	return streams
}

func (l *lts) Stream(key uint64) (StreamInfo, bool) {
	n := l.trie.stream(key)
	if n == nil {
		return StreamInfo{}, false
	}
	return StreamInfo{Key: key, Pattern: joinLevels(n.pattern)}, true
}

func (l *lts) Dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "generation %d %s\n", l.gen, l.params)
	l.trie.dump(&b)
	return b.String()
}

// Read answers a filter inside one stream.
//
// Each varying level that the filter pins to a literal has an index; the read leapfrogs those
// indexes (every one is sought to the largest candidate timestamp until they agree) and only then
// touches the data key, where the whole topic is checked against the filter (hash collisions,
// '#'). Without a pinned level it scans the stream's data keys. Either way a read costs what
// matches plus one seek per index and skip, not the size of the stream.
func (l *lts) Read(r pebble.Reader, req ReadRequest, out []message.Message) ([]message.Message, ReadResult, error) {
	res := ReadResult{Next: req.From}
	// out may hold earlier messages; Max counts this read's only (saturating: Max may be huge).
	limit := len(out) + min(req.Max, math.MaxInt-len(out))
	n := l.trie.stream(req.Key)
	if n == nil || req.From >= req.Until {
		res.Exhausted = true
		return out, res, nil
	}
	pattern := n.pattern
	keys := newStreamKeys(l.prefix, l.gen, req.Key)
	dataPrefix := keys.dataPrefix()
	dataLo := binary.BigEndian.AppendUint64(append([]byte(nil), dataPrefix...), req.From)
	dataHi := binary.BigEndian.AppendUint64(append([]byte(nil), dataPrefix...), req.Until)
	data, err := r.NewIter(&pebble.IterOptions{LowerBound: dataLo, UpperBound: dataHi})
	if err != nil {
		return out, res, err
	}
	defer data.Close()

	nVarying := 0
	for _, p := range pattern {
		if p == "+" {
			nVarying++
		}
	}
	d := dataReader{pattern: pattern, nVarying: nVarying, prefixLen: len(dataPrefix), filter: req.Filter}

	// Pinned levels: a '+' in the pattern where the filter has a literal (before any '#').
	var idx []*indexCursor
	for i, p := range pattern {
		if i >= len(req.Filter) || req.Filter[i] == "#" {
			break
		}
		if p != "+" || req.Filter[i] == "+" {
			continue
		}
		ip := keys.indexPrefix(uint16(i+1), xxhash.Sum64String(req.Filter[i]))
		it, err := r.NewIter(&pebble.IterOptions{
			LowerBound: binary.BigEndian.AppendUint64(append([]byte(nil), ip...), req.From),
			UpperBound: binary.BigEndian.AppendUint64(append([]byte(nil), ip...), req.Until),
		})
		if err != nil {
			return out, res, err
		}
		defer it.Close()
		idx = append(idx, &indexCursor{it: it, prefix: ip, seek: make([]byte, 0, len(ip)+8)})
	}

	if len(idx) == 0 {
		for ok := data.First(); ok; ok = data.Next() {
			m, ts, err := d.decode(data)
			if err != nil {
				return out, res, err
			}
			res.Next = ts + 1
			if m != nil {
				out = append(out, *m)
				if len(out) >= limit {
					return out, res, data.Error()
				}
			}
		}
		res.Exhausted = true
		return out, res, data.Error()
	}

	cand := req.From
	seek := make([]byte, 0, len(dataPrefix)+8)
	for {
		agreed := true
		for _, c := range idx {
			ts, ok, err := c.seekGE(cand)
			if err != nil {
				return out, res, err
			}
			if !ok {
				// No more candidates below Until in this snapshot. Later writes get larger
				// timestamps than any present, and cand came from a present key, so resuming
				// at cand misses nothing.
				res.Next = max(res.Next, cand)
				res.Exhausted = true
				return out, res, nil
			}
			if ts > cand {
				cand, agreed = ts, false
				break
			}
		}
		if !agreed {
			continue
		}
		seek = binary.BigEndian.AppendUint64(append(seek[:0], dataPrefix...), cand)
		if data.SeekGE(seek) {
			m, ts, err := d.decode(data)
			if err != nil {
				return out, res, err
			}
			if ts == cand && m != nil {
				out = append(out, *m)
			}
		} else if err := data.Error(); err != nil {
			return out, res, err
		}
		cand++
		res.Next = cand
		if len(out) >= limit {
			return out, res, nil
		}
	}
}

// indexCursor walks one level index of a stream.
type indexCursor struct {
	it     *pebble.Iterator
	prefix []byte
	seek   []byte
}

// seekGE returns the first indexed timestamp at or after ts.
func (c *indexCursor) seekGE(ts uint64) (uint64, bool, error) {
	c.seek = binary.BigEndian.AppendUint64(append(c.seek[:0], c.prefix...), ts)
	if !c.it.SeekGE(c.seek) {
		return 0, false, c.it.Error()
	}
	t, err := tsAfter(c.it.Key(), len(c.prefix))
	return t, true, err
}

// dataReader decodes LTS data keys of one stream and checks them against a filter.
type dataReader struct {
	pattern   []string
	nVarying  int
	prefixLen int
	filter    []string
	varying   []string
	levels    []string
}

// decode returns the message at the iterator's position, or nil when its topic does not match
// the filter, and its timestamp.
func (d *dataReader) decode(it *pebble.Iterator) (*message.Message, uint64, error) {
	k := it.Key()
	ts, varying, err := decodeDataSuffix(k[d.prefixLen:], d.nVarying, d.varying[:0])
	d.varying = varying
	if err != nil {
		return nil, 0, err
	}
	d.levels = d.levels[:0]
	vi := 0
	for _, p := range d.pattern {
		if p == "+" {
			d.levels = append(d.levels, varying[vi])
			vi++
		} else {
			d.levels = append(d.levels, p)
		}
	}
	if !topic.MatchLevels(d.filter, d.levels) {
		return nil, ts, nil
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return nil, ts, err
	}
	m := &message.Message{Topic: joinLevels(d.levels), Timestamp: ts}
	if err := message.DecodeRecord(v, m); err != nil {
		return nil, ts, fmt.Errorf("%w: stream key %x: %w", ErrCorrupt, k, err)
	}
	return m, ts, nil
}
