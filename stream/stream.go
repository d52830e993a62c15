// Package stream defines Stream and Iterator, the two values Strata hands to
// the broker that embeds it, and their serialised form.
//
// A shard's messages are split into generations, and a generation's messages
// into streams: the messages whose topics share one learned pattern. A Stream
// names one of them. An Iterator is a resumable cursor over a Stream. The
// broker keeps both, for instance in a durable session, and gives them back
// later: possibly after a restart, possibly to another node running a
// different build. So both serialise to bytes that are self-describing
// (magic), versioned and checksummed.
//
// # Encoding (version 1)
//
// Fixed-width integers are big-endian. Lengths are uvarints (encoding/binary)
// and must be minimal. A box drawn with '=' has variable width.
//
// Stream:
//
//	 0       1         2         4              8                16       17
//	+-------+---------+---------+--------------+----------------+--------+
//	| magic | version |  shard  |  generation  |      key       | layout | ...
//	| 0x53  |  0x01   | 2 bytes |   4 bytes    |    8 bytes     | 1 byte |
//	+-------+---------+---------+--------------+----------------+--------+
//	    +======================+-----------+
//	... |       pattern        |  CRC-32C  |
//	    | uvarint len, n bytes |  4 bytes  |
//	    +======================+-----------+
//
// Iterator:
//
//	 0       1         2
//	+-------+---------+---------------------------------------------+
//	| magic | version | shard, generation, key, layout, pattern:    | ...
//	| 0x49  |  0x01   | the same bytes as a Stream between its      |
//	|       |         | version and its CRC                         |
//	+-------+---------+---------------------------------------------+
//	    +======================+----------------+-----------+
//	... |        filter        |      next      |  CRC-32C  |
//	    | uvarint len, n bytes |    8 bytes     |  4 bytes  |
//	    +======================+----------------+-----------+
//
// The CRC-32C (Castagnoli) covers every byte before it, magic included.
//
// # Invariants
//
//   - The magic byte differs between Stream ('S', 0x53) and Iterator ('I',
//     0x49), and is covered by the checksum, so neither can be decoded as the
//     other.
//   - The version byte follows the magic so that a later format can change
//     everything after it. Decoders reject versions they do not know rather
//     than guess.
//   - Decoding verifies magic, version and checksum before it interprets a
//     single field, so that a damaged iterator is reported as ErrInvalid
//     rather than silently resuming a session from the wrong place. A CRC-32C
//     detects every single-bit error and every burst of up to 32 bits; other
//     damage, truncation included, passes it with probability about 2^-32,
//     and must then still pass the field checks below.
//   - The checksum guards against accidents, not adversaries. Every field is
//     therefore still validated after it: the layout kind must be known,
//     strings must be valid UTF-8 of at most 65535 bytes (the MQTT limit for a
//     string), lengths must fit in the input, and there must be no trailing
//     bytes. Decoding never panics and never allocates more than the input's
//     size.
//   - Canonical: marshalling accepts exactly the values unmarshalling
//     produces, and each value has one encoding. Hence anything that
//     unmarshals re-marshals to identical bytes, and anything that marshals
//     unmarshals to an equal value.
//   - The integers of a Stream are big-endian and in (shard, generation, key)
//     order right after a constant header, so if a.Less(b) then a's encoding
//     sorts before b's under bytes.Compare.
package stream

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every decode error of a Stream or Iterator, and by
// every error marshalling one that cannot be encoded.
var ErrInvalid = errors.New("invalid stream or iterator")

// ShardID identifies a shard of the store.
type ShardID uint16

// String returns the shard ID in decimal, e.g. "3".
func (id ShardID) String() string { return strconv.FormatUint(uint64(id), 10) }

// GenerationID identifies a generation within a shard.
type GenerationID uint32

// String returns the generation ID in decimal, e.g. "7".
func (id GenerationID) String() string { return strconv.FormatUint(uint64(id), 10) }

// LayoutKind is the storage layout of a generation, which decides how its
// streams are keyed.
type LayoutKind uint8

// Layout kinds. The values are stored; never renumber them. Zero is
// deliberately not a layout, so that a zero Stream is invalid.
const (
	LayoutLTS       LayoutKind = 1 // learned topic structure: one stream per learned pattern
	LayoutReference LayoutKind = 2 // reference layout: a single stream, pattern "#"
)

// Valid reports whether k is a known layout kind.
func (k LayoutKind) Valid() bool { return k == LayoutLTS || k == LayoutReference }

