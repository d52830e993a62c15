package ds_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

var quietPebbleOpts = pebbleopts.Config{Logger: pebbleopts.SlogLogger{L: slog.New(slog.DiscardHandler)}}

// buildReplicaStore writes, in dir, the store of one replica of shard sh as a replicated site
// keeps it: n entries from one proposer (sequence i, floor i-2), each storing two messages.
// It returns the messages as "topic payload".
func buildReplicaStore(t *testing.T, dir string, sh ds.ShardID, n int) []string {
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
	copy(pid[:], fmt.Sprintf("proposer-of-%04d", sh))
	var want []string
	t0 := uint64(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixMicro())
	var entries []shard.Entry
	for i := 1; i <= n; i++ {
		cmd := &shard.Command{Time: t0 + uint64(i)*1000}
		for j := range 2 {
			m := &message.Message{ClientID: "c", Topic: fmt.Sprintf("s%d/room/%d", sh, j), Payload: []byte(fmt.Sprintf("%d-%d-%d", sh, i, j))}
			cmd.Messages = append(cmd.Messages, m)
			want = append(want, m.Topic+" "+string(m.Payload))
		}
		entries = append(entries, shard.Entry{Index: uint64(i), Proposer: pid, Seq: uint64(i), Floor: uint64(max(i-2, 0)), Cmd: cmd})
	}
	if err := r.ApplyEntries(entries); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

func messageStrings(msgs []ds.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.Topic+" "+string(m.Payload))
	}
	return out
}

