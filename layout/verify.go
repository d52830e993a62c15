package layout

import (
	"encoding/binary"
	"fmt"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/stream"
)

// This file is the read-only check of a generation's keys and values as they are on disk, for
// operators' tools (package inspect's Check): the layouts write these bytes, so they are the
// ones that judge them. Nothing here is on the write or read path.

// KeyKind is what a key of a generation holds.
type KeyKind int

const (
	KeyData  KeyKind = iota // a message: its record is the value
	KeyIndex                // an LTS level index entry (no value)
	KeyTrie                 // an LTS trie record (decoded by Load)
)

// KeyInfo is what Verify learned of one key of a generation.
type KeyInfo struct {
	Kind   KeyKind
	Stream uint64 // the stream's key (the reference layout's one stream: 0)
	TS     uint64 // data and index keys: the message's timestamp
	// Data keys: the index keys the message needs (one per varying level of its stream);
	// index keys: the level indexed (1-based).
	IndexKeys int
	Level     uint16
	// Decoded: the key itself decoded, so Kind, Stream, TS and IndexKeys hold even when Verify
	// returns an error (about the value or the topic): the message is there, damaged.
	Decoded bool
}

// KeyGeneration returns the generation of one of a shard's data or trie keys; rest is the key
// after the shard's prefix. A key of the meta keyspace (KeyspaceMeta) is not a generation's.
func KeyGeneration(rest []byte) (stream.GenerationID, error) {
	if len(rest) < 5 || rest[0] != keyspaceData && rest[0] != keyspaceTrie {
		if len(rest) == 0 {
			return 0, fmt.Errorf("%w: empty key in the shard's range", ErrCorrupt)
		}
		return 0, fmt.Errorf("%w: unknown keyspace %q", ErrCorrupt, rest[0])
	}
	return stream.GenerationID(binary.BigEndian.Uint32(rest[1:5])), nil
}

// Verify checks one key of generation g and its value, as read from disk: the key decodes, its
// stream is one g learned, its topic is a valid name, and its message record decodes. rest is
// the key after the shard's prefix (KeyGeneration(rest) is g's ID). Errors wrap ErrCorrupt;
// with an error, KeyInfo.Decoded says whether the key itself decoded.
func Verify(g Generation, rest, value []byte) (KeyInfo, error) {
	if _, err := KeyGeneration(rest); err != nil {
		return KeyInfo{}, err
	}
	if rest[0] == keyspaceTrie {
		if len(rest) != 9 {
			return KeyInfo{}, fmt.Errorf("%w: trie key of %d bytes", ErrCorrupt, len(rest))
		}
		return KeyInfo{Kind: KeyTrie, Decoded: true}, nil
	}
	return g.verifyData(rest[5:], value)
}

func (l *reference) verifyData(body, value []byte) (KeyInfo, error) {
	if len(body) != 8 {
		return KeyInfo{}, fmt.Errorf("%w: reference data key of %d bytes", ErrCorrupt, len(body)+5)
	}
	ki := KeyInfo{Kind: KeyData, Stream: referenceKey, TS: binary.BigEndian.Uint64(body), Decoded: true}
	name, record, err := decodeReferenceValue(value)
	if err != nil {
		return ki, fmt.Errorf("%w at ts %d", err, ki.TS)
	}
	if err := topic.ValidateName(name); err != nil {
		return ki, fmt.Errorf("%w: reference value: topic: %v", ErrCorrupt, err)
	}
	var m message.Message
	if err := message.DecodeRecord(record, &m); err != nil {
		return ki, fmt.Errorf("%w: message record: %w", ErrCorrupt, err)
	}
	return ki, nil
}

func (l *lts) verifyData(body, value []byte) (KeyInfo, error) {
	if len(body) < 8+2+8 {
		return KeyInfo{}, fmt.Errorf("%w: LTS key of %d bytes", ErrCorrupt, len(body)+5)
	}
	static := binary.BigEndian.Uint64(body)
	level := binary.BigEndian.Uint16(body[8:])
	if level != 0 {
		if len(body) != 8+2+8+8 {
			return KeyInfo{}, fmt.Errorf("%w: index key of %d bytes", ErrCorrupt, len(body)+5)
		}
		ki := KeyInfo{Kind: KeyIndex, Stream: static, Level: level, TS: binary.BigEndian.Uint64(body[18:]), Decoded: true}
		n := l.trie.stream(static)
		if n == nil {
			// Not Decoded: an index entry of a stream the trie does not know indexes nothing
			// that can be counted against its messages.
			return KeyInfo{}, fmt.Errorf("%w: stream %d of generation %d is not in the learned trie", ErrCorrupt, static, l.gen)
		}
		if int(level) > len(n.pattern) || n.pattern[level-1] != "+" {
			return ki, fmt.Errorf("%w: index key for level %d, which does not vary in pattern %q", ErrCorrupt, level, joinLevels(n.pattern))
		}
		return ki, nil
	}
	// A data key: the message is there (Decoded) once its timestamp is read, whatever else is
	// damaged.
	ki := KeyInfo{Kind: KeyData, Stream: static, TS: binary.BigEndian.Uint64(body[10:]), Decoded: true}
	n := l.trie.stream(static)
	if n == nil {
		return ki, fmt.Errorf("%w: stream %d of generation %d is not in the learned trie", ErrCorrupt, static, l.gen)
	}
	for _, p := range n.pattern {
		if p == "+" {
			ki.IndexKeys++
		}
	}
	_, varying, err := decodeDataSuffix(body[10:], ki.IndexKeys, nil)
	if err != nil {
		return ki, err
	}
	levels := make([]string, len(n.pattern))
	vi := 0
	for i, p := range n.pattern {
		if p == "+" {
			levels[i] = varying[vi]
			vi++
		} else {
			levels[i] = p
		}
	}
	if err := topic.ValidateName(joinLevels(levels)); err != nil {
		return ki, fmt.Errorf("%w: topic: %v", ErrCorrupt, err)
	}
	var m message.Message
	if err := message.DecodeRecord(value, &m); err != nil {
		return ki, fmt.Errorf("%w: message record: %w", ErrCorrupt, err)
	}
	return ki, nil
}
