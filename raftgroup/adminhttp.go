package raftgroup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/stream"
)

// ClusterView is the cluster as one site sees it: GET /v1/cluster of Site.AdminHandler, and
// what `ds-info cluster` prints.
type ClusterView struct {
	Site        SiteID `json:"site"`
	RaftAddress string `json:"raft_address"`
	// MetaFresh: the site table and replicas were read through the meta group's leader; when
	// false (no meta quorum) they are this site's local, possibly stale, copy.
	MetaFresh bool          `json:"meta_fresh"`
	Sites     []SiteView    `json:"sites"`
	Groups    []GroupView   `json:"groups"`
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
}

// GroupView is one Raft group: its leader as this site knows it, and this site's replica.
type GroupView struct {
	Group      uint64         `json:"group"`
	Meta       bool           `json:"meta"`
	Shard      stream.ShardID `json:"shard"`
	Leader     uint64         `json:"leader"`      // replica ID; 0 if none known
	LeaderSlot int            `json:"leader_slot"` // the site holding it; 0 if unknown
	Term       uint64         `json:"term"`
	Replica    uint64         `json:"replica"` // this site's replica, 0 if none runs here
	Applied    uint64         `json:"applied"` // this site's replica's applied index (shards)
	// LastIndex is the last entry in this site's replica's Raft log (persisted; the newest
	// may not be committed yet). ApplyLag counts the store entries after Applied in that log:
	// persisted, not applied yet, possibly not committed (a leader without quorum holds
	// proposals that may be truncated later). Raft's own entries, such as a new leader's empty
	// entry, never reach the store and are not counted. dragonboat v4 exposes no live commit
	// index. A replica cut off from the leader receives no new entries: compare Applied across
	// sites for its replication lag.
	LastIndex uint64 `json:"last_index"`
	ApplyLag  uint64 `json:"apply_lag"`
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
	for _, r := range st.Replicas {
		v.Replicas = append(v.Replicas, ReplicaView{ReplicaInfo: r, Transition: r.Transition()})
	}
	for _, g := range s.Groups() {
		gv := GroupView{Group: g.Group, Meta: g.Meta, Shard: g.Shard, Leader: g.Leader, Term: g.Term, Replica: g.Replica}
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
// ds.AdminHandler serves for the site's DB, plus
//
//	GET /v1/cluster   ClusterView as JSON: sites with their health, every group's leader and
//	                  term, this site's replicas with applied and last log indexes, replica
//	                  transitions in progress
//	GET /metrics      ds's metrics, then per shard (label shard="N"):
//	                    strata_raft_leader       1 if this site's replica leads, else 0
//	                    strata_raft_term         the group's term as this site knows it
//	                    strata_raft_applied_index  this site's replica's applied index
//	                    strata_raft_last_index     the last entry in this site's replica's log
//	                    strata_raft_apply_lag      store entries in that log not applied yet
//	                                               (persisted, possibly uncommitted)
//	                  strata_raft_meta_leader (1 if this site leads the meta group), and per
//	                  other site (labels slot, address):
//	                    strata_raft_peer_reachable            reached at the last probe (every
//	                                                          second) or Raft connection (1/0)
//	                    strata_raft_peer_unreachable_seconds  how long it has been unreachable
//	                  then what the ds.AdminMetrics options of opts write
//
// Replication lag across sites is a query over all sites' metrics, e.g. in PromQL
// max by (shard) (strata_raft_applied_index) - on (shard) group_right strata_raft_applied_index.
//
// opts are passed to ds.AdminHandler (e.g. ds.AdminMetrics for a session Store's metrics).
func (s *Site) AdminHandler(opts ...ds.AdminOption) (http.Handler, error) {
	db, err := s.DB()
	if err != nil {
		return nil, err
	}
	// The Raft and peer metrics follow ds's in ds's own /metrics, before those of opts.
	raft := ds.AdminMetrics(func(w io.Writer) error {
		var b strings.Builder
		s.raftMetrics(&b)
		s.peerMetrics(&b)
		_, err := io.WriteString(w, b.String())
		return err
	})
	inner := ds.AdminHandler(db, append([]ds.AdminOption{raft}, opts...)...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Cluster(ctx))
	})
	mux.Handle("/", inner)
	return mux, nil
}

func (s *Site) raftMetrics(b *strings.Builder) {
	groups := s.Groups()
	metric := func(name, help string, value func(g GroupStatus) (uint64, bool)) {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, g := range groups {
			if g.Meta {
				continue
			}
			if v, ok := value(g); ok {
				fmt.Fprintf(b, "%s{shard=\"%d\"} %d\n", name, g.Shard, v)
			}
		}
	}
	metric("strata_raft_leader", "1 if this site's replica leads the shard's Raft group.", func(g GroupStatus) (uint64, bool) {
		return boolGauge(g.Leader != 0 && g.Leader == g.Replica), true
	})
	metric("strata_raft_term", "The shard's Raft term as this site knows it.", func(g GroupStatus) (uint64, bool) {
		return g.Term, true
	})
	metric("strata_raft_applied_index", "The last Raft log index this site's replica applied.", func(g GroupStatus) (uint64, bool) {
		return s.appliedIndex(g.Shard)
	})
	metric("strata_raft_last_index", "The last entry in this site's replica's Raft log.", func(g GroupStatus) (uint64, bool) {
		return s.lastIndex(g.Group)
	})
	metric("strata_raft_apply_lag", "Entries in this site's replica's Raft log its store has not applied yet.", func(g GroupStatus) (uint64, bool) {
		a, ok := s.appliedIndex(g.Shard)
		if !ok {
			return 0, false
		}
		return s.applyLag(g.Group, a)
	})
	fmt.Fprintf(b, "# HELP strata_raft_meta_leader 1 if this site leads the meta group.\n# TYPE strata_raft_meta_leader gauge\n")
	for _, g := range groups {
		if g.Meta {
			fmt.Fprintf(b, "strata_raft_meta_leader %d\n", boolGauge(g.Leader != 0 && g.Leader == g.Replica))
		}
	}
}

// peerMetrics writes, for every other site in the local meta copy, whether this site reached
// it at the last observation and for how long it has failed to.
func (s *Site) peerMetrics(b *strings.Builder) {
	st, err := s.localMeta()
	if err != nil {
		return
	}
	var peers []SiteInfo
	for _, si := range st.Sites {
		if si.State != SiteLeft && si.ID != s.file.ID {
			peers = append(peers, si)
		}
	}
	fmt.Fprintf(b, "# HELP strata_raft_peer_reachable 1 if this site reached the site at the last probe or Raft connection, else 0.\n# TYPE strata_raft_peer_reachable gauge\n")
	for _, si := range peers {
		if r, ok := s.health.lastReached(si.Addr); ok {
			fmt.Fprintf(b, "strata_raft_peer_reachable{slot=\"%d\",address=%q} %d\n", si.Slot, si.Addr, boolGauge(r))
		}
	}
	fmt.Fprintf(b, "# HELP strata_raft_peer_unreachable_seconds How long this site has failed to reach the site (0 when it reaches it).\n# TYPE strata_raft_peer_unreachable_seconds gauge\n")
	for _, si := range peers {
		secs := s.health.unreachableFor(si.Addr).Seconds()
		fmt.Fprintf(b, "strata_raft_peer_unreachable_seconds{slot=\"%d\",address=%q} %g\n", si.Slot, si.Addr, secs)
	}
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

func boolGauge(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
