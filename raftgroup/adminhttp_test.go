package raftgroup

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestSiteAdminHandler: every site's /v1/cluster names the same leaders; after the site leading
// most shards is closed, the others' views name new leaders on live sites; /metrics carries
// the Raft gauges, one leader per shard across the sites.
func TestSiteAdminHandler(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, nil)
	storeN(t, c.db(0), "a", 20)
	servers := make([]*httptest.Server, 3)
	for i, s := range c.sites {
		h, err := s.AdminHandler()
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = httptest.NewServer(h)
		defer servers[i].Close()
	}
	view := func(i int) ClusterView {
		t.Helper()
		resp, err := http.Get(servers[i].URL + "/v1/cluster")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v ClusterView
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	leaders := func(v ClusterView) map[uint64]int {
		m := map[uint64]int{}
		for _, g := range v.Groups {
			m[g.Group] = g.LeaderSlot
		}
		return m
	}
	eventually(t, 10*time.Second, "sites agree on the leaders", func() error {
		want := leaders(view(0))
		for g, slot := range want {
			if slot == 0 {
				return fmt.Errorf("group %d has no known leader", g)
			}
		}
		for i := 1; i < 3; i++ {
			if got := leaders(view(i)); fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("site %d sees %v, site 0 %v", i, got, want)
			}
		}
		return nil
	})
	v := view(1)
	for _, si := range v.Sites {
		if !si.Reachable {
			t.Errorf("site %d not reachable while up", si.Slot)
		}
	}
	if !v.MetaFresh || len(v.Sites) != 3 || len(v.Replicas) != 3*(nShards+1) {
		t.Fatalf("cluster view: fresh %v, %d sites, %d replicas", v.MetaFresh, len(v.Sites), len(v.Replicas))
	}
	// Metrics: exactly one leader per shard over the three sites.
	leadersPerShard := map[string]int{}
	for i := range servers {
		resp, err := http.Get(servers[i].URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "strata_raft_leader{") && strings.HasSuffix(line, " 1") {
				leadersPerShard[line]++
			}
		}
		if !strings.Contains(string(body), "strata_messages_stored_total{") || !strings.Contains(string(body), "strata_raft_applied_index{") {
			t.Fatalf("site %d metrics lack ds or Raft series:\n%s", i, body)
		}
	}
	if len(leadersPerShard) != nShards {
		t.Fatalf("leaders per shard over the sites: %v", leadersPerShard)
	}

	victim := c.leaderSite()
	victimSlot := slotOfSite(c, victim)
	servers[victim].Close()
	c.close(victim)
	other := (victim + 1) % 3
	eventually(t, 15*time.Second, "the view names new leaders", func() error {
		v := view(other)
		for _, si := range v.Sites {
			if si.Slot == victimSlot && si.Reachable {
				return fmt.Errorf("the closed site still shows reachable")
			}
		}
		for g, slot := range leaders(v) {
			if slot == 0 || slot == victimSlot {
				return fmt.Errorf("group %d: leader on slot %d (closed: %d)", g, slot, victimSlot)
			}
		}
		return nil
	})
}
