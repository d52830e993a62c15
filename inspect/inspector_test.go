package inspect_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/stretchr/testify/require"
)

// TestInspectAgreesWithDB: the Inspector, which repeats package shard's meta keys, reads the
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
