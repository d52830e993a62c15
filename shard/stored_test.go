package shard

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
)

// damagedReader is a store whose every read finds a block Pebble's checksums reject.
type damagedReader struct{ pebble.Reader }

func (damagedReader) Get(key []byte) ([]byte, io.Closer, error) {
	return nil, nil, fmt.Errorf("block checksum mismatch in 000007.sst: %w", pebble.ErrCorruption)
}

// TestLoadStoredDamagedBlock: a damaged block found while a shard's state loads is
// ErrCorruption (what ds.IsCorruptionError tells a broker), as undecodable bytes are; another
// read error is not.
func TestLoadStoredDamagedBlock(t *testing.T) {
	_, err := LoadStored(damagedReader{}, 3, nil)
	require.ErrorIs(t, err, ErrCorruption)
	require.ErrorContains(t, err, "shard 3: generation table")
	_, _, err = LoadMessageCount(damagedReader{}, nil, 1)
	require.ErrorIs(t, err, ErrCorruption)
	_, err = LoadAppliedIndex(damagedReader{}, nil)
	require.ErrorIs(t, err, ErrCorruption)
	_, err = LoadLastRecordVersion(damagedReader{}, nil)
	require.ErrorIs(t, err, ErrCorruption)

	err = readError("x", errors.New("disk on fire"))
	require.NotErrorIs(t, err, ErrCorruption)
}
