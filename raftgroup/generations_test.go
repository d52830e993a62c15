package raftgroup

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, c.db(1).AddGeneration(ctx))
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
	require.ErrorIs(t, err, ds.ErrCurrentGeneration, "drop of the current generation: %v", err)
	require.NoError(t, c.db(2).DropGeneration(ctx, 0, 1))
	err = c.db(1).DropGeneration(ctx, 0, 1)
	require.ErrorIs(t, err, ds.ErrGenerationNotFound, "second drop: %v", err)
	c.waitConverged(2, 10*time.Second)
	for i := range c.sites {
		gens, _ := c.db(i).Generations()
		require.Len(t, gens, 3, "site %d: generations after the drop %+v", i, gens)
		require.Equal(t, stream.ShardID(0), gens[0].Shard, "site %d: generations after the drop %+v", i, gens)
		require.Equal(t, stream.GenerationID(2), gens[0].ID, "site %d: generations after the drop %+v", i, gens)
		// A cursor into the dropped generation is told so on every site.
		_, _, err := c.db(i).Next(ctx, ds.Iterator{Stream: ds.Stream{Shard: 0, Generation: 1, Layout: stream.LayoutLTS, Key: 1}, Filter: "#"}, 10)
		require.ErrorIs(t, err, ds.ErrGenerationNotFound, "site %d: read of the dropped generation: %v", i, err)
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
		d := time.Duration(gens[i].Since-gens[i-1].Since) * time.Microsecond
		require.GreaterOrEqual(t, d, 150*time.Millisecond, "generations %d and %d only %v apart: a rotation applied twice?", gens[i-1].ID, gens[i].ID, d)
	}
}

// TestProposerStages: a replicated site's proposers report where their messages' latency went
// (shard.Stage*): the Raft round as the commit stage, no separate sync stage.
func TestProposerStages(t *testing.T) {
	c := newTestCluster(t, 3, 2, nil)
	storeN(t, c.db(0), "s", 20)
	m, err := c.db(0).Metrics()
	require.NoError(t, err)
	tot := m.Totals()
	require.GreaterOrEqual(t, tot.Messages, uint64(20), "messages proposed through site 0")
	require.Positive(t, tot.Stages[shard.StageCommit], "the Raft rounds: %v", tot.Stages)
	require.Zero(t, tot.Stages[shard.StageSync], "no separate sync stage on a replicated site")
	per := tot.StagesPerMessage()
	require.Less(t, per[shard.StageApply], per[shard.StageCommit], "building an entry is quicker than its Raft round: %v", per)
}
