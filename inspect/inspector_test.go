package inspect_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/stretchr/testify/require"
)

// TestInspectAgreesWithDB: the Inspector, which reads through package shard's loaders, reads the
// same generations, layouts and messages as the DB that wrote them, and refuses a directory
// the DB holds.
func TestInspectAgreesWithDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := &ds.Options{NShards: 2, Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return now }}}
	db, err := ds.Open(dir, opts)
	require.NoError(t, err)
	ctx := context.Background()
	for _, c := range []string{"a", "b", "c"} {
		_, err := db.Store(ctx, ds.Message{ClientID: c, Topic: "t/" + c, Payload: []byte(c)})
		require.NoError(t, err)
	}
	require.NoError(t, db.AddGeneration(ctx))
	_, err = db.Store(ctx, ds.Message{ClientID: "a", Topic: "t/a/2"})
	require.NoError(t, err)
	_, err = inspect.Open(dir)
	require.ErrorIs(t, err, inspect.ErrInUse, "Inspect of an open DB: %v, want ErrInUse", err)
	want, _ := db.Generations()
	var dumps []string
	for _, g := range want {
		d, err := db.DumpLayout(g.Shard, g.ID)
		require.NoError(t, err)
		dumps = append(dumps, d)
	}
	require.NoError(t, db.Close())

	in, err := inspect.Open(dir)
	require.NoError(t, err)
	defer in.Close()
	got, err := in.Generations()
	require.NoError(t, err, "Generations: %v %v, want %v", got, err, want)
	require.Len(t, got, len(want), "Generations: %v %v, want %v", got, err, want)
	for i := range want {
		require.Equal(t, want[i].Shard, got[i].Shard, "generation %d: %v, want %v", i, got[i], want[i])
		require.Equal(t, want[i].Info.String(), got[i].Info.String(), "generation %d: %v, want %v", i, got[i], want[i])
		d, err := in.DumpLayout(got[i].Shard, got[i].ID)
		require.NoError(t, err, "DumpLayout %d: %q %v, want %q", i, d, err, dumps[i])
		require.Equal(t, dumps[i], d, "DumpLayout %d: %q %v, want %q", i, d, err, dumps[i])
	}
	msgs, err := in.Messages("#", time.Time{}, 0)
	require.NoError(t, err, "Messages: %d, %v", len(msgs), err)
	require.Len(t, msgs, 4, "Messages: %d, %v", len(msgs), err)
	r := in.Check(0)
	require.True(t, r.OK(), "Check: %+v", r)
	require.Equal(t, uint64(4), r.Messages, "Check: %+v", r)
	_, err = inspect.Open(filepath.Join(dir, "nope"))
	require.Error(t, err, "Inspect of a missing directory succeeded")
}

// TestCheckOneProblemPerDamage: a message whose key was rewritten with a timestamp outside its
// generation (a bad restore, a bug) is one problem, named for what is wrong: the message is
// still there, so neither the generation's stored count nor its stream's index keys are
// reported as well.
func TestCheckOneProblemPerDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := ds.Open(dir, &ds.Options{NShards: 1, Durability: ds.NoSync})
	require.NoError(t, err)
	for i := range 5 {
		_, err := db.Store(context.Background(), ds.Message{ClientID: "c", Topic: fmt.Sprintf("t/%d/x", i), Payload: []byte{byte(i)}})
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())

	// Shard 0's data keys: s|0x0000|'d'|gen u32|stream u64|level u16|ts u64|varying levels.
	p, err := pebble.Open(filepath.Join(dir, "pebble"), pebbleopts.New(quietPebbleOpts))
	require.NoError(t, err)
	it, err := p.NewIter(&pebble.IterOptions{LowerBound: []byte{'s', 0, 0, 'd'}, UpperBound: []byte{'s', 0, 0, 'e'}})
	require.NoError(t, err)
	var key, value []byte
	for ok := it.First(); ok; ok = it.Next() {
		if k := it.Key(); len(k) >= 26 && binary.BigEndian.Uint16(k[16:]) == 0 { // level 0: a message
			key, value = bytes.Clone(k), bytes.Clone(it.Value())
			break
		}
	}
	require.NoError(t, it.Close())
	require.NotNil(t, key, "no data key found")
	moved := bytes.Clone(key)
	binary.BigEndian.PutUint64(moved[18:], binary.BigEndian.Uint64(key[18:])+1e12) // far after the last timestamp
	require.NoError(t, p.Delete(key, pebble.Sync))
	require.NoError(t, p.Set(moved, value, pebble.Sync))
	require.NoError(t, p.Close())

	in, err := inspect.Open(dir)
	require.NoError(t, err)
	defer in.Close()
	r := in.Check(0)
	require.Len(t, r.Problems, 1, "Check: %v", r.Problems)
	require.ErrorIs(t, r.Problems[0].Err, ds.ErrCorruption)
	require.ErrorContains(t, r.Problems[0].Err, "outside generation")
	require.Equal(t, moved, r.Problems[0].Key)
	require.Equal(t, uint64(4), r.Messages, "the moved message is not counted as a good one")
}
