package ds

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
)

// ErrInvalidPosition: bytes handed to UnmarshalPosition are not a position of this format
// (garbage, truncated, wrong checksum), or a position does not fit the DB (another number of
// shards).
var ErrInvalidPosition = errors.New("strata: invalid subscription position")

// Position is where a subscription stands: per shard, a timestamp such that every matching
// message of the shard below it was delivered and acknowledged (or, for a start position, is
// not wanted). It is a small value — one timestamp per shard, however many streams and
// generations the filter spans — to keep with the session and hand back to Subscribe after a
// restart, on any node of a cluster.
//
// # Encoding (version 1)
//
//	+-------+---------+==================+=========================+-----------+
//	| magic | version |     nShards      | nShards timestamps (µs) |  CRC-32C  |
//	| 0x50  |  0x01   |     uvarint      |   uvarint each, minimal |  4 bytes  |
//	+-------+---------+==================+=========================+-----------+
//
// The CRC-32C (Castagnoli, big-endian) covers every byte before it. Decoding checks magic,
// version and checksum first, then every field: nShards in [1, MaxShards], minimal uvarints,
// no trailing bytes; it never panics and allocates at most one slice of nShards.
type Position struct {
	next []uint64 // per shard
}

const (
	positionMagic   = 'P'
	positionVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewPosition returns the position whose shard i stands at ts[i] (µs). It is for tests and
// tools; a broker gets positions from StartPosition, TailPosition and Subscription.Position.
func NewPosition(ts ...uint64) Position {
	return Position{next: append([]uint64(nil), ts...)}
}

// StartPosition returns the position at time t on every shard of the DB, or at the shard's
// oldest generation if that starts later: a subscription from it delivers every message
// stored at or after t that retention still holds. The zero time means from the oldest
// message there is. Only what retention drops after this call is reported as lost (a
// *LossError from Next).
func (db *DB) StartPosition(t time.Time) Position {
	p := Position{next: make([]uint64, len(db.shards))}
	exit, err := db.enter()
	if err == nil {
		defer exit()
	}
	for i, s := range db.shards {
		p.next[i] = Micros(t)
		if err != nil {
			continue // closed: Subscribe refuses anyway
		}
		// Where the shard cannot say (a replicated site without an open replica), t stays:
		// the subscription then reports what is gone, if anything.
		if gens, err := s.Generations(); err == nil && len(gens) > 0 {
			p.next[i] = max(p.next[i], gens[0].Since)
		}
	}
	return p
}

// TailPosition returns the position right after every message that is durable now, on every
// shard: a subscription from it delivers exactly the messages stored from now on (every Store
// that returned before the call is excluded, every Store that starts after it is included).
func (db *DB) TailPosition() (Position, error) {
	exit, err := db.enter()
	if err != nil {
		return Position{}, err
	}
	defer exit()
	p := Position{next: make([]uint64, len(db.shards))}
	for i, s := range db.shards {
		if p.next[i], err = s.ReadLimit(); err != nil {
			return Position{}, fmt.Errorf("shard %d: %w", i, err)
		}
	}
	return p, nil
}

// NShards returns the number of shards the position covers (0 for the zero Position).
func (p Position) NShards() int { return len(p.next) }

// Shard returns the timestamp shard i stands at.
func (p Position) Shard(i ShardID) uint64 {
	if int(i) >= len(p.next) {
		return 0
	}
	return p.next[i]
}

// String returns the per-shard timestamps, e.g. "[1700000000000000 1700000000000123]".
func (p Position) String() string {
	var b strings.Builder
	b.WriteByte('[')
	for i, ts := range p.next {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, ts)
	}
	b.WriteByte(']')
	return b.String()
}

// MarshalBinary encodes the position (see the type's doc).
func (p Position) MarshalBinary() ([]byte, error) {
	return p.AppendBinary(nil)
}

// AppendBinary appends the encoding of p to dst. The zero Position cannot be encoded.
func (p Position) AppendBinary(dst []byte) ([]byte, error) {
	if len(p.next) < 1 || len(p.next) > MaxShards {
		return dst, fmt.Errorf("%w: %d shards", ErrInvalidPosition, len(p.next))
	}
	start := len(dst)
	dst = append(dst, positionMagic, positionVersion)
	dst = binary.AppendUvarint(dst, uint64(len(p.next)))
	for _, ts := range p.next {
		dst = binary.AppendUvarint(dst, ts)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

// UnmarshalBinary decodes what MarshalBinary wrote; anything else gives ErrInvalidPosition.
func (p *Position) UnmarshalBinary(b []byte) error {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrInvalidPosition, what) }
	if len(b) < 2+1+1+4 {
		return bad("too short")
	}
	if b[0] != positionMagic {
		return bad("not a position")
	}
	if b[1] != positionVersion {
		return bad(fmt.Sprintf("version %d", b[1]))
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return bad("checksum mismatch")
	}
	r := body[2:]
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(r)
		if n <= 0 || n > 1 && r[n-1] == 0 { // malformed, or not minimal
			return 0, false
		}
		r = r[n:]
		return v, true
	}
	n, ok := uv()
	if !ok || n < 1 || n > MaxShards || n > uint64(len(r)) {
		return bad("shard count")
	}
	next := make([]uint64, n)
	for i := range next {
		if next[i], ok = uv(); !ok {
			return bad(fmt.Sprintf("shard %d", i))
		}
	}
	if len(r) != 0 {
		return bad("trailing bytes")
	}
	p.next = next
	return nil
}

// UnmarshalPosition decodes a position; bytes that are not one give ErrInvalidPosition.
func UnmarshalPosition(b []byte) (Position, error) {
	var p Position
	err := p.UnmarshalBinary(b)
	return p, err
}
