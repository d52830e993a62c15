package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	pb "github.com/lni/dragonboat/v4/raftpb"
)

// ErrCorrupt is wrapped by every error about log bytes that do not decode.
var ErrCorrupt = errors.New("raftlog: corrupt log")

const (
	frameHeader = 8        // crc32c(u32) | length(u32)
	maxFrame    = 1 << 30  // a payload longer than this is a damaged length
	maxCount    = 1 << 24  // entries in one op
	maxEntry    = maxFrame // one entry's bytes
)

// Op codes (doc.go).
const (
	opEntries byte = iota + 1
	opState
	opInstall
	opSnapshot
	opBootstrap
	opRemoveTo
	opRemoveNode
	opCheckpoint
	opWindow
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// payload builds one frame: header space first, ops appended, sealed by frame().
type payload struct{ b []byte }

func (p *payload) reset() { p.b = append(p.b[:0], make([]byte, frameHeader)...) }

func (p *payload) empty() bool { return len(p.b) <= frameHeader }

func (p *payload) head(op byte, shard, replica uint64) {
	p.b = append(p.b, op)
	p.b = binary.AppendUvarint(p.b, shard)
	p.b = binary.AppendUvarint(p.b, replica)
}

type marshaler interface {
	Size() int
	MarshalTo([]byte) (int, error)
}

// message appends len | bytes of m.
func (p *payload) message(m marshaler) {
	n := m.Size()
	p.b = binary.AppendUvarint(p.b, uint64(n))
	at := len(p.b)
	p.b = append(p.b, make([]byte, n)...)
	if _, err := m.MarshalTo(p.b[at:]); err != nil {
		panic(fmt.Sprintf("raftlog: marshal %T: %v", m, err)) // sized just above: cannot fail
	}
}

// entries appends an opEntries op; the entries' indexes must follow on from the first.
func (p *payload) entries(shard, replica uint64, ents []pb.Entry) error {
	if len(ents) > maxCount {
		return fmt.Errorf("raftlog: shard %d replica %d: %d entries in one update (at most %d)", shard, replica, len(ents), maxCount)
	}
	for i := range ents {
		if ents[i].Index != ents[0].Index+uint64(i) {
			return fmt.Errorf("raftlog: shard %d replica %d: entry index %d at position %d after %d", shard, replica, ents[i].Index, i, ents[0].Index)
		}
	}
	p.head(opEntries, shard, replica)
	p.b = binary.AppendUvarint(p.b, ents[0].Index) // the entries' indexes follow on
	p.b = binary.AppendUvarint(p.b, uint64(len(ents)))
	for i := range ents {
		p.message(&ents[i])
	}
	return nil
}

// window starts an opWindow op of count entries from first; rawEntry then appends each.
func (p *payload) window(shard, replica, first uint64, count int) {
	p.head(opWindow, shard, replica)
	p.b = binary.AppendUvarint(p.b, first)
	p.b = binary.AppendUvarint(p.b, uint64(count))
}

// rawEntry appends len | n bytes of an entry as stored, and returns them to be filled.
func (p *payload) rawEntry(n uint32) []byte {
	p.b = binary.AppendUvarint(p.b, uint64(n))
	at := len(p.b)
	p.b = append(p.b, make([]byte, n)...)
	return p.b[at:]
}

func (p *payload) state(shard, replica uint64, st *pb.State) {
	p.head(opState, shard, replica)
	p.message(st)
}

func (p *payload) snapshot(op byte, shard, replica uint64, ss *pb.Snapshot) {
	p.head(op, shard, replica)
	p.message(ss)
}

func (p *payload) bootstrap(shard, replica uint64, bs *pb.Bootstrap) {
	p.head(opBootstrap, shard, replica)
	p.message(bs)
}

func (p *payload) removeTo(shard, replica, index uint64) {
	p.head(opRemoveTo, shard, replica)
	p.b = binary.AppendUvarint(p.b, index)
}

func (p *payload) removeNode(shard, replica uint64) { p.head(opRemoveNode, shard, replica) }

func (p *payload) checkpoint(shard, replica uint64, n *node) {
	p.head(opCheckpoint, shard, replica)
	p.b = binary.AppendUvarint(p.b, n.maxIndex)
	p.b = binary.AppendUvarint(p.b, n.base)
	p.b = append(p.b, boolByte(n.hasLog))
}

// frame seals the header and returns the frame's bytes.
func (p *payload) frame() []byte {
	binary.LittleEndian.PutUint32(p.b[4:8], uint32(len(p.b)-frameHeader))
	binary.LittleEndian.PutUint32(p.b[0:4], crc32.Checksum(p.b[4:], castagnoli))
	return p.b
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// checkFrame returns the payload length of the frame at the start of b, or ok false if b does
// not begin with a whole frame whose CRC checks.
func checkFrame(b []byte) (n int, ok bool) {
	if len(b) < frameHeader {
		return 0, false
	}
	length := binary.LittleEndian.Uint32(b[4:8])
	if length > maxFrame || uint64(len(b)-frameHeader) < uint64(length) {
		return 0, false
	}
	n = int(length)
	if crc32.Checksum(b[4:frameHeader+n], castagnoli) != binary.LittleEndian.Uint32(b[0:4]) {
		return 0, false
	}
	return n, true
}

// followedByFrame reports whether a frame that does not check at the start of b has a good
// frame after it, at the end its header declares: damage, not a write torn by a crash (only
// the last frame can be torn).
func followedByFrame(b []byte) bool {
	if len(b) < frameHeader {
		return false
	}
	length := binary.LittleEndian.Uint32(b[4:8])
	if length > maxFrame || uint64(len(b)-frameHeader) <= uint64(length) {
		return false
	}
	_, ok := checkFrame(b[frameHeader+int(length):])
	return ok
}

// visitor receives the ops of a payload in order. Entry bytes are given as offset and length
// within the payload; the other messages decoded.
type visitor interface {
	// entries: an opEntries op, or with whole an opWindow (the replica's whole window again,
	// relocated: doc.go).
	entries(shard, replica uint64, first uint64, locs []span, whole bool) error
	state(shard, replica uint64, st pb.State)
	snapshot(shard, replica uint64, ss pb.Snapshot, install bool)
	bootstrap(shard, replica uint64, bs pb.Bootstrap)
	removeTo(shard, replica, index uint64)
	removeNode(shard, replica uint64)
	checkpoint(shard, replica, maxIndex, base uint64, hasLog bool)
}

// span is where one entry's bytes are within a payload.
type span struct{ off, n uint32 }

// decode walks the ops of payload b and calls v; it checks everything it reads and never
// panics on bad bytes. scratch is reused for entry spans.
func decode(b []byte, v visitor, scratch []span) ([]span, error) {
	d := decoder{b: b}
	for d.i < len(b) {
		op := d.byte()
		shard, replica := d.uvarint(), d.uvarint()
		if d.err != nil {
			return scratch, d.err
		}
		switch op {
		case opEntries, opWindow:
			first, count := d.uvarint(), d.uvarint()
			if count == 0 || count > maxCount || first == 0 || first+count < first {
				d.fail("entries from %d, count %d", first, count)
			}
			scratch = scratch[:0]
			for k := uint64(0); k < count && d.err == nil; k++ {
				raw := d.bytes()
				scratch = append(scratch, span{off: uint32(d.i - len(raw)), n: uint32(len(raw))})
			}
			if d.err == nil {
				if err := v.entries(shard, replica, first, scratch, op == opWindow); err != nil {
					return scratch, err
				}
			}
		case opState:
			var st pb.State
			d.message(&st)
			if d.err == nil {
				v.state(shard, replica, st)
			}
		case opInstall, opSnapshot:
			var ss pb.Snapshot
			d.message(&ss)
			if d.err == nil {
				v.snapshot(shard, replica, ss, op == opInstall)
			}
		case opBootstrap:
			var bs pb.Bootstrap
			d.message(&bs)
			if d.err == nil {
				v.bootstrap(shard, replica, bs)
			}
		case opRemoveTo:
			index := d.uvarint()
			if d.err == nil {
				v.removeTo(shard, replica, index)
			}
		case opRemoveNode:
			v.removeNode(shard, replica)
		case opCheckpoint:
			maxIndex, base, hasLog := d.uvarint(), d.uvarint(), d.byte()
			if hasLog > 1 {
				d.fail("checkpoint flag %d", hasLog)
			}
			if d.err == nil {
				v.checkpoint(shard, replica, maxIndex, base, hasLog == 1)
			}
		default:
			d.fail("unknown op %d", op)
		}
		if d.err != nil {
			return scratch, d.err
		}
	}
	return scratch, nil
}

type decoder struct {
	b   []byte
	i   int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: at payload byte %d: %s", ErrCorrupt, d.i, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if d.i >= len(d.b) {
		d.fail("truncated")
		return 0
	}
	d.i++
	return d.b[d.i-1]
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.i:])
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.i += n
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxEntry || n > uint64(len(d.b)-d.i) {
		d.fail("length %d past the end", n)
		return nil
	}
	d.i += int(n)
	return d.b[d.i-int(n) : d.i]
}

type unmarshaler interface{ Unmarshal([]byte) error }

func (d *decoder) message(m unmarshaler) {
	raw := d.bytes()
	if d.err != nil {
		return
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				d.fail("undecodable %T: %v", m, r)
			}
		}()
		if err := m.Unmarshal(raw); err != nil {
			d.fail("undecodable %T: %v", m, err)
		}
	}()
}
