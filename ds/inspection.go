package ds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/strata-mq/strata/shard"
)

// This file is what operators' tools (package inspect) read of a running DB beyond the
// broker's API: stream counts, generation usage, messages by filter, manifest and storage.

// StreamCount returns the number of streams of one shard-generation, as
// inspect.Inspector.StreamCount does for a stopped store.
func (db *DB) StreamCount(sh ShardID, gen GenerationID) (int, error) {
	exit, err := db.enter()
	if err != nil {
		return 0, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return 0, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	l, ok := db.shards[sh].Layout(gen)
	if !ok {
		return 0, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, sh, gen)
	}
	return l.StreamCount(), nil
}

// GenerationUsage is what a generation holds: its messages and an estimate of its bytes on
// disk.
type GenerationUsage = shard.GenerationUsage

// GenerationUsage returns what one shard-generation holds: the messages stored in it
// (counted as they are stored, kept with the generation) and Pebble's estimate of its bytes
// on disk (messages still in memtables count 0 until they are flushed). ErrShardNotFound,
// ErrGenerationNotFound for unknown ones.
func (db *DB) GenerationUsage(sh ShardID, gen GenerationID) (GenerationUsage, error) {
	exit, err := db.enter()
	if err != nil {
		return GenerationUsage{}, err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return GenerationUsage{}, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	return db.shards[sh].GenerationUsage(gen)
}

// Messages returns up to limit durable messages that match filter with a timestamp at or after
// since, ordered by shard, then timestamp (limit <= 0: no limit), as inspect.Inspector.Messages
// does for a data directory. It is for inspection (package inspect's admin handler): sessions
// read with Streams, Iterator and Next. A generation dropped while it is read is skipped.
func (db *DB) Messages(filter string, since time.Time, limit int) ([]Message, error) {
	streams, err := db.Streams(filter, since)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = int(^uint(0) >> 1)
	}
	ctx := context.Background()
	var out []Message
	for i := 0; i < len(streams) && len(out) < limit; {
		j := i
		for j < len(streams) && streams[j].Shard == streams[i].Shard && streams[j].Generation == streams[i].Generation {
			j++
		}
		var genMsgs []Message
		for _, s := range streams[i:j] {
			it, err := db.Iterator(s, filter, since)
			if err != nil {
				return out, err
			}
			for got := 0; got < limit-len(out); {
				msgs, next, err := db.Next(ctx, it, min(limit-len(out)-got, 1000))
				genMsgs = append(genMsgs, msgs...)
				got += len(msgs)
				if errors.Is(err, ErrEndOfStream) || errors.Is(err, ErrGenerationNotFound) {
					break
				}
				if err != nil {
					return out, err
				}
				if len(msgs) == 0 {
					break
				}
				it = next
			}
		}
		slices.SortStableFunc(genMsgs, func(a, b Message) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
		out = append(out, genMsgs[:min(len(genMsgs), limit-len(out))]...)
		i = j
	}
	return out, nil
}

// Manifest returns what the DB knows of its manifest: the format, the number of shards and the
// storage mode (Created is known only to ReadManifest of its directory).
func (db *DB) Manifest() Manifest {
	m := Manifest{Format: formatVersion, NShards: db.NShards()}
	if e, ok := db.backend.(*embedded); ok {
		m.PebblePerShard = e.opts.Expert.PebblePerShard
	}
	return m
}

// Storage names the DB's storage for the operator: the manifest's (Manifest.Storage) for an
// embedded DB, else what its Backend says (StorageKinder), or "backend".
func (db *DB) Storage() string {
	switch b := db.backend.(type) {
	case *embedded:
		return db.Manifest().Storage()
	case StorageKinder:
		return b.StorageKind()
	}
	return "backend"
}
