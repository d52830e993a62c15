package inspect_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// buildRecordsDB writes, in dir, an embedded DB of two shards with records in shard 1 (three
// written, one of them deleted and one rewritten) and one message, and closes it.
func buildRecordsDB(t *testing.T, dir string) {
	t.Helper()
	db, err := ds.Open(dir, &ds.Options{NShards: 2, Durability: ds.NoSync, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx := context.Background()
	for _, txn := range []*ds.Txn{
		{Writes: []ds.RecordWrite{{Key: []byte("Sa"), Value: []byte("state a")}, {Key: []byte("Sb"), Value: []byte("state b")}, {Key: []byte("Qa\x00\x00\x01")}}},
		{Writes: []ds.RecordWrite{{Key: []byte("Sb"), Delete: true}, {Key: []byte("Sa"), Value: []byte("state a2")}},
			Messages: []ds.Message{{ClientID: "x", Topic: "t/x", Payload: []byte("p")}}},
	} {
		_, err := db.Update(ctx, 1, txn)
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())
}

type scanned struct {
	key, value string
	version    uint64
}

func scanAll(t *testing.T, in *inspect.Inspector, sh ds.ShardID, prefix string) ([]scanned, error) {
	t.Helper()
	var out []scanned
	err := in.ScanRecords(sh, []byte(prefix), func(k, v []byte, ver uint64) bool {
		out = append(out, scanned{string(k), string(v), ver})
		return true
	})
	return out, err
}

// TestCheckRecords: Check accepts and counts the records of an embedded directory, and the
// Inspector scans them as the DB wrote them.
func TestCheckRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	buildRecordsDB(t, dir)
	in, err := inspect.Open(dir)
	require.NoError(t, err)
	defer in.Close()
	r := in.Check(0)
	require.True(t, r.OK(), "Check: %+v, want OK with 2 records and 1 message", r)
	require.Equal(t, uint64(2), r.Records, "Check: %+v, want OK with 2 records and 1 message", r)
	require.Equal(t, uint64(1), r.Messages, "Check: %+v, want OK with 2 records and 1 message", r)
	got, err := scanAll(t, in, 1, "")
	want := []scanned{{"Qa\x00\x00\x01", "", 3}, {"Sa", "state a2", 5}}
	require.NoError(t, err, "ScanRecords: %+v %v, want %+v", got, err, want)
	require.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "ScanRecords: %+v %v, want %+v", got, err, want)
	got, err = scanAll(t, in, 1, "S")
	require.NoError(t, err, "ScanRecords prefix S: %+v %v", got, err)
	require.Len(t, got, 1, "ScanRecords prefix S: %+v %v", got, err)
	require.Equal(t, "Sa", got[0].key, "ScanRecords prefix S: %+v %v", got, err)
	got, err = scanAll(t, in, 0, "")
	require.NoError(t, err, "ScanRecords of shard 0: %+v %v", got, err)
	require.Empty(t, got, "ScanRecords of shard 0: %+v %v", got, err)
	n := 0
	err = in.ScanRecords(1, nil, func(_, _ []byte, _ uint64) bool { n++; return false })
	require.NoError(t, err, "ScanRecords stopped by f: %d calls, %v", n, err)
	require.Equal(t, 1, n, "ScanRecords stopped by f: %d calls, %v", n, err)
	_, err = scanAll(t, in, 2, "")
	require.ErrorIs(t, err, ds.ErrShardNotFound, "ScanRecords of shard 2: %v, want ErrShardNotFound", err)
}

func recordKey(prefix []byte, key string) []byte {
	return append(append(append([]byte(nil), prefix...), layout.KeyspaceMeta, 'r'), key...)
}

func versioned(v uint64, value string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, v), value...)
}

