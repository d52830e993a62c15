package layout

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
)

// DefaultThresholds are the LTS wildcard thresholds: a trie node at the first level keeps up to
// 100 distinct literal children, deeper nodes up to 10; the next new child is folded into '+'.
var DefaultThresholds = []int{100, 10}

// MaxThreshold bounds a wildcard threshold, so a corrupted or careless setting cannot make the
// trie keep every distinct level value literal.
const MaxThreshold = 1 << 16

// Params selects a layout and its parameters. They are stored with each generation, so new
// generations may use other parameters without rewriting old data.
type Params struct {
	Kind stream.LayoutKind
	// Thresholds are the LTS wildcard thresholds by depth; the last one repeats for deeper
	// levels. Empty means DefaultThresholds.
	Thresholds []int
}

// Validate reports whether p can be used.
func (p Params) Validate() error {
	switch p.Kind {
	case stream.LayoutReference:
		return nil
	case stream.LayoutLTS:
		for i, th := range p.Thresholds {
			if th < 1 || th > MaxThreshold {
				return fmt.Errorf("wildcard threshold %d at depth %d is outside [1, %d]", th, i, MaxThreshold)
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown layout kind %d", p.Kind)
	}
}

func (p Params) thresholds() []int {
	if len(p.Thresholds) == 0 {
		return DefaultThresholds
	}
	return p.Thresholds
}

// String renders p as "lts[100 10]" or "reference".
func (p Params) String() string {
	if p.Kind == stream.LayoutLTS {
		return fmt.Sprintf("%s%v", p.Kind, p.thresholds())
	}
	return p.Kind.String()
}

// AppendParams appends the encoding of p: kind(u8) | uvarint(n) | n × uvarint(threshold).
func AppendParams(dst []byte, p Params) []byte {
	dst = append(dst, byte(p.Kind))
	th := p.Thresholds
	if p.Kind == stream.LayoutLTS {
		th = p.thresholds()
	}
	dst = binary.AppendUvarint(dst, uint64(len(th)))
	for _, v := range th {
		dst = binary.AppendUvarint(dst, uint64(v))
	}
	return dst
}

// DecodeParams decodes what AppendParams wrote and returns the remaining bytes.
func DecodeParams(b []byte) (Params, []byte, error) {
	if len(b) < 2 {
		return Params{}, nil, fmt.Errorf("%w: layout params of %d bytes", ErrCorrupt, len(b))
	}
	p := Params{Kind: stream.LayoutKind(b[0])}
	n, w := binary.Uvarint(b[1:])
	b = b[1:]
	if w <= 0 || n > uint64(len(b)-w) {
		return Params{}, nil, fmt.Errorf("%w: layout params threshold count", ErrCorrupt)
	}
	b = b[w:]
	for i := uint64(0); i < n; i++ {
		v, w := binary.Uvarint(b)
		if w <= 0 || v > MaxThreshold {
			return Params{}, nil, fmt.Errorf("%w: layout threshold %d", ErrCorrupt, i)
		}
		p.Thresholds = append(p.Thresholds, int(v))
		b = b[w:]
	}
	if err := p.Validate(); err != nil {
		return Params{}, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return p, b, nil
}

// StreamInfo describes one stream of a generation.
type StreamInfo struct {
	Key     uint64
	Pattern string
}

// ReadRequest asks for messages of one stream.
type ReadRequest struct {
	Key    uint64   // stream key
	Filter []string // topic filter, split into levels; valid
	From   uint64   // first timestamp to consider
	Until  uint64   // timestamps at or above Until are not read
	Max    int      // at most this many messages (> 0)
}

// ReadResult says where a read stopped.
type ReadResult struct {
	// Next is the position to resume from: every message of the stream that matches the filter
	// with From <= ts < Next was returned by this or an earlier read.
	Next uint64
	// Exhausted is true when the read reached Until or the end of the stream's data, rather
	// than stopping at Max.
	Exhausted bool
}

// Writer receives the keys a layout writes; *pebble.Batch implements it. A layout never
// writes the same key twice and does not depend on the order in which keys are applied.
type Writer interface {
	Set(key, value []byte, opts *pebble.WriteOptions) error
}

// Generation is the layout of one shard-generation.
//
// Add, Commit and Abort are called by the shard's single writer. Streams, Read, Stream and Dump
// may be called concurrently with them and with each other.
type Generation interface {
	Params() Params
	// Add writes m, whose Timestamp is set, into b; levels is topic.Split(m.Topic), and returns
	// the key of the stream m went to. It may learn new streams and write their records into b
	// too.
	Add(b Writer, m *message.Message, levels []string) (key uint64, err error)
	// Commit makes what Add learned since the last Commit or Abort permanent and visible to
	// readers, and reports whether new streams appeared. Call it once the batch is durable.
	Commit() (newStreams bool)
	// CommitPending is Commit without the visibility: call it once the batch is committed but
	// not yet durable, and Publish(mark) once it is durable, so that a reader is never handed a
	// stream a crash could take back.
	CommitPending() (newStreams bool, mark uint64)
	// Publish makes visible what was committed up to mark, a CommitPending result.
	Publish(mark uint64)
	// Abort forgets what Add learned since the last Commit or Abort. Call it when the batch is
	// discarded.
	Abort()
	// Streams returns the streams whose pattern can match the filter levels, by key.
	Streams(filter []string) []StreamInfo
	// StreamCount returns the number of committed streams.
	StreamCount() int
	// Stream returns the stream with the given key.
	Stream(key uint64) (StreamInfo, bool)
	// Read appends to out the messages of one stream that match the filter, in timestamp order.
	Read(r pebble.Reader, req ReadRequest, out []message.Message) ([]message.Message, ReadResult, error)
	// Dump renders the learned structure as text (ds-info, tests).
	Dump() string

	// verifyData checks a data keyspace key (body: what follows keyspace | gen) and its value
	// (Verify).
	verifyData(body, value []byte) (KeyInfo, error)
}

// New returns the layout of a new generation and writes its initial records into b. For LTS,
// the new generation starts from the '+' edges of prev when prev is an LTS generation.
func New(p Params, prefix []byte, gen stream.GenerationID, prev Generation, b Writer) (Generation, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	switch p.Kind {
	case stream.LayoutReference:
		return newReference(prefix, gen), nil
	default:
		l := newLTS(p, prefix, gen)
		if pl, ok := prev.(*lts); ok {
			var err error
			l.trie.inheritFrom(pl.trie, l.emitter(b, &err))
			if err != nil {
				return nil, err
			}
			l.trie.commit()
		}
		return l, nil
	}
}

// Load reopens the layout of an existing generation from r.
func Load(r pebble.Reader, p Params, prefix []byte, gen stream.GenerationID) (Generation, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if p.Kind == stream.LayoutReference {
		return newReference(prefix, gen), nil
	}
	l := newLTS(p, prefix, gen)
	if err := l.load(r); err != nil {
		return nil, fmt.Errorf("generation %d: %w", gen, err)
	}
	return l, nil
}

func joinLevels(levels []string) string { return strings.Join(levels, "/") }
