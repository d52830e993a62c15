package ds

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/shard"
)

// This file extends the Inspector to the stores of a replicated shard. A replica of a shard
// (package shard's Replica, driven by package raftgroup) keeps the shard in a Pebble of its
// own, without the shard key prefix, and two kinds of records besides the shard's:
//
//	meta 'a'                   the last Raft log index applied, u64 big-endian
//	meta 'p' | proposer (16)   one de-duplication record per proposer (shard.DecodeProposerRecord)
//
// Both are written in the same batch as the entries they describe, so Check can hold them
// to each other: no proposer's last entry is after the applied index, and no proposal's first
// timestamp is after the shard's last one.

// Meta keys of a replicated shard (package shard, format version 1).
var (
	inspectMetaApplied  = []byte{layout.KeyspaceMeta, 'a'}
	inspectMetaProposer = []byte{layout.KeyspaceMeta, 'p'}
)

// proposerIDLen is the length of a shard.ProposerID in a de-duplication key.
const proposerIDLen = len(shard.ProposerID{})

// ReplicaStore names the Pebble directory that holds one replica of one shard, for
// InspectReplicas.
type ReplicaStore struct {
	Shard ShardID
	Path  string // the replica's live Pebble directory
}

// InspectReplicas opens, read-only, the stores of a replicated store's shards: one Pebble
// directory per shard, each holding one replica of that shard as package shard's Replica
// writes it (the shard's keys without a shard prefix, the applied Raft index and the
// de-duplication records). Package raftgroup's Inspect finds them in a site's directory and
// calls it; a tool that knows where the stores are may call it directly.
//
// nShards is the number of shards (1 to MaxShards); every store's Shard must be below it and
// appear once. A shard with no store is listed as not loaded: its error wraps
// ErrShardNotFound and Check reports it.
//
// The guarantees are those of Inspect: nothing is written to any store, and a store whose
// Pebble lock is held (a running site) fails the whole call with ErrInUse. A store that
// cannot be opened fails it too (wrapping ErrCorruption when its files are damaged). The
// manifest the Inspector reports is synthesized: this build's format version, nShards,
// PebblePerShard, no creation time.
func InspectReplicas(nShards int, stores []ReplicaStore) (*Inspector, error) {
	if nShards < 1 || nShards > MaxShards {
		return nil, fmt.Errorf("%w: inspect replicas: nshards %d, want [1, %d]", ErrInvalidOptions, nShards, MaxShards)
	}
	plan := inspectPlan{shards: make([]inspectShardPlan, nShards)}
	for i := range plan.shards {
		plan.shards[i] = inspectShardPlan{store: -1,
			err: fmt.Errorf("%w: shard %d: no replica store of it was given (or found)", ErrShardNotFound, i)}
	}
	sorted := slices.Clone(stores)
	slices.SortStableFunc(sorted, func(a, b ReplicaStore) int { return cmp.Compare(uint64(a.Shard), uint64(b.Shard)) })
	for _, st := range sorted {
		switch {
		case int(st.Shard) >= nShards:
			return nil, fmt.Errorf("%w: inspect replicas: store %s of shard %d, but nshards is %d", ErrInvalidOptions, st.Path, st.Shard, nShards)
		case plan.shards[st.Shard].store >= 0:
			return nil, fmt.Errorf("%w: inspect replicas: two stores of shard %d (%s and %s)", ErrInvalidOptions,
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
	m := Manifest{Format: formatVersion, NShards: nShards, PebblePerShard: true}
	return openInspector(m, true, plan)
}

// Replicated reports whether the Inspector reads shard replicas (InspectReplicas) rather than
// an embedded data directory.
func (in *Inspector) Replicated() bool { return in.replicated }

// AppliedIndex returns the last Raft log index applied to a replicated shard's store (0 when
// it applied none). It fails for an embedded directory, for a shard out of range or without a
// store (ErrShardNotFound), and when the applied index does not read or decode (wrapping
// ErrCorruption then; Check reports it too). A shard whose other state did not load still has
// its applied index.
func (in *Inspector) AppliedIndex(sh ShardID) (uint64, error) {
	if !in.replicated {
		return 0, errors.New("strata: an embedded data directory has no applied index")
	}
	if int(sh) >= len(in.shards) {
		return 0, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(in.shards))
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

// loadApplied reads a replica's applied index.
func (s *inspectShard) loadApplied() (err error) {
	// Its own recovery: a panic here must become appliedErr, not load's error with the
	// applied index left at 0 and no error.
	defer recoverRead(fmt.Sprintf("shard %d applied index", s.id), &err)
	key := append(slices.Clone(s.prefix), inspectMetaApplied...)
	v, closer, err := s.db.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		s.appliedRead = true // a replica that applied nothing yet
		return nil
	case err != nil:
		return fmt.Errorf("shard %d: applied index: %w", s.id, err)
	}
	n := len(v)
	if n == 8 {
		s.applied = binary.BigEndian.Uint64(v)
	}
	closer.Close()
	if n != 8 {
		return fmt.Errorf("%w: shard %d: applied index of %d bytes", ErrCorruption, s.id, n)
	}
	s.appliedRead = true
	return nil
}

// isReplicaMetaKey reports whether rest (a meta key without the shard prefix) is one of a
// replica's own keys.
func isReplicaMetaKey(rest []byte) bool {
	return bytes.Equal(rest, inspectMetaApplied) || bytes.HasPrefix(rest, inspectMetaProposer)
}

// checkReplicaMeta checks one of a replica's own records (rest is its key without the shard
// prefix, v its value): the applied index has 8 bytes; a de-duplication record has a whole
// proposer ID in its key, a value that decodes canonically, a last index not after the
// applied index, and first timestamps not after the shard's last timestamp. In an embedded
// directory such a key is itself the problem.
func (s *inspectShard) checkReplicaMeta(rest, v []byte, r *CheckReport) error {
	if !s.replica {
		return fmt.Errorf("%w: replica-only meta key in an embedded data directory", ErrCorruption)
	}
	r.ReplicaRecords++
	if bytes.Equal(rest, inspectMetaApplied) {
		if len(v) != 8 {
			return fmt.Errorf("%w: applied index of %d bytes, want 8", ErrCorruption, len(v))
		}
		return nil
	}
	if len(rest) != len(inspectMetaProposer)+proposerIDLen {
		return fmt.Errorf("%w: de-duplication key of %d bytes, want %d", ErrCorruption, len(rest), len(inspectMetaProposer)+proposerIDLen)
	}
	p := shard.ProposerID(rest[len(inspectMetaProposer):])
	rec, err := shard.DecodeProposerRecord(v)
	if err != nil {
		return fmt.Errorf("%w: de-duplication record of proposer %s: %w", ErrCorruption, p, err)
	}
	if !s.appliedRead {
		return nil // the applied index did not load: its own key is the problem
	}
	if rec.LastIndex > s.applied {
		return fmt.Errorf("%w: de-duplication record of proposer %s: last index %d after the applied index %d",
			ErrCorruption, p, rec.LastIndex, s.applied)
	}
	if s.err == nil && s.found {
		for _, seq := range slices.Sorted(maps.Keys(rec.Applied)) {
			if ts := rec.Applied[seq]; ts > s.lastTS {
				return fmt.Errorf("%w: de-duplication record of proposer %s: sequence %d first timestamp %s after the shard's last %s",
					ErrCorruption, p, seq, generation.FormatTS(ts), generation.FormatTS(s.lastTS))
			}
		}
	}
	return nil
}
