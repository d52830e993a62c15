package shard

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
)

// Command is one deterministic input of a shard's state machine: Apply of the same command on
// the same state writes the same bytes and assigns the same timestamps. Embedded mode applies
// commands directly; replicated mode proposes them to the shard's Raft group.
type Command struct {
	// Time is the proposal time in µs. Timestamps are max(last+1, Time), so a replica never
	// reads its own clock while applying.
	Time uint64
	// AddGeneration seals the current generation and opens a new one before anything else.
	AddGeneration bool
	// Drop lists sealed generations to drop, by one range deletion each.
	Drop []stream.GenerationID
	// Messages are stored in order into the current generation. Their topics must be valid.
	Messages []*message.Message
}

// Command encoding (format version 1), for proposing a command to a Raft group:
//
//	+-----+-------------+-----------+-------------+------------------------+------------------+
//	| 'C' | version(u8) | time(u64) | flags(u8)   | uvarint(n) | n × gen    | uvarint(m) | m ×  |
//	|     |      1      | big-end.  | bit0: add   |  (uvarint each)        | message          |
//	+-----+-------------+-----------+-------------+------------------------+------------------+
//
// message: uvarint(len(topic)) | topic | uvarint(len(record)) | record (package message).
// The encoding is canonical: DecodeCommand accepts only what AppendBinary writes.

const (
	commandMagic   = 'C'
	commandVersion = 1
	// maxCommandItems bounds the counts a decoder believes before allocating.
	maxCommandItems = 1 << 20
)

// ErrInvalidCommand is wrapped by every DecodeCommand error.
var ErrInvalidCommand = errors.New("strata: invalid command")

// AppendBinary appends the encoding of c to dst. Timestamp and Shard of the messages are not
// encoded: Apply assigns them.
func (c *Command) AppendBinary(dst []byte) []byte {
	dst = append(dst, commandMagic, commandVersion)
	dst = binary.BigEndian.AppendUint64(dst, c.Time)
	dst = append(dst, boolByte(c.AddGeneration))
	dst = binary.AppendUvarint(dst, uint64(len(c.Drop)))
	for _, g := range c.Drop {
		dst = binary.AppendUvarint(dst, uint64(g))
	}
	dst = binary.AppendUvarint(dst, uint64(len(c.Messages)))
	var rec []byte
	for _, m := range c.Messages {
		dst = binary.AppendUvarint(dst, uint64(len(m.Topic)))
		dst = append(dst, m.Topic...)
		rec = message.AppendRecord(rec[:0], m)
		dst = binary.AppendUvarint(dst, uint64(len(rec)))
		dst = append(dst, rec...)
	}
	return dst
}

// DecodeCommand decodes what AppendBinary wrote. Damaged or foreign bytes give an error wrapping
// ErrInvalidCommand, never a panic. Message topics are not validated here; Apply's caller must.
func DecodeCommand(b []byte) (*Command, error) {
	bad := func(format string, args ...any) (*Command, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidCommand}, args...)...)
	}
	if len(b) < 11 || b[0] != commandMagic || b[1] != commandVersion || b[10] > 1 {
		return bad("bad header")
	}
	c := &Command{Time: binary.BigEndian.Uint64(b[2:]), AddGeneration: b[10] == 1}
	r := b[11:]
	uv := func() (uint64, bool) {
		v, w := binary.Uvarint(r)
		if w <= 0 || w > 1 && r[w-1] == 0 {
			return 0, false
		}
		r = r[w:]
		return v, true
	}
	n, ok := uv()
	if !ok || n > maxCommandItems || n > uint64(len(r)) {
		return bad("drop count")
	}
	for range n {
		g, ok := uv()
		if !ok || g == 0 || g > 1<<32-1 {
			return bad("drop generation")
		}
		c.Drop = append(c.Drop, stream.GenerationID(g))
	}
	m, ok := uv()
	if !ok || m > maxCommandItems || m > uint64(len(r)) {
		return bad("message count")
	}
	bytesOf := func(what string) ([]byte, error) {
		l, ok := uv()
		if !ok || l > uint64(len(r)) {
			return nil, fmt.Errorf("%w: %s length", ErrInvalidCommand, what)
		}
		v := r[:l]
		r = r[l:]
		return v, nil
	}
	for i := range m {
		t, err := bytesOf("topic")
		if err != nil {
			return nil, err
		}
		rec, err := bytesOf("record")
		if err != nil {
			return nil, err
		}
		msg := &message.Message{Topic: string(t)}
		if err := message.DecodeRecord(rec, msg); err != nil {
			return bad("message %d: %v", i, err)
		}
		c.Messages = append(c.Messages, msg)
	}
	if len(r) != 0 {
		return bad("%d trailing bytes", len(r))
	}
	return c, nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
