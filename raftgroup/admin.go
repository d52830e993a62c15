package raftgroup

import (
	"context"
	"fmt"

	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// AddSite adds a site to the cluster: id and raftAddr are those of a site started with
// Config.Join (Site.ID on it, or its SITE file). Call it on any member. It returns once the
// meta group recorded the site; its replicas are then added one membership change at a time
// and reach it by snapshot (see Transitions).
func (s *Site) AddSite(ctx context.Context, id SiteID, raftAddr string) error {
	return s.proposeMeta(ctx, &metaCmd{Op: opAddSite, ID: id, Addr: raftAddr})
}

// RemoveSite makes a site leave: its replicas are moved to the other sites (a replacement
// voter is promoted before a voter is removed), then the site holds nothing and is "left".
// Its ID and slot are never reused.
func (s *Site) RemoveSite(ctx context.Context, id SiteID) error {
	return s.proposeMeta(ctx, &metaCmd{Op: opLeave, ID: id})
}

// SetReplicationFactor changes the number of voters per shard (capped by the active sites).
func (s *Site) SetReplicationFactor(ctx context.Context, rf int) error {
	return s.proposeMeta(ctx, &metaCmd{Op: opSetRF, RF: rf})
}

// GroupStatus is one Raft group as this site sees it: its leader and this site's replica.
// Groups fills the fields up to LeaderHere (the others are left out of its JSON); Cluster (GET /v1/cluster, ds-info cluster) fills the
// rest too. cmd/ds-node's status serves the same type.
type GroupStatus struct {
	Group   uint64         `json:"group"`
	Meta    bool           `json:"meta"`
	Shard   stream.ShardID `json:"shard"`  // for shard groups
	Leader  uint64         `json:"leader"` // replica ID of the leader; 0 if unknown
	Term    uint64         `json:"term"`
	Replica uint64         `json:"replica"` // this site's replica, 0 if none runs here
	// LeaderHere: this site's replica leads the group.
	LeaderHere bool `json:"leader_here"`

	LeaderSlot int    `json:"leader_slot,omitempty"` // the site holding the leader; 0 if unknown
	Applied    uint64 `json:"applied,omitempty"`     // this site's replica's applied index (shards)
	// LastIndex is the last entry in this site's replica's Raft log (persisted; the newest
	// may not be committed yet). ApplyLag counts the store entries after Applied in that log:
	// persisted, not applied yet, possibly not committed (a leader without quorum holds
	// proposals that may be truncated later). Raft's own entries, such as a new leader's empty
	// entry, never reach the store and are not counted. dragonboat v4 exposes no live commit
	// index. A replica cut off from the leader receives no new entries: compare Applied across
	// sites for its replication lag.
	LastIndex uint64 `json:"last_index,omitempty"`
	ApplyLag  uint64 `json:"apply_lag,omitempty"`
}

// Groups returns the leader of every group as this site knows it.
func (s *Site) Groups() []GroupStatus {
	var out []GroupStatus
	groups := []uint64{metaGroup}
	for i := range s.schema.NShards {
		groups = append(groups, shardGroup(stream.ShardID(i)))
	}
	for _, g := range groups {
		gs := GroupStatus{Group: g, Meta: g == metaGroup}
		if !gs.Meta {
			gs.Shard = stream.ShardID(g - shardGroupBase)
		}
		s.mu.Lock()
		gs.Replica = s.mu.running[g]
		s.mu.Unlock()
		if l, t, ok, err := s.nh.GetLeaderID(g); err == nil && ok {
			gs.Leader, gs.Term = l, t
		}
		gs.LeaderHere = gs.Replica != 0 && gs.Leader == gs.Replica
		out = append(out, gs)
	}
	return out
}

// ReplicaDigest is a digest of this site's replica of a shard: its applied index, a SHA-256
// of every key and value (taken from one Pebble snapshot) and the key count. Replicas at the
// same applied index must have the same digest.
type ReplicaDigest struct {
	Applied uint64
	Sum     [32]byte
	Keys    int
}

// Digest returns the digest of this site's replica of shard id.
func (s *Site) Digest(id stream.ShardID) (ReplicaDigest, error) {
	sm := s.shardSM(id)
	if sm == nil {
		return ReplicaDigest{}, fmt.Errorf("%w: no replica of shard %d here", shard.ErrUnavailable, id)
	}
	d, err := sm.digest()
	return ReplicaDigest(d), err
}

// ShardGroupID returns the Raft group ID of a shard (for logs and tools).
func ShardGroupID(id stream.ShardID) uint64 { return shardGroup(id) }
