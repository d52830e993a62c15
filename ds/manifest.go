package ds

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/internal/fsutil"
	"github.com/strata-mq/strata/layout"
)

// manifestName is the file in a DB directory that records what must not change after creation.
const manifestName = "STRATA"

// formatVersion is the on-disk format version of a DB (manifest, keys, records). A DB of
// another version is refused.
const formatVersion = 1

// The Pebble directories of an embedded DB, named here only: one shared "pebble", or with
// Expert.PebblePerShard one "shard-NNNN" per shard.
const sharedPebbleDir = "pebble"

func shardPebbleDir(i int) string { return fmt.Sprintf("shard-%04d", i) }

// manifest is the JSON content of the STRATA file.
type manifest struct {
	Format         int    `json:"format"`
	NShards        int    `json:"nshards"`
	PebblePerShard bool   `json:"pebble_per_shard"`
	Created        string `json:"created"`
}

// readManifest returns the manifest of dir, or found == false when there is none.
func readManifest(fs vfs.FS, dir string) (m manifest, found bool, err error) {
	f, err := fs.Open(fs.PathJoin(dir, manifestName))
	if errors.Is(err, os.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return m, true, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, true, fmt.Errorf("%w: %s: %v", ErrCorruption, fs.PathJoin(dir, manifestName), err)
	}
	if m.Format != formatVersion {
		return m, true, fmt.Errorf("%w: %s: format version %d, this build reads %d",
			ErrShardMismatch, fs.PathJoin(dir, manifestName), m.Format, formatVersion)
	}
	if m.NShards < 1 || m.NShards > MaxShards {
		return m, true, fmt.Errorf("%w: %s: nshards %d", ErrCorruption, fs.PathJoin(dir, manifestName), m.NShards)
	}
	return m, true, nil
}

// writeManifest writes m atomically: a temporary file, fsynced, renamed, and the directory
// fsynced, so a crash leaves either no manifest or the whole one.
func writeManifest(fs vfs.FS, dir string, m manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(fs, fs.PathJoin(dir, manifestName), append(b, '\n'))
}

// Manifest is what the STRATA file of an embedded data directory records.
type Manifest struct {
	Format         int    // on-disk format version
	NShards        int    // fixed at creation
	PebblePerShard bool   // one Pebble instance per shard (else one shared, shard-prefixed)
	Created        string // RFC 3339, UTC
}

// ReadManifest reads the STRATA manifest of an embedded data directory without changing
// anything. A directory without one gives an error wrapping os.ErrNotExist.
func ReadManifest(dir string) (Manifest, error) {
	m, found, err := readManifest(vfs.Default, dir)
	if err != nil {
		return Manifest{}, err
	}
	if !found {
		return Manifest{}, fmt.Errorf("%s: no %s manifest, not a Strata data directory: %w", dir, manifestName, os.ErrNotExist)
	}
	return Manifest(m), nil
}

// FormatVersion is the on-disk format version this package writes and reads.
const FormatVersion = formatVersion

// Storage names the storage a manifest describes: "shared pebble" or "pebble per shard".
func (m Manifest) Storage() string {
	if m.PebblePerShard {
		return "pebble per shard"
	}
	return "shared pebble"
}

// ShardStore is where one shard of an embedded data directory lives: a Pebble directory, and
// the shard's key prefix in it (nil when the shard has the Pebble instance to itself).
type ShardStore struct {
	Path   string
	Prefix []byte
}

// Stores returns where each shard of the embedded data directory dir, whose manifest is m,
// lives, by shard ID. The directory names are this package's (one owner of the layout).
func (m Manifest) Stores(dir string) []ShardStore {
	out := make([]ShardStore, m.NShards)
	for i := range out {
		if m.PebblePerShard {
			out[i] = ShardStore{Path: filepath.Join(dir, shardPebbleDir(i))}
		} else {
			out[i] = ShardStore{Path: filepath.Join(dir, sharedPebbleDir), Prefix: layout.ShardPrefix(ShardID(i))}
		}
	}
	return out
}
