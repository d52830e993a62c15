package layout

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/strata-mq/strata/stream"
)

// ErrCorrupt is wrapped by every error about bytes read from disk that do not decode.
var ErrCorrupt = errors.New("layout: corrupt key or record")

// Keyspace bytes inside a shard's key prefix.
const (
	keyspaceData byte = 'd'
	keyspaceTrie byte = 't'
	// KeyspaceMeta holds the shard's own records (generation table, counters); layouts never
	// write there.
	KeyspaceMeta byte = 'm'
)

// ShardPrefix returns the key prefix of a shard that shares its Pebble instance with others.
func ShardPrefix(shard stream.ShardID) []byte {
	return []byte{'s', byte(shard >> 8), byte(shard)}
}

// genPrefix returns P | keyspace | gen.
func genPrefix(prefix []byte, keyspace byte, gen stream.GenerationID) []byte {
	k := make([]byte, 0, len(prefix)+5)
	k = append(k, prefix...)
	k = append(k, keyspace)
	return binary.BigEndian.AppendUint32(k, uint32(gen))
}

// GenerationSpans returns the key ranges [start, end) that hold all of a generation's keys.
// Dropping a generation is one range deletion per span.
func GenerationSpans(prefix []byte, gen stream.GenerationID) [][2][]byte {
	spans := make([][2][]byte, 0, 2)
	for _, ks := range []byte{keyspaceData, keyspaceTrie} {
		spans = append(spans, [2][]byte{genPrefix(prefix, ks, gen), genPrefix(prefix, ks, gen+1)})
	}
	if gen == ^stream.GenerationID(0) {
		// gen+1 wrapped; end at the next keyspace instead.
		for i := range spans {
			end := append([]byte(nil), prefix...)
			spans[i][1] = append(end, spans[i][0][len(prefix)]+1)
		}
	}
	return spans
}

// ShardSpan returns the key range [start, end) holding every key of the shard with this prefix.
func ShardSpan(prefix []byte) (start, end []byte) {
	start = append([]byte(nil), prefix...)
	return start, prefixEnd(prefix)
}

// prefixEnd returns the smallest key greater than every key with the given prefix, or nil when
// there is none (the prefix is empty or all 0xff).
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// streamKeys builds the keys of one LTS stream.
type streamKeys struct {
	base []byte // P | 'd' | gen | static
}

func newStreamKeys(prefix []byte, gen stream.GenerationID, static uint64) streamKeys {
	b := genPrefix(prefix, keyspaceData, gen)
	return streamKeys{base: binary.BigEndian.AppendUint64(b, static)}
}

// dataPrefix returns base | 0x0000.
func (s streamKeys) dataPrefix() []byte {
	return binary.BigEndian.AppendUint16(append([]byte(nil), s.base...), 0)
}

// appendDataKey appends base | 0x0000 | ts | varying levels to dst.
func (s streamKeys) appendDataKey(dst []byte, ts uint64, varying []string) []byte {
	dst = append(dst, s.base...)
	dst = binary.BigEndian.AppendUint16(dst, 0)
	dst = binary.BigEndian.AppendUint64(dst, ts)
	for _, v := range varying {
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	return dst
}

// indexPrefix returns base | level | hash.
func (s streamKeys) indexPrefix(level uint16, hash uint64) []byte {
	k := append(make([]byte, 0, len(s.base)+18), s.base...)
	k = binary.BigEndian.AppendUint16(k, level)
	return binary.BigEndian.AppendUint64(k, hash)
}

// appendIndexKey appends base | level | hash | ts to dst.
func (s streamKeys) appendIndexKey(dst []byte, level uint16, hash, ts uint64) []byte {
	dst = append(dst, s.base...)
	dst = binary.BigEndian.AppendUint16(dst, level)
	dst = binary.BigEndian.AppendUint64(dst, hash)
	return binary.BigEndian.AppendUint64(dst, ts)
}

// decodeDataSuffix splits what follows base|0x0000 in a data key into its timestamp and n varying
// levels, appended to varying. The level strings are copies.
func decodeDataSuffix(suffix []byte, n int, varying []string) (uint64, []string, error) {
	if len(suffix) < 8 {
		return 0, varying, fmt.Errorf("%w: data key suffix of %d bytes", ErrCorrupt, len(suffix))
	}
	ts := binary.BigEndian.Uint64(suffix)
	rest := suffix[8:]
	for i := 0; i < n; i++ {
		l, w := binary.Uvarint(rest)
		// A length is canonical (a multi-byte uvarint never ends in a zero byte), so one key
		// has one decoding and a damaged key is not read as another.
		if w <= 0 || w > 1 && rest[w-1] == 0 || l > uint64(len(rest)-w) {
			return 0, varying, fmt.Errorf("%w: varying level %d of data key at ts %d", ErrCorrupt, i, ts)
		}
		varying = append(varying, string(rest[w:w+int(l)]))
		rest = rest[w+int(l):]
	}
	if len(rest) != 0 {
		return 0, varying, fmt.Errorf("%w: %d trailing bytes in data key at ts %d", ErrCorrupt, len(rest), ts)
	}
	return ts, varying, nil
}

// tsAfter returns the big-endian timestamp that follows prefix in key.
func tsAfter(key []byte, prefixLen int) (uint64, error) {
	if len(key) < prefixLen+8 {
		return 0, fmt.Errorf("%w: key of %d bytes, want at least %d", ErrCorrupt, len(key), prefixLen+8)
	}
	return binary.BigEndian.Uint64(key[prefixLen:]), nil
}
