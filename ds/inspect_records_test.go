package ds_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// buildRecordsDB writes, in dir, an embedded DB of two shards with records in shard 1 (three
// written, one of them deleted and one rewritten) and one message, and closes it.
func buildRecordsDB(t *testing.T, dir string) {
	t.Helper()
	db, err := ds.Open(dir, &ds.Options{NShards: 2, Durability: ds.NoSync, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, txn := range []*ds.Txn{
		{Writes: []ds.RecordWrite{{Key: []byte("Sa"), Value: []byte("state a")}, {Key: []byte("Sb"), Value: []byte("state b")}, {Key: []byte("Qa\x00\x00\x01")}}},
		{Writes: []ds.RecordWrite{{Key: []byte("Sb"), Delete: true}, {Key: []byte("Sa"), Value: []byte("state a2")}},
			Messages: []ds.Message{{ClientID: "x", Topic: "t/x", Payload: []byte("p")}}},
	} {
		if _, err := db.Update(ctx, 1, txn); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

type scanned struct {
	key, value string
	version    uint64
}

func scanAll(t *testing.T, in *ds.Inspector, sh ds.ShardID, prefix string) ([]scanned, error) {
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
	in, err := ds.Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r := in.Check(0)
	if !r.OK() || r.Records != 2 || r.Messages != 1 {
		t.Fatalf("Check: %+v, want OK with 2 records and 1 message", r)
	}
	got, err := scanAll(t, in, 1, "")
	want := []scanned{{"Qa\x00\x00\x01", "", 3}, {"Sa", "state a2", 5}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ScanRecords: %+v %v, want %+v", got, err, want)
	}
	if got, err := scanAll(t, in, 1, "S"); err != nil || len(got) != 1 || got[0].key != "Sa" {
		t.Errorf("ScanRecords prefix S: %+v %v", got, err)
	}
	if got, err := scanAll(t, in, 0, ""); err != nil || len(got) != 0 {
		t.Errorf("ScanRecords of shard 0: %+v %v", got, err)
	}
	n := 0
	if err := in.ScanRecords(1, nil, func(_, _ []byte, _ uint64) bool { n++; return false }); err != nil || n != 1 {
		t.Errorf("ScanRecords stopped by f: %d calls, %v", n, err)
	}
	if _, err := scanAll(t, in, 2, ""); !errors.Is(err, ds.ErrShardNotFound) {
		t.Errorf("ScanRecords of shard 2: %v, want ErrShardNotFound", err)
	}
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
			rewrite(t, filepath.Join(dir, "pebble"), kv...)
			in, err := ds.Inspect(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			r := in.Check(0)
			if len(r.Problems) != 1 {
				t.Fatalf("Check: %+v, want one problem", r)
			}
			p := r.Problems[0]
			t.Log(p)
			if !errors.Is(p.Err, ds.ErrCorruption) || p.Shard != 1 || !bytes.Equal(p.Key, kv[0]) {
				t.Errorf("problem %v: want ErrCorruption in shard 1 at key %x", p, kv[0])
			}
			if r.Messages != 1 {
				t.Errorf("Check read %d messages, want 1", r.Messages)
			}
			if name == "short value" {
				if _, err := scanAll(t, in, 1, ""); !errors.Is(err, ds.ErrCorruption) || !strings.Contains(err.Error(), "shard 1") {
					t.Errorf("ScanRecords over a short value: %v, want ErrCorruption naming the shard", err)
				}
			}
		})
	}
}

// buildReplicaRecords writes, in dir, the store of one replica of shard sh whose entries
// write records; n records, then a delete of the first.
func buildReplicaRecords(t *testing.T, dir string, sh ds.ShardID, n int) {
	t.Helper()
	p, err := pebble.Open(dir, pebbleopts.New(quietPebbleOpts))
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := shard.OpenReplica(shard.ReplicaConfig{ID: sh, DB: p, Logger: slog.New(slog.DiscardHandler),
		Layout: layout.Params{Kind: stream.LayoutLTS}})
	if err != nil {
		t.Fatal(err)
	}
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
	if err := r.ApplyEntries(entries); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckReplicaRecordsOfShard: the records of a replica's store (no shard prefix) check
// and scan alike; a damaged one is a problem.
func TestCheckReplicaRecordsOfShard(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r0")
	buildReplicaRecords(t, dir, 0, 3)
	open := func() *ds.Inspector {
		in, err := ds.InspectReplicas(1, []ds.ReplicaStore{{Shard: 0, Path: dir}})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	in := open()
	r := in.Check(0)
	if !r.OK() || r.Records != 2 {
		t.Fatalf("Check: %+v, want OK with 2 records", r)
	}
	got, err := scanAll(t, in, 0, "S")
	want := []scanned{{"S2", "v2", 2}, {"S3", "v3", 3}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ScanRecords: %+v %v, want %+v", got, err, want)
	}
	in.Close()

	rewrite(t, dir, recordKey(nil, "S2"), versioned(7, "v2"))
	in = open()
	defer in.Close()
	r = in.Check(0)
	if len(r.Problems) != 1 || !errors.Is(r.Problems[0].Err, ds.ErrCorruption) || !bytes.Equal(r.Problems[0].Key, recordKey(nil, "S2")) {
		t.Fatalf("Check of a record after the last version: %+v", r)
	}
	t.Log(r.Problems[0])
}
