package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/stream"
)

// TestClusterGenerations: generation add and drop are Raft entries, so every replica holds
// the same generations: an AddGeneration through one site and a DropGeneration through
// another show on all three, readers get ErrEndOfStream / ErrGenerationNotFound alike
// everywhere, a drop of the current generation is refused with ErrCurrentGeneration; and the
// sites' maintenance rotates generations (once per span, not once per site) and expires them.
func TestClusterGenerations(t *testing.T) {
	c := newTestCluster(t, 3, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acked := storeN(t, c.db(0), "g1", 20)
	if err := c.db(1).AddGeneration(ctx); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, storeN(t, c.db(2), "g2", 20)...)
	for i := range c.sites {
		eventually(t, 10*time.Second, "generations everywhere", func() error {
			gens, err := c.db(i).Generations()
			if err != nil {
				return err
			}
			if len(gens) != 4 {
				return fmt.Errorf("site %d: %d generations, want 2 per shard", i, len(gens))
			}
			return nil
		})
	}
	err := c.db(0).DropGeneration(ctx, 0, 2)
	if !errors.Is(err, ds.ErrCurrentGeneration) {
		t.Fatalf("drop of the current generation: %v", err)
	}
	if err := c.db(2).DropGeneration(ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.db(1).DropGeneration(ctx, 0, 1); !errors.Is(err, ds.ErrGenerationNotFound) {
		t.Fatalf("second drop: %v", err)
	}
	c.waitConverged(2, 10*time.Second)
	for i := range c.sites {
		gens, _ := c.db(i).Generations()
		if len(gens) != 3 || gens[0].Shard != 0 || gens[0].ID != 2 {
			t.Fatalf("site %d: generations after the drop %+v", i, gens)
		}
		// A cursor into the dropped generation is told so on every site.
		_, _, err := c.db(i).Next(ctx, ds.Iterator{Stream: ds.Stream{Shard: 0, Generation: 1, Layout: stream.LayoutLTS, Key: 1}, Filter: "#"}, 10)
		if !errors.Is(err, ds.ErrGenerationNotFound) {
			t.Fatalf("site %d: read of the dropped generation: %v", i, err)
		}
	}
	_ = acked
}

// TestClusterRotationAndRetention: with a short GenerationSpan and Retention, the shard
// leaders' maintenance adds and drops generations as Raft entries; all replicas stay
// identical and no rotation is applied twice.
func TestClusterRotationAndRetention(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(i int, cfg *Config) {
		cfg.DB.GenerationSpan, cfg.DB.Retention = 200*time.Millisecond, 400*time.Millisecond
		cfg.DB.Expert.MaintenanceInterval = 20 * time.Millisecond
	})
	w := startWriter(t, func() []*ds.DB { return []*ds.DB{c.db(0), c.db(1), c.db(2)} }, 3)
	eventually(t, 20*time.Second, "rotations and drops", func() error {
		gens, err := c.db(0).Generations()
		if err != nil {
			return err
		}
		if gens[0].ID < 4 {
			return fmt.Errorf("oldest generation %d, current %d", gens[0].ID, gens[len(gens)-1].ID)
		}
		return nil
	})
	w.finish()
	c.waitConverged(1, 10*time.Second)
	gens, _ := c.db(1).Generations()
	for i := 1; i < len(gens); i++ {
		if d := time.Duration(gens[i].Since-gens[i-1].Since) * time.Microsecond; d < 150*time.Millisecond {
			t.Errorf("generations %d and %d only %v apart: a rotation applied twice?", gens[i-1].ID, gens[i].ID, d)
		}
	}
}