// TestCheckDamagedRecords: a record whose value cannot hold a version, or whose version is 0
// or after the shard's last record version, and a last version that is not 8 bytes, are
// problems naming the shard and the key.
func TestCheckDamagedRecords(t *testing.T) {
	prefix := layout.ShardPrefix(1)
	lastKey := append(append([]byte(nil), prefix...), layout.KeyspaceMeta, 'v')
	cases := map[string][][]byte{
		"short value":        {recordKey(prefix, "Sa"), {0, 0, 1}},
		"version 0":          {recordKey(prefix, "Sa"), versioned(0, "x")},
		"after last version": {recordKey(prefix, "Sz"), versioned(99, "x")},
		"empty key":          {recordKey(prefix, ""), versioned(1, "x")},
		"last version short": {lastKey, {0, 5}},
	}
	for name, kv := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			buildRecordsDB(t, dir)
			setKeys(t, filepath.Join(dir, "pebble"), kv...)
			in, err := inspect.Open(dir)
			require.NoError(t, err)
			defer in.Close()
			r := in.Check(0)
			require.Len(t, r.Problems, 1, "Check: %+v, want one problem", r)
			p := r.Problems[0]
			t.Log(p)
			require.ErrorIs(t, p.Err, ds.ErrCorruption, "problem %v: want ErrCorruption in shard 1 at key %x", p, kv[0])
			require.Equal(t, 1, p.Shard, "problem %v: want ErrCorruption in shard 1 at key %x", p, kv[0])
			require.Equal(t, kv[0], p.Key, "problem %v: want ErrCorruption in shard 1 at key %x", p, kv[0])
			require.Equal(t, uint64(1), r.Messages, "Check read %d messages, want 1", r.Messages)
			if name == "short value" {
				_, err := scanAll(t, in, 1, "")
				require.ErrorIs(t, err, ds.ErrCorruption, "ScanRecords over a short value: %v, want ErrCorruption naming the shard", err)
				require.Contains(t, err.Error(), "shard 1", "ScanRecords over a short value: %v, want ErrCorruption naming the shard", err)
			}
		})
	}
}

// buildReplicaRecords writes, in dir, the store of one replica of shard sh whose entries
// write records; n records, then a delete of the first.
func buildReplicaRecords(t *testing.T, dir string, sh ds.ShardID, n int) {
	t.Helper()
	p, err := pebble.Open(dir, pebbleopts.New(quietPebbleOpts))
	require.NoError(t, err)
	r, _, err := shard.OpenReplica(shard.ReplicaConfig{ID: sh, DB: p, Logger: slog.New(slog.DiscardHandler),
		Layout: layout.Params{Kind: stream.LayoutLTS}})
	require.NoError(t, err)
	var pid shard.ProposerID
	copy(pid[:], "record-proposer!")
	var entries []shard.Entry
	for i := 1; i <= n+1; i++ {
		w := shard.RecordWrite{Key: fmt.Appendf(nil, "S%d", i), Value: fmt.Appendf(nil, "v%d", i)}
		if i == n+1 {
			w = shard.RecordWrite{Key: []byte("S1"), Delete: true}
		}
		cmd := &shard.Command{Time: 1_700_000_000_000_000 + uint64(i), Txns: []*shard.Txn{{Writes: []shard.RecordWrite{w}}}}
		entries = append(entries, shard.Entry{Index: uint64(i), Proposer: pid, Seq: uint64(i), Cmd: cmd})
	}
	require.NoError(t, r.ApplyEntries(entries))
	r.Close()
	require.NoError(t, p.Close())
}

// TestCheckReplicaRecordsOfShard: the records of a replica's store (no shard prefix) check
// and scan alike; a damaged one is a problem.
func TestCheckReplicaRecordsOfShard(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r0")
	buildReplicaRecords(t, dir, 0, 3)
	open := func() *inspect.Inspector {
		in, err := inspect.OpenReplicas(1, []inspect.ReplicaStore{{Shard: 0, Path: dir}})
		require.NoError(t, err)
		return in
	}
	in := open()
	r := in.Check(0)
	require.True(t, r.OK(), "Check: %+v, want OK with 2 records", r)
	require.Equal(t, uint64(2), r.Records, "Check: %+v, want OK with 2 records", r)
	got, err := scanAll(t, in, 0, "S")
	want := []scanned{{"S2", "v2", 2}, {"S3", "v3", 3}}
	require.NoError(t, err, "ScanRecords: %+v %v, want %+v", got, err, want)
	require.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "ScanRecords: %+v %v, want %+v", got, err, want)
	in.Close()

	setKeys(t, dir, recordKey(nil, "S2"), versioned(7, "v2"))
	in = open()
	defer in.Close()
	r = in.Check(0)
	require.Len(t, r.Problems, 1, "Check of a record after the last version: %+v", r)
	require.ErrorIs(t, r.Problems[0].Err, ds.ErrCorruption, "Check of a record after the last version: %+v", r)
	require.Equal(t, recordKey(nil, "S2"), r.Problems[0].Key, "Check of a record after the last version: %+v", r)
	t.Log(r.Problems[0])
}
