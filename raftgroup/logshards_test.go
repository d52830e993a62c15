package raftgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestLogShardsFixedAtCreation: the number of Raft log writers a site was created with is
// recorded in its SITE file and kept across restarts whatever Config.LogShards says
// (dragonboat refuses to open its directory with another number); a SITE file written before
// the setting existed means dragonboat's 16.
func TestLogShardsFixedAtCreation(t *testing.T) {
	logShards := 4
	c := newTestCluster(t, 1, 2, func(_ int, cfg *Config) { cfg.LogShards = logShards })
	storeN(t, c.db(0), "a", 10)
	dir := c.sites[0].cfg.Dir
	f, err := readSiteFile(dir)
	require.NoError(t, err, "SITE file: %+v, %v; want log shards 4", f, err)
	require.Equal(t, 4, f.LogShards, "SITE file: %+v, %v; want log shards 4", f, err)
	require.Equal(t, 4, f.logShards(), "SITE file: %+v, %v; want log shards 4", f, err)
	c.close(0)
	logShards = 1 // ignored: the site keeps 4
	c.restart(0)
	storeN(t, c.db(0), "b", 10)
	c.close(0)

	// A directory from before LogShards was recorded: its NodeHost was created with 16.
	legacyShards := legacyLogShards
	legacy := newTestCluster(t, 1, 2, func(_ int, cfg *Config) { cfg.LogShards = legacyShards })
	storeN(t, legacy.db(0), "a", 10)
	ldir := legacy.sites[0].cfg.Dir
	legacy.close(0)
	b, err := os.ReadFile(filepath.Join(ldir, siteFileName))
	require.NoError(t, err)
	require.Contains(t, string(b), `"log_shards": 16`, "SITE file without log_shards 16:\n%s", b)
	require.NoError(t, os.WriteFile(filepath.Join(ldir, siteFileName), []byte(strings.Replace(string(b), `"log_shards": 16`, `"log_shards": 0`, 1)), 0o644))
	legacyShards = 1
	legacy.restart(0) // Config.LogShards 1, but the SITE file says nothing: opens with 16
	storeN(t, legacy.db(0), "b", 10)
}

// TestLogDBFixedAtCreation: the Raft log storage a site was created with is recorded in its
// SITE file and kept across restarts whatever Config.LogDB says (dragonboat refuses to open a
// NodeHost directory with another LogDB); a SITE file written before it was recorded means
// dragonboat's Pebble LogDB. The messages stored before each restart are read after it.
func TestLogDBFixedAtCreation(t *testing.T) {
	logDB := LogDBPebble
	c := newTestCluster(t, 1, 2, func(_ int, cfg *Config) { cfg.LogDB = logDB })
	acked := storeN(t, c.db(0), "a", 10)
	dir := c.sites[0].cfg.Dir
	f, err := readSiteFile(dir)
	require.NoError(t, err)
	require.Equal(t, LogDBPebble, f.LogDB)
	_, ok := c.sites[0].LogStats()
	require.False(t, ok, "dragonboat's LogDB keeps no counters")
	c.close(0)
	logDB = LogDBSegments // ignored: the site keeps Pebble
	c.restart(0)
	acked = append(acked, storeN(t, c.db(0), "b", 10)...)
	requireStored(t, c.db(0), acked)
	c.close(0)

	// A directory from before the LogDB was recorded: dragonboat's Pebble LogDB.
	b, err := os.ReadFile(filepath.Join(dir, siteFileName))
	require.NoError(t, err)
	require.Contains(t, string(b), `"log_db": "pebble"`)
	require.NoError(t, os.WriteFile(filepath.Join(dir, siteFileName), []byte(strings.Replace(string(b), `"log_db": "pebble"`, `"log_db": ""`, 1)), 0o644))
	c.restart(0)
	requireStored(t, c.db(0), acked)
	c.close(0)

	// A new site gets the segment log, which counts its fsyncs.
	seg := newTestCluster(t, 1, 2, nil)
	acked = storeN(t, seg.db(0), "a", 10)
	f, err = readSiteFile(seg.sites[0].cfg.Dir)
	require.NoError(t, err)
	require.Equal(t, LogDBSegments, f.LogDB)
	st, ok := seg.sites[0].LogStats()
	require.True(t, ok)
	require.Positive(t, st.Fsyncs)
	require.Positive(t, st.Entries)
	seg.close(0)
	seg.restart(0)
	requireStored(t, seg.db(0), acked)
}

// requireStored fails unless db holds every acknowledged message once.
func requireStored(t *testing.T, db *ds.DB, acked []string) {
	t.Helper()
	read, err := readAll(db)
	require.NoError(t, err)
	missing, dups := diff(acked, read)
	require.Empty(t, missing)
	require.Empty(t, dups)
}
