package ds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/strata-mq/strata/generation"
)

// GenerationInfo describes one generation of one shard.
type GenerationInfo struct {
	Shard ShardID
	generation.Info
}

// SinceTime returns the generation's start.
func (g GenerationInfo) SinceTime() time.Time { return Time(g.Since) }

// Generations returns the generations of every shard, by shard then ID.
func (db *DB) Generations() ([]GenerationInfo, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	var out []GenerationInfo
	for _, s := range db.shards {
		gens, err := s.Generations()
		if err != nil {
			return nil, err
		}
		for _, g := range gens {
			out = append(out, GenerationInfo{Shard: s.ID(), Info: g})
		}
	}
	return out, nil
}

// AddGeneration seals the current generation of every shard and opens a new one, as rotation
// does every GenerationSpan. Readers of the sealed generations get ErrEndOfStream once they
// have read everything.
func (db *DB) AddGeneration(ctx context.Context) error {
	exit, err := db.enter()
	if err != nil {
		return err
	}
	defer exit()
	var errs []error
	for _, s := range db.shards {
		if err := s.AddGeneration(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// DropGeneration drops a sealed generation of one shard, as retention does: one range deletion,
// after which its disk space is reclaimed in the background. Dropping the current generation
// fails with ErrCurrentGeneration, an unknown one with ErrGenerationNotFound.
func (db *DB) DropGeneration(ctx context.Context, shard ShardID, gen GenerationID) error {
	exit, err := db.enter()
	if err != nil {
		return err
	}
	defer exit()
	if int(shard) >= len(db.shards) {
		return fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, shard, len(db.shards))
	}
	return db.shards[shard].DropGeneration(ctx, gen)
}
