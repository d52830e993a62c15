package layout

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeDataSuffix: whatever bytes follow a stream's data prefix (a damaged key on disk),
// decoding never panics; it fails with ErrCorrupt or returns exactly n levels that re-encode
// to the same bytes.
func FuzzDecodeDataSuffix(f *testing.F) {
	keys := streamKeys{}
	f.Add(keys.appendDataKey(nil, 42, []string{"a", "", "ccc"})[2:], 3)
	f.Add(binary.BigEndian.AppendUint64(nil, 7), 0)
	f.Add([]byte{1, 2, 3}, 1)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 7, 0x80, 0x00}, 1) // non-minimal length
	f.Add(append(binary.BigEndian.AppendUint64(nil, 7), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), 1)
	f.Fuzz(func(t *testing.T, suffix []byte, n int) {
		if n < 0 || n > 64 {
			return
		}
		ts, varying, err := decodeDataSuffix(suffix, n, nil)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.Len(t, varying, n, "levels")
		again := keys.appendDataKey(nil, ts, varying)[2:] // base is empty; skip the 0x0000
		require.Equal(t, string(suffix), string(again), "re-encoded %x, decoded from %x", again, suffix)
	})
}