// TestInspectReplicas: replica stores written by shard.Replica are read through the same
// Inspector as an embedded directory: messages, applied index, a clean Check that counts the
// replica's own records; nothing is written; a shard without a store is listed as not loaded.
func TestInspectReplicas(t *testing.T) {
	root := t.TempDir()
	dirs := []string{filepath.Join(root, "r0"), filepath.Join(root, "r1")}
	want := append(buildReplicaStore(t, dirs[0], 0, 5), buildReplicaStore(t, dirs[1], 1, 3)...)
	before := testutil.FileHashes(t, root)

	in, err := ds.InspectReplicas(2, []ds.ReplicaStore{{Shard: 1, Path: dirs[1]}, {Shard: 0, Path: dirs[0]}})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Replicated() || in.NShards() != 2 || !in.Manifest().PebblePerShard {
		t.Errorf("Replicated %v, NShards %d, manifest %+v", in.Replicated(), in.NShards(), in.Manifest())
	}
	for sh, n := range []uint64{5, 3} {
		if a, err := in.AppliedIndex(ds.ShardID(sh)); a != n || err != nil {
			t.Errorf("AppliedIndex(%d) = %d, %v; want %d", sh, a, err, n)
		}
	}
	msgs, err := in.Messages("#", time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := messageStrings(msgs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Messages:\n%q\nwant\n%q", got, want)
	}
	gens, err := in.Generations()
	if err != nil || len(gens) != 2 {
		t.Errorf("Generations: %v, %v", gens, err)
	}
	r := in.Check(0)
	// Per shard: the applied index and one proposer's record.
	if !r.OK() || r.Messages != uint64(len(want)) || r.ReplicaRecords != 4 {
		t.Errorf("Check: %+v", r)
	}
	if _, err := ds.InspectReplicas(2, []ds.ReplicaStore{{Shard: 0, Path: dirs[0]}}); !errors.Is(err, ds.ErrInUse) {
		t.Errorf("a second inspection of the same stores: %v, want ErrInUse", err)
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	if after := testutil.FileHashes(t, root); after != before {
		t.Errorf("the stores changed:\n%s\nwant\n%s", after, before)
	}

	// Shard 2 has no store: listed with an error, reported by Check.
	in, err = ds.InspectReplicas(3, []ds.ReplicaStore{{Shard: 0, Path: dirs[0]}, {Shard: 1, Path: dirs[1]}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if gens, err := in.Generations(); !errors.Is(err, ds.ErrShardNotFound) || len(gens) != 2 {
		t.Errorf("Generations with a missing shard: %v, %v", gens, err)
	}
	if _, err := in.AppliedIndex(2); !errors.Is(err, ds.ErrShardNotFound) {
		t.Errorf("AppliedIndex of the missing shard: %v", err)
	}
	if r := in.Check(0); r.OK() || len(r.Problems) != 1 || !strings.Contains(r.Problems[0].String(), "shard 2") {
		t.Errorf("Check with a missing shard: %+v", r)
	}
}

func TestInspectReplicasBadArguments(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r0")
	buildReplicaStore(t, dir, 0, 1)
	for name, tc := range map[string]struct {
		n      int
		stores []ds.ReplicaStore
	}{
		"no shards":    {0, nil},
		"too many":     {ds.MaxShards + 1, nil},
		"out of range": {1, []ds.ReplicaStore{{Shard: 1, Path: dir}}},
		"twice":        {1, []ds.ReplicaStore{{Shard: 0, Path: dir}, {Shard: 0, Path: dir}}},
	} {
		if in, err := ds.InspectReplicas(tc.n, tc.stores); !errors.Is(err, ds.ErrInvalidOptions) {
			t.Errorf("%s: %v", name, err)
			if in != nil {
				in.Close()
			}
		}
	}
	// No store at all: every shard listed as not loaded, no panic.
	in, err := ds.InspectReplicas(2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := in.Check(0); len(r.Problems) != 2 || r.Problems[0].String() != "strata: shard not found: shard 0: no replica store of it was given (or found)" {
		t.Errorf("Check without stores: %v", r.Problems)
	}
	in.Close()
	missing := filepath.Join(dir, "missing")
	if _, err := ds.InspectReplicas(1, []ds.ReplicaStore{{Shard: 0, Path: missing}}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing store: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("InspectReplicas created %s", missing)
	}
}

// rewrite sets keys of the Pebble in dir through Pebble itself, as a bug or a bad restore
// would: the checksums hold, only the library's decoders can tell.
func rewrite(t *testing.T, dir string, kvs ...[]byte) {
	t.Helper()
	p, err := pebble.Open(dir, pebbleopts.New(quietPebbleOpts))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kvs); i += 2 {
		if err := p.Set(kvs[i], kvs[i+1], pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckReplicaRecords: a damaged applied index or de-duplication record is a problem
// naming the shard, the store and the key; Check does not stop there.
func TestCheckReplicaRecords(t *testing.T) {
	proposerKey := func(id string) []byte { return append([]byte{layout.KeyspaceMeta, 'p'}, id...) }
	record := func(floor, last uint64, seqTS ...uint64) []byte {
		b := binary.AppendUvarint(binary.AppendUvarint(nil, floor), last)
		b = binary.AppendUvarint(b, uint64(len(seqTS)/2))
		for _, v := range seqTS {
			b = binary.AppendUvarint(b, v)
		}
		return b
	}
	farFuture := uint64(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro())
	cases := map[string][][]byte{
		"garbage value":         {proposerKey("garbage-proposer"), {0xff, 0xff}},
		"trailing bytes":        {proposerKey("trailing-propose"), append(record(1, 2), 7)},
		"not canonical":         {proposerKey("unsorted-propose"), record(0, 2, 9, 0, 8, 0)},
		"seq below the floor":   {proposerKey("below-the-floor!"), record(5, 2, 4, 0)},
		"after applied":         {proposerKey("after-applied-ix"), record(0, 99)},
		"timestamp after last":  {proposerKey("future-timestamp"), record(0, 2, 3, farFuture)},
		"short proposer":        {proposerKey("short"), record(0, 1)},
		"applied index 4 bytes": {{layout.KeyspaceMeta, 'a'}, {0, 0, 0, 3}},
	}
	for name, kv := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "r0")
			buildReplicaStore(t, dir, 0, 3)
			rewrite(t, dir, kv...)
			in, err := ds.InspectReplicas(1, []ds.ReplicaStore{{Shard: 0, Path: dir}})
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			r := in.Check(0)
			if r.OK() {
				t.Fatalf("Check found nothing: %+v", r)
			}
			p := r.Problems[0]
			t.Log(p)
			if !errors.Is(p.Err, ds.ErrCorruption) || p.Path != dir || !bytes.Contains(p.Key, kv[0]) && p.Shard != -1 {
				t.Errorf("problem %v: want ErrCorruption in %s at key %x", p, dir, kv[0])
			}
			if !strings.Contains(p.String(), "shard 0") {
				t.Errorf("problem %q does not name the shard", p)
			}
			if _, err := in.AppliedIndex(0); name == "applied index 4 bytes" && !errors.Is(err, ds.ErrCorruption) {
				t.Errorf("AppliedIndex: %v, want ErrCorruption", err)
			}
			if r.Messages != 6 {
				t.Errorf("Check read %d messages, want 6 (it goes on after a bad record)", r.Messages)
			}
		})
	}
}

// TestCheckEmbeddedRejectsReplicaKeys: the replica-only keys are problems in an embedded
// directory, where nothing writes them.
func TestCheckEmbeddedRejectsReplicaKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := ds.Open(dir, &ds.Options{NShards: 1, Durability: ds.NoSync, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	key := append(layout.ShardPrefix(0), layout.KeyspaceMeta, 'a')
	rewrite(t, filepath.Join(dir, "pebble"), key, make([]byte, 8))
	in, err := ds.Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := in.AppliedIndex(0); err == nil {
		t.Errorf("AppliedIndex of an embedded directory succeeded")
	}
	r := in.Check(0)
	if len(r.Problems) != 1 || !errors.Is(r.Problems[0].Err, ds.ErrCorruption) || !bytes.Equal(r.Problems[0].Key, key) ||
		r.ReplicaRecords != 0 {
		t.Fatalf("Check: %+v", r)
	}
}
