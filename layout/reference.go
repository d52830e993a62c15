package layout

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
)

// referenceKey is the key of the one stream of a reference generation.
const referenceKey = 0

// reference is the baseline layout: one stream per shard-generation, keyed by timestamp, the
// topic stored in the value, every filter answered by a scan.
type reference struct {
	prefix []byte
	gen    stream.GenerationID
	base   []byte // P | 'd' | gen
	key    []byte
	value  []byte
}

func newReference(prefix []byte, gen stream.GenerationID) *reference {
	return &reference{prefix: prefix, gen: gen, base: genPrefix(prefix, keyspaceData, gen)}
}

func (l *reference) Params() Params                { return Params{Kind: stream.LayoutReference} }
func (l *reference) Commit() bool                  { return false }
func (l *reference) CommitPending() (bool, uint64) { return false, 0 }
func (l *reference) Publish(uint64)                {}
func (l *reference) Abort()                        {}
func (l *reference) Dump() string                  { return fmt.Sprintf("generation %d reference\n", l.gen) }

func (l *reference) Add(b Writer, m *message.Message, _ []string) (uint64, error) {
	l.key = binary.BigEndian.AppendUint64(append(l.key[:0], l.base...), m.Timestamp)
	l.value = binary.AppendUvarint(l.value[:0], uint64(len(m.Topic)))
	l.value = append(l.value, m.Topic...)
	l.value = message.AppendRecord(l.value, m)
	return referenceKey, b.Set(l.key, l.value, nil)
}

// Streams returns the generation's one stream for every filter: the reference layout cannot
// tell which topics it holds without a scan.
func (l *reference) Streams([]string) []StreamInfo {
	return []StreamInfo{{Key: referenceKey, Pattern: "#"}}
}

func (l *reference) StreamCount() int { return 1 }

func (l *reference) Stream(key uint64) (StreamInfo, bool) {
	return StreamInfo{Key: referenceKey, Pattern: "#"}, key == referenceKey
}

func (l *reference) Read(r pebble.Reader, req ReadRequest, out []message.Message) ([]message.Message, ReadResult, error) {
	res := ReadResult{Next: req.From}
	// out may hold earlier messages; Max counts this read's only (saturating: Max may be huge).
	limit := len(out) + min(req.Max, math.MaxInt-len(out))
	if req.Key != referenceKey || req.From >= req.Until {
		res.Exhausted = true
		return out, res, nil
	}
	it, err := r.NewIter(&pebble.IterOptions{
		LowerBound: binary.BigEndian.AppendUint64(append([]byte(nil), l.base...), req.From),
		UpperBound: binary.BigEndian.AppendUint64(append([]byte(nil), l.base...), req.Until),
	})
	if err != nil {
		return out, res, err
	}
	defer it.Close()
	filter := joinLevels(req.Filter)
	for ok := it.First(); ok; ok = it.Next() {
		ts, err := tsAfter(it.Key(), len(l.base))
		if err != nil {
			return out, res, err
		}
		res.Next = ts + 1
		v, err := it.ValueAndErr()
		if err != nil {
			return out, res, err
		}
		name, record, err := decodeReferenceValue(v)
		if err != nil {
			return out, res, fmt.Errorf("%w at ts %d", err, ts)
		}
		if !topic.Match(filter, name) {
			continue
		}
		m := message.Message{Topic: name, Timestamp: ts}
		if err := message.DecodeRecord(record, &m); err != nil {
			return out, res, fmt.Errorf("%w: reference key %x: %w", ErrCorrupt, it.Key(), err)
		}
		out = append(out, m)
		if len(out) >= limit {
			return out, res, it.Error()
		}
	}
	res.Exhausted = true
	return out, res, it.Error()
}

// decodeReferenceValue splits a reference data value, uvarint(len(topic)) | topic | message
// record, into the topic and the record.
func decodeReferenceValue(v []byte) (name string, record []byte, err error) {
	n, w := binary.Uvarint(v)
	if w <= 0 || n > uint64(len(v)-w) {
		return "", nil, fmt.Errorf("%w: reference value: topic length", ErrCorrupt)
	}
	return string(v[w : w+int(n)]), v[w+int(n):], nil
}
