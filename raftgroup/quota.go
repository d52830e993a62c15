package raftgroup

import (
	"fmt"
	"sync"
	"time"

	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// siteQuota is StorageQuota in replicated mode: admission control at the site that receives
// a Store. A replica cannot refuse to apply a committed entry (every replica must apply the
// same log), so the quota is enforced before proposing: while this site's replica stores take
// more than the quota, Stores through this site fail with ErrQuotaExceeded and nothing is
// proposed. Every site holds the same data, so with the same quota they all refuse at about
// the same point. Generation drops and rotations are never refused (they free space). The
// Raft log is not counted: it retains up to SnapshotEntries + CompactionOverhead entries per
// group (on disk at most about twice that plus four 64 MiB segments with LogDBSegments) and
// shrinks only as writes go on, so counting it could hold the quota for ever.
type siteQuota struct {
	mu       sync.Mutex
	checked  time.Time
	exceeded bool
}

// quotaExceeded reports whether this site's replica stores are over StorageQuota, measuring
// at most every 100ms.
func (s *Site) quotaExceeded() bool {
	limit := s.cfg.DB.StorageQuota
	if limit <= 0 {
		return false
	}
	q := &s.quota
	q.mu.Lock()
	defer q.mu.Unlock()
	if time.Since(q.checked) >= 100*time.Millisecond {
		var used uint64
		for i := range s.schema.NShards {
			if sm := s.shardSM(stream.ShardID(i)); sm != nil {
				sm.withReplica(func(rs *replicaStore) error {
					used += pebbleopts.QuotaUsage(rs.db.Metrics())
					return nil
				})
			}
		}
		q.exceeded, q.checked = used > uint64(limit), time.Now()
	}
	return q.exceeded
}

// quotaError is the error of a Store refused by the quota.
func (s *Site) quotaError(sh int) error {
	return fmt.Errorf("%w (site %s, shard %d: its replica stores are over %d bytes)", shard.ErrQuotaExceeded, s.cfg.RaftAddress, sh, s.cfg.DB.StorageQuota)
}
