package raftgroup

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 500 * time.Millisecond}
			if c, err := d.DialContext(ctx, "tcp", si.Addr); err == nil {
				c.Close()
				v.Sites[i].Reachable = true
			}
		}()
	}
	wg.Wait()
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
		if !g.Meta {
			if sm := s.shardSM(g.Shard); sm != nil {
				sm.withReplica(func(rs *replicaStore) error { gv.Applied = rs.r.AppliedIndex(); return nil })
			}
		}
		v.Groups = append(v.Groups, gv)
	}
	return v
}

// AdminHandler returns the operator's view of this site, for the broker to mount: everything
// ds.AdminHandler serves for the site's DB, plus
//
//	GET /v1/cluster   ClusterView as JSON: sites, every group's leader and term, this site's
//	                  replicas and applied indexes, replica transitions in progress
//	GET /metrics      ds's metrics, then per shard (label shard="N"):
//	                    strata_raft_leader       1 if this site's replica leads, else 0
//	                    strata_raft_term         the group's term as this site knows it
//	                    strata_raft_applied_index  this site's replica's applied index
//	                  and strata_raft_meta_leader (1 if this site leads the meta group)
func (s *Site) AdminHandler() (http.Handler, error) {
	db, err := s.DB()
	if err != nil {
		return nil, err
	}
	inner := ds.AdminHandler(db)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Cluster(ctx))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		m, err := db.Metrics()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var b strings.Builder
		b.WriteString(ds.PrometheusText(m))
		s.raftMetrics(&b)
		w.Write([]byte(b.String()))
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
		sm := s.shardSM(g.Shard)
		if sm == nil {
			return 0, false
		}
		var v uint64
		err := sm.withReplica(func(rs *replicaStore) error { v = rs.r.AppliedIndex(); return nil })
		return v, err == nil
	})
	fmt.Fprintf(b, "# HELP strata_raft_meta_leader 1 if this site leads the meta group.\n# TYPE strata_raft_meta_leader gauge\n")
	for _, g := range groups {
		if g.Meta {
			fmt.Fprintf(b, "strata_raft_meta_leader %d\n", boolGauge(g.Leader != 0 && g.Leader == g.Replica))
		}
	}
}

func boolGauge(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
