package raftgroup

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// Proposal encoding (format version 1): one Raft entry of a shard group.
//
//	+-----+---------+----------+---------------+-------------+---------------+-------------------+---------+
//	| 'S' | version | flags    | proposer (16) | uvarint seq | uvarint floor | uvarint ifCurrent | command |
//	|     |    1    | bit0: s2 |               |             |               |                   |         |
//	+-----+---------+----------+---------------+-------------+---------------+-------------------+---------+
//
// command is shard.Command's encoding, s2-compressed when flag bit 0 is set (only when that
// saves at least an eighth: random payloads do not compress, and then the CPU is wasted).
// (proposer, seq, floor) de-duplicate retried proposals; see shard.Entry.

const (
	proposalMagic   = 'S'
	proposalVersion = 1
	flagS2          = 1
	// compressAbove: commands smaller than this are sent as they are.
	compressAbove = 512
)

// errInvalidProposal is wrapped by decode errors; a replica rejects such an entry (alike on
// every replica) instead of failing.
var errInvalidProposal = errors.New("strata: invalid proposal")

type proposal struct {
	proposer  shard.ProposerID
	seq       uint64
	floor     uint64 // set anew before each attempt
	ifCurrent stream.GenerationID
	body      []byte // the command, compressed if flags says so: done once, not per attempt
	flags     byte
}

// newProposal returns a proposal of cmd (shard.Command's encoding).
func newProposal(p shard.ProposerID, seq uint64, ifCurrent stream.GenerationID, cmd []byte) *proposal {
	prop := &proposal{proposer: p, seq: seq, ifCurrent: ifCurrent, body: cmd}
	if len(cmd) > compressAbove {
		if c := s2.Encode(nil, cmd); len(c) < len(cmd)-len(cmd)/8 {
			prop.body, prop.flags = c, flagS2
		}
	}
	return prop
}

func (p *proposal) appendBinary(dst []byte) []byte {
	dst = append(dst, proposalMagic, proposalVersion, p.flags)
	dst = append(dst, p.proposer[:]...)
	dst = binary.AppendUvarint(dst, p.seq)
	dst = binary.AppendUvarint(dst, p.floor)
	dst = binary.AppendUvarint(dst, uint64(p.ifCurrent))
	return append(dst, p.body...)
}

// decodeProposal decodes an entry into a shard entry; every error wraps errInvalidProposal.
func decodeProposal(index uint64, b []byte) (shard.Entry, error) {
	e := shard.Entry{Index: index}
	if len(b) < 3+16 || b[0] != proposalMagic || b[1] != proposalVersion || b[2]&^flagS2 != 0 {
		return e, fmt.Errorf("%w: bad header", errInvalidProposal)
	}
	flags := b[2]
	copy(e.Proposer[:], b[3:19])
	r := b[19:]
	var vals [3]uint64
	for i := range vals {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return e, fmt.Errorf("%w: header field %d", errInvalidProposal, i)
		}
		vals[i], r = v, r[n:]
	}
	if vals[2] > 1<<32-1 {
		return e, fmt.Errorf("%w: generation %d", errInvalidProposal, vals[2])
	}
	e.Seq, e.Floor, e.IfCurrent = vals[0], vals[1], stream.GenerationID(vals[2])
	if flags&flagS2 != 0 {
		n, err := s2.DecodedLen(r)
		if err != nil {
			return e, fmt.Errorf("%w: compressed length: %w", errInvalidProposal, err)
		}
		if n > maxCommandBytes {
			return e, fmt.Errorf("%w: decompressed length %d over %d", errInvalidProposal, n, maxCommandBytes)
		}
		if r, err = s2.Decode(nil, r); err != nil {
			return e, fmt.Errorf("%w: %w", errInvalidProposal, err)
		}
	}
	cmd, err := shard.DecodeCommand(r)
	if err != nil {
		return e, fmt.Errorf("%w: %w", errInvalidProposal, err)
	}
	for i, m := range cmd.Messages {
		if err := topic.ValidateName(m.Topic); err != nil {
			return e, fmt.Errorf("%w: message %d: %w", errInvalidProposal, i, err)
		}
	}
	for _, t := range cmd.Txns {
		for i, m := range t.Messages {
			if err := topic.ValidateName(m.Topic); err != nil {
				return e, fmt.Errorf("%w: txn message %d: %w", errInvalidProposal, i, err)
			}
		}
	}
	e.Cmd = cmd
	return e, nil
}

