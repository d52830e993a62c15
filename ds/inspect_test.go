package ds_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
)

// TestInspectAgreesWithDB: the Inspector, which repeats package shard's meta keys, reads the
// same generations, layouts and messages as the DB that wrote them, and refuses a directory
// the DB holds.
func TestInspectAgreesWithDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := &ds.Options{NShards: 2, Durability: ds.NoSync, Expert: ds.ExpertOptions{Now: func() time.Time { return now }}}
	db, err := ds.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []string{"a", "b", "c"} {
		if _, err := db.Store(ctx, ds.Message{ClientID: c, Topic: "t/" + c, Payload: []byte(c)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.AddGeneration(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Store(ctx, ds.Message{ClientID: "a", Topic: "t/a/2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Inspect(dir); !errors.Is(err, ds.ErrInUse) {
		t.Fatalf("Inspect of an open DB: %v, want ErrInUse", err)
	}
	want, _ := db.Generations()
	var dumps []string
	for _, g := range want {
		d, err := db.DumpLayout(g.Shard, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, d)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	in, err := ds.Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	got, err := in.Generations()
	if err != nil || len(got) != len(want) {
		t.Fatalf("Generations: %v %v, want %v", got, err, want)
	}
	for i := range want {
		if got[i].Shard != want[i].Shard || got[i].Info.String() != want[i].Info.String() {
			t.Errorf("generation %d: %v, want %v", i, got[i], want[i])
		}
		if d, err := in.DumpLayout(got[i].Shard, got[i].ID); err != nil || d != dumps[i] {
			t.Errorf("DumpLayout %d: %q %v, want %q", i, d, err, dumps[i])
		}
	}
	msgs, err := in.Messages("#", time.Time{}, 0)
	if err != nil || len(msgs) != 4 {
		t.Fatalf("Messages: %d, %v", len(msgs), err)
	}
	if r := in.Check(0); !r.OK() || r.Messages != 4 {
		t.Errorf("Check: %+v", r)
	}
	if _, err := ds.Inspect(filepath.Join(dir, "nope")); err == nil {
		t.Errorf("Inspect of a missing directory succeeded")
	}
}
