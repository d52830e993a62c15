package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/stretchr/testify/require"
)

// TestDamagedBlockIsAnError: a damaged block found by a read of an open DB is an error
// wrapping ErrCorruption, not a fatal panic that takes the broker down (Pebble's default
// reaction to corruption is Logger.Fatalf); the DB stays usable for other reads and writes.
func TestDamagedBlockIsAnError(t *testing.T) {
	for _, ext := range []string{".blob", ".sst"} {
		t.Run(ext, func(t *testing.T) { testDamagedBlock(t, ext) })
	}
}

func testDamagedBlock(t *testing.T, ext string) {
	dir := t.TempDir()
	opts := &Options{NShards: 1, Retention: RetainForever, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	db, err := Open(dir, opts)
	require.NoError(t, err)
	ctx := context.Background()
	for i := range 200 {
		// 1 KiB payloads: values separated into a blob file once flushed.
		_, err := db.Store(ctx, Message{ClientID: "c", Topic: fmt.Sprintf("t/%d", i%4), Payload: bytes.Repeat([]byte{byte(i)}, 1024)})
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())
	// Move everything into sstables and blob files, then damage the middle of a blob file.
	path := filepath.Join(dir, "pebble")
	p, err := pebble.Open(path, pebbleopts.New(pebbleopts.Config{Logger: pebbleopts.SlogLogger{L: opts.Logger}}))
	require.NoError(t, err)
	require.NoError(t, p.Flush())
	require.NoError(t, p.Close())
	blobs, _ := filepath.Glob(filepath.Join(path, "*"+ext))
	require.NotEmpty(t, blobs, "no %s file after the flush", ext)
	b, err := os.ReadFile(blobs[0])
	require.NoError(t, err)
	for i := len(b)/2 - 8; i < len(b)/2+8; i++ {
		b[i] ^= 0x5a
	}
	require.NoError(t, os.WriteFile(blobs[0], b, 0o644))

	db, err = Open(dir, opts)
	if err != nil {
		// The damage may be found while the shard loads its state: an error, not a panic.
		require.True(t, IsCorruptionError(err) || errors.Is(err, ErrFailed),
			"open over a damaged %s file: %v, want a corruption error or ErrFailed", ext, err)
		return
	}
	defer db.Close()
	streams, err := db.Streams("#", time.Time{})
	require.NoError(t, err, "streams")
	require.NotEmpty(t, streams, "streams")
	var corrupt error
	for _, s := range streams {
		it, _ := db.Iterator(s, "#", time.Time{})
		for {
			msgs, next, err := db.Next(ctx, it, 1000)
			if err != nil {
				if !errors.Is(err, ErrEndOfStream) {
					corrupt = err
				}
				break
			}
			if len(msgs) == 0 {
				break
			}
			it = next
		}
	}
	require.True(t, IsCorruptionError(corrupt), "reading over a damaged blob file: %v, want an error wrapping ErrCorruption", corrupt)
	_, err = db.Store(ctx, Message{ClientID: "c", Topic: "t/new", Payload: []byte("after")})
	require.NoError(t, err, "a write after the corruption")
}
