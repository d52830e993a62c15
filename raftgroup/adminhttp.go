package raftgroup

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/stream"
)

// ClusterView is the cluster as one site sees it: GET /v1/cluster of Site.AdminHandler, and
// what `ds-info cluster` prints.
type ClusterView struct {
	Site        SiteID `json:"site"`
	RaftAddress string `json:"raft_address"`
	// MetaFresh: the site table and replicas were read through the meta group's leader; when
	// false (no meta quorum) they are this site's local, possibly stale, copy.
	MetaFresh bool `json:"meta_fresh"`
	// Placement is where shard replicas live (the schema's; "" before the schema is known).
	Placement Placement     `json:"placement,omitempty"`
	Sites     []SiteView    `json:"sites"`
	Groups    []GroupStatus `json:"groups"`
	Replicas  []ReplicaView `json:"replicas"`
}

// SiteView is one site with whether this site reaches it now.
type SiteView struct {
	SiteInfo
	// Reachable: a TCP connection to its Raft address was accepted within 500ms just now
	// (a liveness hint from this site's side of the network, not a Raft health check).
	Reachable bool `json:"reachable"`
	// Health is HealthUp, HealthDown, HealthLost or HealthLeft; DownSince is when this site
	// started failing to reach it (Raft transport or probe), counted since this site started.
	Health    Health     `json:"health"`
	DownSince *time.Time `json:"down_since,omitempty"`
	// ShardReplicas counts the shard replicas placed on the site (to be removed excluded).
	ShardReplicas int `json:"shard_replicas"`
}

// ReplicaView is one replica record with the transition still to be made to it.
type ReplicaView struct {
	ReplicaInfo
	Transition string `json:"transition,omitempty"` // adding, promoting, removing, or ""
}

// Cluster returns the cluster as this site sees it.
func (s *Site) Cluster(ctx context.Context) ClusterView {
	v := ClusterView{Site: s.file.ID, RaftAddress: s.cfg.RaftAddress}
	st, err := s.Meta(ctx)
	if err == nil {
		v.MetaFresh = true
	} else if st, err = s.localMeta(); err != nil {
		st = &MetaState{}
	}
	v.Sites = make([]SiteView, len(st.Sites))
	var wg sync.WaitGroup
	for i, si := range st.Sites {
		v.Sites[i].SiteInfo = si
		if si.State == SiteLeft {
			continue
		}
		if si.ID == s.file.ID {
			v.Sites[i].Reachable = true
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.Sites[i].Reachable = probe(ctx, si.Addr, 500*time.Millisecond)
		}()
	}
	wg.Wait()
	for i := range v.Sites {
		v.Sites[i].Health, v.Sites[i].DownSince = s.health.health(v.Sites[i].SiteInfo, v.Sites[i].Reachable, s.cfg.LostAfter)
	}
	if st.Schema != nil {
		v.Placement = st.Schema.Placement
		if v.Placement == "" {
			v.Placement = PlacementEverySite
		}
	}
	for _, r := range st.Replicas {
		v.Replicas = append(v.Replicas, ReplicaView{ReplicaInfo: r, Transition: r.Transition()})
		if r.Group != metaGroup && !r.Remove && r.Slot >= 1 && r.Slot <= len(v.Sites) {
			v.Sites[r.Slot-1].ShardReplicas++
		}
	}
	for _, g := range s.Groups() {
		gv := g
		for _, r := range st.GroupReplicas(g.Group) {
			if r.ReplicaID == g.Leader {
				gv.LeaderSlot = r.Slot
			}
		}
		gv.LastIndex, _ = s.lastIndex(g.Group)
		if !g.Meta {
			gv.Applied, _ = s.appliedIndex(g.Shard)
			gv.ApplyLag, _ = s.applyLag(g.Group, gv.Applied)
		}
		v.Groups = append(v.Groups, gv)
	}
	return v
}

// AdminHandler returns the operator's view of this site, for the broker to mount: everything
// inspect.Handler serves for the site's DB (its /metrics with the site's Collector), plus
//
//	GET /v1/cluster   ClusterView as JSON: sites with their health, every group's leader and
//	                  term, this site's replicas with applied and last log indexes, replica
//	                  transitions in progress
//
// opts are passed to inspect.Handler (e.g. inspect.WithCollectors for a session Store's
// metrics, inspect.WithPayloads).
func (s *Site) AdminHandler(opts ...inspect.Option) (http.Handler, error) {
	db, err := s.DB()
	if err != nil {
		return nil, err
	}
	inner := inspect.Handler(db, append([]inspect.Option{inspect.WithCollectors(s.Collector())}, opts...)...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		inspect.WriteJSON(w, http.StatusOK, s.Cluster(ctx))
	})
	mux.Handle("/", inner)
	return mux, nil
}

// appliedIndex returns the applied index of this site's replica of shard, if one runs.
func (s *Site) appliedIndex(shard stream.ShardID) (uint64, bool) {
	sm := s.shardSM(shard)
	if sm == nil {
		return 0, false
	}
	var v uint64
	err := sm.withReplica(func(rs *replicaStore) error { v = rs.r.AppliedIndex(); return nil })
	return v, err == nil
}

// lastIndex returns the index of the last entry in this site's replica's Raft log of group.
// (The log reader's NodeState would give the commit index, but dragonboat sets it only when
// the replica starts.)
func (s *Site) lastIndex(group uint64) (uint64, bool) {
	lr, err := s.nh.GetLogReader(group)
	if err != nil {
		return 0, false
	}
	_, last := lr.GetRange()
	return last, true
}

// applyLag counts the entries after applied in this site's replica's Raft log of group that
// its state machine has still to apply. Raft's own entries (an elected leader's empty entry,
// membership changes) never reach the state machine and are not counted: last index −
// applied would stay above 0 on an idle shard. Entries persisted but not committed yet count
// (dragonboat v4 has no live commit index to tell them apart). Beyond 256 KiB of waiting
// entries the rest are counted without being read: the read holds the log reader's lock,
// which the replica's appends take too.
func (s *Site) applyLag(group, applied uint64) (uint64, bool) {
	lr, err := s.nh.GetLogReader(group)
	if err != nil {
		return 0, false
	}
	first, last := lr.GetRange()
	lo := max(applied+1, first)
	if last < lo {
		return 0, true
	}
	ents, err := lr.Entries(lo, last+1, 256<<10)
	if err != nil {
		return last - applied, true // compacted meanwhile: the upper bound
	}
	n := last + 1 - lo - uint64(len(ents)) // not read
	for i := range ents {
		if ents[i].IsUpdateEntry() {
			n++
		}
	}
	return n, true
}
