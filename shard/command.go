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
	// Txns are applied after Messages, in order, each only if its conditions hold (record.go).
	Txns []*Txn
}

// Command encoding (format version 1), for proposing a command to a Raft group:
//
//	+-----+-------------+-----------+-------------+------------------------+------------------+
//	| 'C' | version(u8) | time(u64) | flags(u8)   | uvarint(n) | n × gen    | uvarint(m) | m ×  |
//	|     |      1      | big-end.  | bit0: add   |  (uvarint each)        | message          |
//	+-----+-------------+-----------+-------------+------------------------+------------------+
//
// message: uvarint(len(topic)) | topic | uvarint(len(record)) | record (package message).
//
// Version 2 (written when the command has Txns) appends uvarint(t) and t × txn:
//
//	txn:   uvarint(c) | c × (bytes(key) | uvarint(version))
//	       uvarint(w) | w × (flags(u8) bit0: delete | bytes(key) | bytes(value))
//	       uvarint(m) | m × message
//
// where bytes(x) is uvarint(len(x)) | x. The encoding is canonical: DecodeCommand accepts only
// what AppendBinary writes (a command without Txns is always version 1).

const (
	commandMagic   = 'C'
	commandVersion = 1
	txnVersion     = 2 // a command with Txns
	// maxCommandItems bounds the counts a decoder believes before allocating.
	maxCommandItems = 1 << 20
)

// ErrInvalidCommand is wrapped by every DecodeCommand error.
var ErrInvalidCommand = errors.New("strata: invalid command")

// AppendBinary appends the encoding of c to dst. Timestamp and Shard of the messages are not
// encoded: Apply assigns them.
func (c *Command) AppendBinary(dst []byte) []byte {
	version := byte(commandVersion)
	if len(c.Txns) > 0 {
		version = txnVersion
	}
	dst = append(dst, commandMagic, version)
	dst = binary.BigEndian.AppendUint64(dst, c.Time)
	dst = append(dst, boolByte(c.AddGeneration))
	dst = binary.AppendUvarint(dst, uint64(len(c.Drop)))
	for _, g := range c.Drop {
		dst = binary.AppendUvarint(dst, uint64(g))
	}
	var rec []byte
	dst, rec = appendMessages(dst, rec, c.Messages)
	if len(c.Txns) == 0 {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(len(c.Txns)))
	for _, t := range c.Txns {
		dst = binary.AppendUvarint(dst, uint64(len(t.Conds)))
		for _, cd := range t.Conds {
			dst = appendBytes(dst, cd.Key)
			dst = binary.AppendUvarint(dst, cd.Version)
		}
		dst = binary.AppendUvarint(dst, uint64(len(t.Writes)))
		for _, w := range t.Writes {
			dst = append(dst, boolByte(w.Delete))
			dst = appendBytes(dst, w.Key)
			dst = appendBytes(dst, w.Value)
		}
		dst, rec = appendMessages(dst, rec, t.Messages)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

func appendMessages(dst, rec []byte, msgs []*message.Message) ([]byte, []byte) {
	dst = binary.AppendUvarint(dst, uint64(len(msgs)))
	for _, m := range msgs {
		dst = appendBytes(dst, []byte(m.Topic))
		rec = message.AppendRecord(rec[:0], m)
		dst = appendBytes(dst, rec)
	}
	return dst, rec
}

// DecodeCommand decodes what AppendBinary wrote. Damaged or foreign bytes give an error wrapping
// ErrInvalidCommand, never a panic. Message topics are not validated here; Apply's caller must.
func DecodeCommand(b []byte) (*Command, error) {
	bad := func(format string, args ...any) (*Command, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidCommand}, args...)...)
	}
	if len(b) < 11 || b[0] != commandMagic || b[1] != commandVersion && b[1] != txnVersion || b[10] > 1 {
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
	bytesOf := func(what string) ([]byte, error) {
		l, ok := uv()
		if !ok || l > uint64(len(r)) {
			return nil, fmt.Errorf("%w: %s length", ErrInvalidCommand, what)
		}
		v := r[:l]
		r = r[l:]
		return v, nil
	}
	count := func(what string) (uint64, error) {
		n, ok := uv()
		if !ok || n > maxCommandItems || n > uint64(len(r)) {
			return 0, fmt.Errorf("%w: %s count", ErrInvalidCommand, what)
		}
		return n, nil
	}
	messages := func() ([]*message.Message, error) {
		m, err := count("message")
		if err != nil {
			return nil, err
		}
		var out []*message.Message
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
				return nil, fmt.Errorf("%w: message %d: %v", ErrInvalidCommand, i, err)
			}
			out = append(out, msg)
		}
		return out, nil
	}
	var err error
	if c.Messages, err = messages(); err != nil {
		return nil, err
	}
	if b[1] == txnVersion {
		nt, err := count("txn")
		if err != nil || nt == 0 {
			return bad("txn count")
		}
		for range nt {
			t := &Txn{}
			c.Txns = append(c.Txns, t)
			nc, err := count("condition")
			if err != nil {
				return nil, err
			}
			for range nc {
				k, err := bytesOf("condition key")
				if err != nil {
					return nil, err
				}
				v, ok := uv()
				if !ok {
					return bad("condition version")
				}
				t.Conds = append(t.Conds, Cond{Key: k, Version: v})
			}
			nw, err := count("write")
			if err != nil {
				return nil, err
			}
			for range nw {
				if len(r) == 0 || r[0] > 1 {
					return bad("write flags")
				}
				w := RecordWrite{Delete: r[0] == 1}
				r = r[1:]
				if w.Key, err = bytesOf("record key"); err != nil {
					return nil, err
				}
				if w.Value, err = bytesOf("record value"); err != nil {
					return nil, err
				}
				if len(w.Value) == 0 {
					w.Value = nil
				}
				t.Writes = append(t.Writes, w)
			}
			if t.Messages, err = messages(); err != nil {
				return nil, err
			}
			if err := t.validate(); err != nil {
				return nil, err
			}
		}
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
