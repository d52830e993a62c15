package raftgroup

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-mq/strata/inspect"
	"github.com/stretchr/testify/require"
)

// TestSiteAdminHandler: every site's /v1/cluster names the same leaders and shows every site
// up and every group's last log and applied index; /metrics carries the Raft gauges, one leader
// per shard across the sites. After the site leading most shards is closed, another site's view
// names new leaders on live sites and the closed site down (its metrics too, from the prober),
// and lost once it has been unreachable for LostAfter.
func TestSiteAdminHandler(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, nil)
	var clockOffset atomic.Int64 // moves the sites' health clocks forward
	for _, s := range c.sites {
		s.health.setClock(func() time.Time { return time.Now().Add(time.Duration(clockOffset.Load())) })
	}
	storeN(t, c.db(0), "a", 20)
	servers := make([]*httptest.Server, 3)
	for i, s := range c.sites {
		// A broker's own metrics (e.g. a session Store's) are served beside the Raft metrics.
		extra := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "broker_extra_metric", Help: "A broker's."}, func() float64 { return 7 })
		h, err := s.AdminHandler(inspect.WithPayloads(nil), inspect.WithCollectors(extra))
		require.NoError(t, err)
		servers[i] = httptest.NewServer(h)
		defer servers[i].Close()
	}
	view := func(i int) ClusterView {
		t.Helper()
		resp, err := http.Get(servers[i].URL + "/v1/cluster")
		require.NoError(t, err)
		defer resp.Body.Close()
		var v ClusterView
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
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
	// The ds views read each site's own replicas, and the replicas are identical: every site
	// lists the same streams and messages.
	c.waitConverged(nShards, 20*time.Second)
	get := func(i int, path string) (int, string) {
		t.Helper()
		resp, err := http.Get(servers[i].URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/v1/streams", "/v1/messages?filter=%23&limit=100"} {
		code, want := get(0, path)
		require.Equal(t, http.StatusOK, code, "site 0 %s: %d %s", path, code, want)
		require.Contains(t, want, "t/", "site 0 %s: %d %s", path, code, want)
		for i := 1; i < 3; i++ {
			code, got := get(i, path)
			require.Equal(t, http.StatusOK, code, "site %d %s: %d\n%s\nsite 0:\n%s", i, path, code, got, want)
			require.Equal(t, want, got, "site %d %s: %d\n%s\nsite 0:\n%s", i, path, code, got, want)
		}
	}
	_, body := get(2, "/v1/messages?filter=%23&limit=100")
	require.Equal(t, 20, strings.Count(body, `"topic"`), "messages view lists %d messages, want 20:\n%s", strings.Count(body, `"topic"`), body)
	v := view(1)
	for _, si := range v.Sites {
		require.True(t, si.Reachable, "site %d while up: reachable %v, health %q, down since %v", si.Slot, si.Reachable, si.Health, si.DownSince)
		require.Equal(t, HealthUp, si.Health, "site %d while up: reachable %v, health %q, down since %v", si.Slot, si.Reachable, si.Health, si.DownSince)
		require.Nil(t, si.DownSince, "site %d while up: reachable %v, health %q, down since %v", si.Slot, si.Reachable, si.Health, si.DownSince)
	}
	for _, g := range v.Groups {
		require.NotZero(t, g.LastIndex, "group %d: last index %d, applied %d", g.Group, g.LastIndex, g.Applied)
		require.False(t, !g.Meta && (g.Applied == 0 || g.Applied > g.LastIndex), "group %d: last index %d, applied %d", g.Group, g.LastIndex, g.Applied)
	}
	require.True(t, v.MetaFresh, "cluster view: fresh %v, %d sites, %d replicas", v.MetaFresh, len(v.Sites), len(v.Replicas))
	require.Len(t, v.Sites, 3, "cluster view: fresh %v, %d sites, %d replicas", v.MetaFresh, len(v.Sites), len(v.Replicas))
	require.Len(t, v.Replicas, 3*(nShards+1), "cluster view: fresh %v, %d sites, %d replicas", v.MetaFresh, len(v.Sites), len(v.Replicas))
	// Metrics: exactly one leader per shard over the three sites.
	leadersPerShard := map[string]int{}
	for i := range servers {
		resp, err := http.Get(servers[i].URL + "/metrics")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "strata_raft_leader{") && strings.HasSuffix(line, " 1") {
				leadersPerShard[line]++
			}
		}
		for _, series := range []string{"strata_messages_stored_total{", "strata_raft_applied_index{", "strata_raft_last_index{", "strata_raft_apply_lag{", "strata_raft_log_fsyncs_total ", "strata_raft_log_segments ", "broker_extra_metric 7"} {
			require.Contains(t, string(body), series, "site %d metrics lack %s:\n%s", i, series, body)
		}
		n := strings.Count(string(body), "strata_raft_peer_unreachable_seconds{")
		require.Equal(t, 2, n, "site %d: %d peer series, want 2:\n%s", i, n, body)
	}
	require.Len(t, leadersPerShard, nShards, "leaders per shard over the sites: %v", leadersPerShard)

	victim := c.leaderSite()
	victimSlot := slotOfSite(c, victim)
	servers[victim].Close()
	c.close(victim)
	other := (victim + 1) % 3
	victimAddr := ""
	eventually(t, 15*time.Second, "the view names new leaders", func() error {
		v := view(other)
		for _, si := range v.Sites {
			if si.Slot == victimSlot {
				if si.Reachable || si.Health != HealthDown || si.DownSince == nil {
					return fmt.Errorf("the closed site shows reachable %v, health %q", si.Reachable, si.Health)
				}
				victimAddr = si.Addr
			} else if si.Health != HealthUp {
				return fmt.Errorf("live site %d shows %q", si.Slot, si.Health)
			}
		}
		for g, slot := range leaders(v) {
			if slot == 0 || slot == victimSlot {
				return fmt.Errorf("group %d: leader on slot %d (closed: %d)", g, slot, victimSlot)
			}
		}
		// Idle shards: nothing waits to be applied, although the new leaders' empty entries
		// (which never reach the store) put the last log index above the applied one.
		behind := 0
		for _, g := range v.Groups {
			if g.Meta {
				continue
			}
			if g.ApplyLag != 0 {
				return fmt.Errorf("group %d: apply lag %d", g.Group, g.ApplyLag)
			}
			if g.LastIndex > g.Applied {
				behind++
			}
		}
		if behind == 0 {
			return fmt.Errorf("no shard's last log index above its applied index: %+v", v.Groups)
		}
		return nil
	})
	// The metrics say so too, from the site's own prober, whether or not it has Raft
	// messages for the closed site (it may lead nothing).
	connected := fmt.Sprintf("strata_raft_peer_reachable{address=%q,slot=\"%d\"} 0", victimAddr, victimSlot)
	eventually(t, 15*time.Second, "metrics report the closed site", func() error {
		resp, err := http.Get(servers[other].URL + "/metrics")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), connected) {
			return fmt.Errorf("no %s in\n%s", connected, body)
		}
		return nil
	})
	// Unreachable for LostAfter: lost, an operator's matter.
	clockOffset.Store(int64(c.sites[other].cfg.LostAfter))
	for _, si := range view(other).Sites {
		want := HealthUp
		if si.Slot == victimSlot {
			want = HealthLost
		}
		require.Equal(t, want, si.Health, "after LostAfter: site %d is %q, want %q", si.Slot, si.Health, want)
	}
}
