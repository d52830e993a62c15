package inspect_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

var quietPebbleOpts = pebbleopts.Config{Logger: pebbleopts.SlogLogger{L: slog.New(slog.DiscardHandler)}}

// buildReplicaStore writes, in dir, the store of one replica of shard sh as a replicated site
// keeps it: n entries from one proposer (sequence i, floor i-2), each storing two messages.
// It returns the messages as "topic payload".
func buildReplicaStore(t *testing.T, dir string, sh ds.ShardID, n int) []string {
	t.Helper()
	p, err := pebble.Open(dir, pebbleopts.New(quietPebbleOpts))
	require.NoError(t, err)
	r, _, err := shard.OpenReplica(shard.ReplicaConfig{ID: sh, DB: p, Logger: slog.New(slog.DiscardHandler),
		Layout: layout.Params{Kind: stream.LayoutLTS}})
	require.NoError(t, err)
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
	require.NoError(t, r.ApplyEntries(entries))
	r.Close()
	require.NoError(t, p.Close())
	return want
}

func messageStrings(msgs []ds.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.Topic+" "+string(m.Payload))
	}
	return out
}

// TestOpenReplicas: replica stores written by shard.Replica are read through the same
// Inspector as an embedded directory: messages, applied index, a clean Check that counts the
// replica's own records; nothing is written; a shard without a store is listed as not loaded.
func TestOpenReplicas(t *testing.T) {
	root := t.TempDir()
	dirs := []string{filepath.Join(root, "r0"), filepath.Join(root, "r1")}
	want := append(buildReplicaStore(t, dirs[0], 0, 5), buildReplicaStore(t, dirs[1], 1, 3)...)
	before := testutil.FileHashes(t, root)

	in, err := inspect.OpenReplicas(2, []inspect.ReplicaStore{{Shard: 1, Path: dirs[1]}, {Shard: 0, Path: dirs[0]}})
	require.NoError(t, err)
	require.True(t, in.Replicated(), "Replicated %v, NShards %d, manifest %+v", in.Replicated(), in.NShards(), in.Manifest())
	require.Equal(t, 2, in.NShards(), "Replicated %v, NShards %d, manifest %+v", in.Replicated(), in.NShards(), in.Manifest())
	require.True(t, in.Manifest().PebblePerShard, "Replicated %v, NShards %d, manifest %+v", in.Replicated(), in.NShards(), in.Manifest())
	for sh, n := range []uint64{5, 3} {
		a, err := in.AppliedIndex(ds.ShardID(sh))
		require.Equal(t, n, a, "AppliedIndex(%d) = %d, %v; want %d", sh, a, err, n)
		require.NoError(t, err, "AppliedIndex(%d) = %d, %v; want %d", sh, a, err, n)
	}
	msgs, err := in.Messages("#", time.Time{}, 0)
	require.NoError(t, err)
	got := messageStrings(msgs)
	require.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "Messages:\n%q\nwant\n%q", got, want)
	gens, err := in.Generations()
	require.NoError(t, err, "Generations: %v, %v", gens, err)
	require.Len(t, gens, 2, "Generations: %v, %v", gens, err)
	r := in.Check(0)
	// Per shard: the applied index and one proposer's record.
	require.True(t, r.OK(), "Check: %+v", r)
	require.Equal(t, uint64(len(want)), r.Messages, "Check: %+v", r)
	require.Equal(t, uint64(4), r.ReplicaRecords, "Check: %+v", r)
	_, err = inspect.OpenReplicas(2, []inspect.ReplicaStore{{Shard: 0, Path: dirs[0]}})
	require.ErrorIs(t, err, inspect.ErrInUse, "a second inspection of the same stores: %v, want ErrInUse", err)
	require.NoError(t, in.Close())
	after := testutil.FileHashes(t, root)
	require.Equal(t, before, after, "the stores changed:\n%s\nwant\n%s", after, before)

	// Shard 2 has no store: listed with an error, reported by Check.
	in, err = inspect.OpenReplicas(3, []inspect.ReplicaStore{{Shard: 0, Path: dirs[0]}, {Shard: 1, Path: dirs[1]}})
	require.NoError(t, err)
	defer in.Close()
	gens, err = in.Generations()
	require.ErrorIs(t, err, ds.ErrShardNotFound, "Generations with a missing shard: %v, %v", gens, err)
	require.Len(t, gens, 2, "Generations with a missing shard: %v, %v", gens, err)
	_, err = in.AppliedIndex(2)
	require.ErrorIs(t, err, ds.ErrShardNotFound, "AppliedIndex of the missing shard: %v", err)
	r = in.Check(0)
	require.False(t, r.OK(), "Check with a missing shard: %+v", r)
	require.Len(t, r.Problems, 1, "Check with a missing shard: %+v", r)
	require.Contains(t, r.Problems[0].String(), "shard 2", "Check with a missing shard: %+v", r)
}

