package inspect

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/strata-mq/strata/ds"
)

// This file extends the Inspector to the stores of a replicated shard. A replica of a shard
// (package shard's Replica, driven by package raftgroup) keeps the shard in a Pebble of its
// own, without the shard key prefix, and two kinds of records besides the shard's (package
// shard's format, loaded and checked by shard.LoadAppliedIndex and shard.MetaCheck):
//
//	meta 'a'                   the last Raft log index applied, u64 big-endian
//	meta 'p' | proposer (16)   one de-duplication record per proposer (shard.DecodeProposerRecord)
//
// Both are written in the same batch as the entries they describe, so Check can hold them
// to each other: no proposer's last entry is after the applied index, and no proposal's first
// timestamp is after the shard's last one.

// ReplicaStore names the Pebble directory that holds one replica of one shard, for
// OpenReplicas.
type ReplicaStore struct {
	Shard ds.ShardID
	Path  string // the replica's live Pebble directory
}

// OpenReplicas opens, read-only, the stores of a replicated store's shards: one Pebble
// directory per shard, each holding one replica of that shard as package shard's Replica
// writes it (the shard's keys without a shard prefix, the applied Raft index and the
// de-duplication records). Package raftgroup's Inspect finds them in a site's directory and
// calls it; a tool that knows where the stores are may call it directly.
//
// nShards is the number of shards (1 to MaxShards); every store's Shard must be below it and
// appear once. A shard with no store is listed as not loaded: its error wraps
// ErrShardNotFound and Check reports it.
//
// The guarantees are those of Open: nothing is written to any store, and a store whose
// Pebble lock is held (a running site) fails the whole call with ErrInUse. A store that
// cannot be opened fails it too (wrapping ErrCorruption when its files are damaged). The
// manifest the Inspector reports is synthesized: this build's format version, nShards,
// PebblePerShard, no creation time.
func OpenReplicas(nShards int, stores []ReplicaStore) (*Inspector, error) {
	if nShards < 1 || nShards > ds.MaxShards {
		return nil, fmt.Errorf("%w: inspect replicas: nshards %d, want [1, %d]", ds.ErrInvalidOptions, nShards, ds.MaxShards)
	}
	plan := inspectPlan{shards: make([]inspectShardPlan, nShards)}
	for i := range plan.shards {
		plan.shards[i] = inspectShardPlan{store: -1,
			err: fmt.Errorf("%w: shard %d: no replica store of it was given (or found)", ds.ErrShardNotFound, i)}
	}
	sorted := slices.Clone(stores)
	slices.SortStableFunc(sorted, func(a, b ReplicaStore) int { return cmp.Compare(uint64(a.Shard), uint64(b.Shard)) })
	for _, st := range sorted {
		switch {
		case int(st.Shard) >= nShards:
			return nil, fmt.Errorf("%w: inspect replicas: store %s of shard %d, but nshards is %d", ds.ErrInvalidOptions, st.Path, st.Shard, nShards)
		case plan.shards[st.Shard].store >= 0:
			return nil, fmt.Errorf("%w: inspect replicas: two stores of shard %d (%s and %s)", ds.ErrInvalidOptions,
				st.Shard, plan.paths[plan.shards[st.Shard].store], st.Path)
		}
		if fi, err := os.Stat(st.Path); err != nil {
			return nil, fmt.Errorf("shard %d: replica store: %w", st.Shard, err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("shard %d: replica store %s: not a directory", st.Shard, st.Path)
		}
		plan.shards[st.Shard] = inspectShardPlan{store: len(plan.paths)}
		plan.paths = append(plan.paths, st.Path)
	}
	m := ds.Manifest{Format: ds.FormatVersion, NShards: nShards, PebblePerShard: true}
	return openInspector(m, true, plan)
}

// Replicated reports whether the Inspector reads shard replicas (OpenReplicas) rather than
// an embedded data directory.
func (in *Inspector) Replicated() bool { return in.replicated }

// AppliedIndex returns the last Raft log index applied to a replicated shard's store (0 when
// it applied none). It fails for an embedded directory, for a shard out of range or without a
// store (ErrShardNotFound), and when the applied index does not read or decode (wrapping
// ErrCorruption then; Check reports it too). A shard whose other state did not load still has
// its applied index.
func (in *Inspector) AppliedIndex(sh ds.ShardID) (uint64, error) {
	if !in.replicated {
		return 0, errors.New("strata: an embedded data directory has no applied index")
	}
	if int(sh) >= len(in.shards) {
		return 0, fmt.Errorf("%w: shard %d of %d", ds.ErrShardNotFound, sh, len(in.shards))
	}
	switch s := in.shards[sh]; {
	case s.db == nil:
		return 0, s.err
	case !s.appliedRead:
		return 0, s.appliedErr
	default:
		return s.applied, nil
	}
}