// maxCommandBytes bounds a decompressed command: dragonboat refuses entries over 64 MiB
// (ErrPayloadTooBig), and compression never makes a command shorter than a quarter, so
// larger claims are decompression bombs. A constant, so every replica decides alike.
const maxCommandBytes = 256 << 20

// Results of a shard entry, in sm.Result.Value; Data holds the first timestamp (8 bytes,
// big-endian) or the rejection's text. A stored command with Txns appends to the first
// timestamp, per Txn: uvarint(failed) | uvarint(first version) | uvarint(first timestamp).
const (
	resultStored    = 1 // Data: first timestamp [| Txn outcomes]
	resultDuplicate = 2 // Data: the original's first timestamp (0: unknown)
	resultSkipped   = 3
	resultRejected  = 4 // Data: reason byte + text
)

// Rejection reasons, so that the proposing site returns the right sentinel.
const (
	reasonOther byte = iota
	reasonCurrentGeneration
	reasonGenerationNotFound
	reasonInvalid
	reasonBadEntry
)

func encodeResult(r shard.EntryResult) (uint64, []byte) {
	switch {
	case r.Err != nil:
		reason := reasonOther
		switch {
		case errors.Is(r.Err, shard.ErrCurrentGeneration):
			reason = reasonCurrentGeneration
		case errors.Is(r.Err, shard.ErrGenerationNotFound):
			reason = reasonGenerationNotFound
		case errors.Is(r.Err, topic.ErrInvalidTopic):
			reason = reasonInvalid
		case errors.Is(r.Err, shard.ErrInvalidCommand):
			reason = reasonBadEntry
		}
		return resultRejected, append([]byte{reason}, r.Err.Error()...)
	case r.Skipped:
		return resultSkipped, nil
	case r.Duplicate:
		return resultDuplicate, binary.BigEndian.AppendUint64(nil, r.FirstTS)
	default:
		data := binary.BigEndian.AppendUint64(nil, r.FirstTS)
		for _, t := range r.Txns {
			data = binary.AppendUvarint(data, uint64(t.Failed))
			data = binary.AppendUvarint(data, t.FirstVersion)
			data = binary.AppendUvarint(data, t.FirstTS)
		}
		return resultStored, data
	}
}

// decodeResult turns an entry's result back into a first timestamp or an error.
func decodeResult(value uint64, data []byte) (firstTS uint64, txns []shard.TxnResult, skipped bool, err error) {
	switch value {
	case resultStored, resultDuplicate:
		if len(data) < 8 || value == resultDuplicate && len(data) != 8 {
			return 0, nil, false, fmt.Errorf("strata: result of %d bytes", len(data))
		}
		firstTS = binary.BigEndian.Uint64(data)
		for r := data[8:]; len(r) > 0; {
			var v [3]uint64
			for i := range v {
				x, n := binary.Uvarint(r)
				if n <= 0 {
					return 0, nil, false, fmt.Errorf("strata: result of %d bytes", len(data))
				}
				v[i], r = x, r[n:]
			}
			txns = append(txns, shard.TxnResult{Failed: int(v[0]), FirstVersion: v[1], FirstTS: v[2]})
		}
		return firstTS, txns, false, nil
	case resultSkipped:
		return 0, nil, true, nil
	case resultRejected:
		if len(data) == 0 {
			return 0, nil, false, errors.New("strata: rejected")
		}
		text := string(data[1:])
		switch data[0] {
		case reasonCurrentGeneration:
			return 0, nil, false, fmt.Errorf("%w (%s)", shard.ErrCurrentGeneration, text)
		case reasonGenerationNotFound:
			return 0, nil, false, fmt.Errorf("%w (%s)", shard.ErrGenerationNotFound, text)
		case reasonInvalid:
			return 0, nil, false, fmt.Errorf("%w (%s)", topic.ErrInvalidTopic, text)
		case reasonBadEntry:
			return 0, nil, false, fmt.Errorf("%w (%s)", shard.ErrInvalidCommand, text)
		}
		return 0, nil, false, errors.New(text)
	}
	return 0, nil, false, fmt.Errorf("strata: unknown result %d", value)
}