func TestOpenReplicasBadArguments(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r0")
	buildReplicaStore(t, dir, 0, 1)
	for name, tc := range map[string]struct {
		n      int
		stores []inspect.ReplicaStore
	}{
		"no shards":    {0, nil},
		"too many":     {ds.MaxShards + 1, nil},
		"out of range": {1, []inspect.ReplicaStore{{Shard: 1, Path: dir}}},
		"twice":        {1, []inspect.ReplicaStore{{Shard: 0, Path: dir}, {Shard: 0, Path: dir}}},
	} {
		in, err := inspect.OpenReplicas(tc.n, tc.stores)
		if in != nil {
			in.Close()
		}
		require.ErrorIs(t, err, ds.ErrInvalidOptions, "%s: %v", name, err)
	}
	// No store at all: every shard listed as not loaded, no panic.
	in, err := inspect.OpenReplicas(2, nil)
	require.NoError(t, err)
	r := in.Check(0)
	require.Len(t, r.Problems, 2, "Check without stores: %v", r.Problems)
	require.Equal(t, "strata: shard not found: shard 0: no replica store of it was given (or found)", r.Problems[0].String(), "Check without stores: %v", r.Problems)
	in.Close()
	missing := filepath.Join(dir, "missing")
	_, err = inspect.OpenReplicas(1, []inspect.ReplicaStore{{Shard: 0, Path: missing}})
	require.ErrorIs(t, err, os.ErrNotExist, "missing store: %v", err)
	_, err = os.Stat(missing)
	require.Error(t, err, "OpenReplicas created %s", missing)
}

// setKeys sets keys of the Pebble in dir through Pebble itself, as a bug or a bad restore
// would: the checksums hold, only the library's decoders can tell.
func setKeys(t *testing.T, dir string, kvs ...[]byte) {
	t.Helper()
	p, err := pebble.Open(dir, pebbleopts.New(quietPebbleOpts))
	require.NoError(t, err)
	for i := 0; i < len(kvs); i += 2 {
		require.NoError(t, p.Set(kvs[i], kvs[i+1], pebble.Sync))
	}
	require.NoError(t, p.Close())
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
			setKeys(t, dir, kv...)
			in, err := inspect.OpenReplicas(1, []inspect.ReplicaStore{{Shard: 0, Path: dir}})
			require.NoError(t, err)
			defer in.Close()
			r := in.Check(0)
			require.False(t, r.OK(), "Check found nothing: %+v", r)
			p := r.Problems[0]
			t.Log(p)
			require.ErrorIs(t, p.Err, ds.ErrCorruption, "problem %v: want ErrCorruption in %s at key %x", p, dir, kv[0])
			require.Equal(t, dir, p.Path, "problem %v: want ErrCorruption in %s at key %x", p, dir, kv[0])
			require.False(t, !bytes.Contains(p.Key, kv[0]) && p.Shard != -1, "problem %v: want ErrCorruption in %s at key %x", p, dir, kv[0])
			require.Contains(t, p.String(), "shard 0", "problem %q does not name the shard", p)
			_, err = in.AppliedIndex(0)
			require.False(t, name == "applied index 4 bytes" && !errors.Is(err, ds.ErrCorruption), "AppliedIndex: %v, want ErrCorruption", err)
			require.Equal(t, uint64(6), r.Messages, "Check read %d messages, want 6 (it goes on after a bad record)", r.Messages)
		})
	}
}

// TestCheckEmbeddedRejectsReplicaKeys: the replica-only keys are problems in an embedded
// directory, where nothing writes them.
func TestCheckEmbeddedRejectsReplicaKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := ds.Open(dir, &ds.Options{NShards: 1, Durability: ds.NoSync, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, db.Close())
	key := append(layout.ShardPrefix(0), layout.KeyspaceMeta, 'a')
	setKeys(t, filepath.Join(dir, "pebble"), key, make([]byte, 8))
	in, err := inspect.Open(dir)
	require.NoError(t, err)
	defer in.Close()
	_, err = in.AppliedIndex(0)
	require.Error(t, err, "AppliedIndex of an embedded directory succeeded")
	r := in.Check(0)
	require.Len(t, r.Problems, 1, "Check: %+v", r)
	require.ErrorIs(t, r.Problems[0].Err, ds.ErrCorruption, "Check: %+v", r)
	require.Equal(t, key, r.Problems[0].Key, "Check: %+v", r)
	require.Zero(t, r.ReplicaRecords, "Check: %+v", r)
}
