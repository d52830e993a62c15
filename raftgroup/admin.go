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

// GroupStatus is one Raft group as this site sees it.
type GroupStatus struct {
	Group   uint64
	Shard   stream.ShardID // for shard groups
	Meta    bool
	Leader  uint64 // replica ID of the leader; 0 if unknown
	Term    uint64
	Replica uint64 // this site's replica, 0 if none runs here
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