// String returns "lts", "reference", or "LayoutKind(n)" for an unknown kind.
func (k LayoutKind) String() string {
	switch k {
	case LayoutLTS:
		return "lts"
	case LayoutReference:
		return "reference"
	default:
		return "LayoutKind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Stream is one stream of one shard-generation: messages whose topics share
// one learned pattern.
type Stream struct {
	Shard      ShardID
	Generation GenerationID
	Layout     LayoutKind
	Key        uint64 // the stream's static key inside the shard-generation (layout-defined)
	Pattern    string // learned pattern, e.g. "sensor/+/temp" (informational; "#" for reference layout)
}

// String returns a readable form, shard/generation/layout:key(pattern), e.g.
// "3/7/lts:42(sensor/+/temp)". It is for humans and logs, not for parsing.
func (s Stream) String() string {
	return fmt.Sprintf("%s/%s/%s:%d(%s)", s.Shard, s.Generation, s.Layout, s.Key, s.Pattern)
}

// Compare orders streams by (Shard, Generation, Key), the order in which a
// reader visits them, and returns -1, 0 or +1. Layout and Pattern do not take
// part: within one shard-generation the key alone identifies a stream.
func (s Stream) Compare(o Stream) int {
	if c := cmp.Compare(s.Shard, o.Shard); c != 0 {
		return c
	}
	if c := cmp.Compare(s.Generation, o.Generation); c != 0 {
		return c
	}
	return cmp.Compare(s.Key, o.Key)
}

// Less orders streams by (Shard, Generation, Key), the read order.
func (s Stream) Less(o Stream) bool { return s.Compare(o) < 0 }

// Iterator is a resumable cursor: the next message to return is the first in
// Stream that matches Filter with Timestamp >= Next.
type Iterator struct {
	Stream Stream
	Filter string // MQTT topic filter (validated by the caller, not here: only check UTF-8 and len <= 65535)
	Next   uint64 // µs; position
}

// String returns a readable form, e.g.
// `3/7/lts:42(sensor/+/temp) filter="sensor/1/temp" next=1700000000000000`.
func (it Iterator) String() string {
	return fmt.Sprintf("%s filter=%q next=%d", it.Stream, it.Filter, it.Next)
}

const (
	magicStream   byte = 'S' // 0x53
	magicIterator byte = 'I' // 0x49
	version       byte = 1

	headerLen = 2 // magic, version
	crcLen    = 4
	// streamFixedLen is shard, generation, key and layout.
	streamFixedLen = 2 + 4 + 8 + 1
	nextLen        = 8

	// maxStringLen is the longest pattern or filter: the MQTT limit for a
	// UTF-8 string (MQTT 5 §1.5.4).
	maxStringLen = 1<<16 - 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalBinary implements encoding.BinaryMarshaler. It fails, with an error
// wrapping ErrInvalid, if the layout kind is unknown or the pattern is not
// UTF-8 or longer than 65535 bytes.
func (s Stream) MarshalBinary() ([]byte, error) {
	return s.AppendBinary(make([]byte, 0, s.encodedLen()))
}

// AppendBinary implements encoding.BinaryAppender. On error dst is returned
// unchanged.
func (s Stream) AppendBinary(dst []byte) ([]byte, error) {
	if err := s.validate(); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, magicStream, version)
	dst = s.appendBody(dst)
	return appendCRC(dst, start), nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler. It accepts only
// what MarshalBinary produces; anything else returns an error wrapping
// ErrInvalid and leaves s unchanged.
func (s *Stream) UnmarshalBinary(b []byte) error {
	body, err := open(b, magicStream)
	if err != nil {
		return err
	}
	d := decoder{b: body}
	st, err := d.stream()
	if err != nil {
		return err
	}
	if err := d.done(); err != nil {
		return err
	}
	*s = st
	return nil
}

// MarshalBinary implements encoding.BinaryMarshaler. It fails, with an error
// wrapping ErrInvalid, if the stream cannot be marshalled or the filter is not
// UTF-8 or longer than 65535 bytes.
func (it Iterator) MarshalBinary() ([]byte, error) {
	n := it.Stream.encodedLen() + uvarintLen(uint64(len(it.Filter))) + len(it.Filter) + nextLen
	return it.AppendBinary(make([]byte, 0, n))
}

// AppendBinary implements encoding.BinaryAppender. On error dst is returned
// unchanged.
func (it Iterator) AppendBinary(dst []byte) ([]byte, error) {
	if err := it.Stream.validate(); err != nil {
		return dst, err
	}
	if err := validString("filter", it.Filter); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, magicIterator, version)
	dst = it.Stream.appendBody(dst)
	dst = appendString(dst, it.Filter)
	dst = binary.BigEndian.AppendUint64(dst, it.Next)
	return appendCRC(dst, start), nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler. It accepts only
// what MarshalBinary produces; anything else returns an error wrapping
// ErrInvalid and leaves it unchanged.
func (it *Iterator) UnmarshalBinary(b []byte) error {
	body, err := open(b, magicIterator)
	if err != nil {
		return err
	}
	d := decoder{b: body}
	st, err := d.stream()
	if err != nil {
		return err
	}
	filter, err := d.string("filter")
	if err != nil {
		return err
	}
	next, ok := d.next(nextLen)
	if !ok {
		return invalid("truncated next position")
	}
	if err := d.done(); err != nil {
		return err
	}
	*it = Iterator{Stream: st, Filter: filter, Next: binary.BigEndian.Uint64(next)}
	return nil
}

// validate reports whether s can be encoded so that it decodes back.
func (s Stream) validate() error {
	if !s.Layout.Valid() {
		return invalid("unknown layout kind %d", uint8(s.Layout))
	}
	return validString("pattern", s.Pattern)
}

func validString(what, v string) error {
	if len(v) > maxStringLen {
		return invalid("%s is %d bytes, longer than %d", what, len(v), maxStringLen)
	}
	if !utf8.ValidString(v) {
		return invalid("%s is not valid UTF-8", what)
	}
	return nil
}

// encodedLen is len(s.MarshalBinary()) for a valid s.
func (s Stream) encodedLen() int {
	return headerLen + streamFixedLen + uvarintLen(uint64(len(s.Pattern))) + len(s.Pattern) + crcLen
}

// appendBody appends the fields shared by Stream and Iterator encodings.
func (s Stream) appendBody(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(s.Shard))
	dst = binary.BigEndian.AppendUint32(dst, uint32(s.Generation))
	dst = binary.BigEndian.AppendUint64(dst, s.Key)
	dst = append(dst, byte(s.Layout))
	return appendString(dst, s.Pattern)
}

func appendString(dst []byte, v string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

// appendCRC appends the CRC-32C of dst[start:], the encoding so far.
func appendCRC(dst []byte, start int) []byte {
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// open checks the header and checksum of an encoding and returns the body
// between them. Nothing in the body is trusted before this returns.
func open(b []byte, magic byte) ([]byte, error) {
	want, other := "stream", "iterator"
	if magic == magicIterator {
		want, other = other, want
	}
	if len(b) == 0 {
		return nil, invalid("empty %s encoding", want)
	}
	switch b[0] {
	case magic:
	case magicStream, magicIterator:
		return nil, invalid("decoding %s: input is an encoded %s", want, other)
	default:
		return nil, invalid("decoding %s: bad magic byte %#02x", want, b[0])
	}
	if len(b) < headerLen {
		return nil, invalid("decoding %s: truncated header", want)
	}
	if b[1] != version {
		return nil, invalid("decoding %s: unknown version %d", want, b[1])
	}
	if len(b) < headerLen+crcLen {
		return nil, invalid("decoding %s: truncated, %d bytes", want, len(b))
	}
	end := len(b) - crcLen
	stored := binary.BigEndian.Uint32(b[end:])
	if sum := crc32.Checksum(b[:end], castagnoli); sum != stored {
		return nil, invalid("decoding %s: checksum mismatch: stored %#08x, computed %#08x", want, stored, sum)
	}
	return b[headerLen:end], nil
}

// decoder consumes a checksummed body from the front. It never panics.
type decoder struct {
	b []byte
}

func (d *decoder) next(n int) ([]byte, bool) {
	if n > len(d.b) {
		return nil, false
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b, true
}

func (d *decoder) stream() (Stream, error) {
	f, ok := d.next(streamFixedLen)
	if !ok {
		return Stream{}, invalid("truncated stream fields")
	}
	s := Stream{
		Shard:      ShardID(binary.BigEndian.Uint16(f[0:2])),
		Generation: GenerationID(binary.BigEndian.Uint32(f[2:6])),
		Key:        binary.BigEndian.Uint64(f[6:14]),
		Layout:     LayoutKind(f[14]),
	}
	if !s.Layout.Valid() {
		return Stream{}, invalid("unknown layout kind %d", f[14])
	}
	var err error
	if s.Pattern, err = d.string("pattern"); err != nil {
		return Stream{}, err
	}
	return s, nil
}

// string reads a length-prefixed UTF-8 string and copies it out of the input.
func (d *decoder) string(what string) (string, error) {
	n, k := binary.Uvarint(d.b)
	switch {
	case k == 0:
		return "", invalid("truncated %s length", what)
	case k < 0:
		return "", invalid("%s length overflows 64 bits", what)
	case k != uvarintLen(n):
		// Accepting a non-minimal length would give one value two
		// encodings.
		return "", invalid("non-minimal %s length", what)
	}
	d.b = d.b[k:]
	// Compare as uint64 before converting: a corrupted length must neither
	// wrap negative nor drive an allocation.
	if n > maxStringLen {
		return "", invalid("%s length %d exceeds %d", what, n, maxStringLen)
	}
	b, ok := d.next(int(n))
	if !ok {
		return "", invalid("%s length %d exceeds remaining %d bytes", what, n, len(d.b))
	}
	if !utf8.Valid(b) {
		return "", invalid("%s is not valid UTF-8", what)
	}
	return string(b), nil
}

func (d *decoder) done() error {
	if len(d.b) != 0 {
		return invalid("%d trailing bytes", len(d.b))
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// uvarintLen returns the length of the minimal uvarint encoding of v.
func uvarintLen(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}
