package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// TestClusterCommand: ds-info cluster against a running three-site cluster names every
// group's leader; after the site leading shard 0 is closed, asking a surviving site shows the
// new leader, on a live site.
func TestClusterCommand(t *testing.T) {
	sites := openSites(t, t.TempDir(), 3, &ds.Options{NShards: 2, Expert: ds.ExpertOptions{MemTableBytes: 4 << 20}})
	for _, s := range sites {
		t.Cleanup(func() { s.Close() })
	}
	urls := make([]string, 3)
	for i, s := range sites {
		h, err := s.AdminHandler()
		require.NoError(t, err)
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	cluster := func(i int) (raftgroup.ClusterView, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run([]string{"-url", urls[i], "cluster", "-json"}, &out, &errOut)
		require.Equal(t, exitOK, code, "cluster -json on site %d: exit %d: %s", i, code, errOut.String())
		var v raftgroup.ClusterView
		require.NoError(t, json.Unmarshal(out.Bytes(), &v))
		out.Reset()
		code = run([]string{"cluster", "-url", urls[i]}, &out, &errOut)
		require.Equal(t, exitOK, code, "cluster on site %d: exit %d: %s", i, code, errOut.String())
		return v, out.String()
	}
	shard0Leader := func(v raftgroup.ClusterView) int {
		for _, g := range v.Groups {
			if !g.Meta && g.Shard == 0 {
				return g.LeaderSlot
			}
		}
		return 0
	}
	var before int
	testutil.Eventually(t, 20*time.Second, "shard 0 has a leader", func() error {
		v, text := cluster(0)
		if before = shard0Leader(v); before == 0 {
			return fmt.Errorf("no leader yet:\n%s", text)
		}
		if !strings.Contains(text, "SLOT") || !strings.Contains(text, "LEADER SLOT") || !strings.Contains(text, "APPLY LAG") || !strings.Contains(text, "active") {
			return fmt.Errorf("table lacks its sections:\n%s", text)
		}
		// The placement: three sites, RF 3, so every shard on slots 1-3 and 2 replicas per site.
		if v.Placement != raftgroup.PlacementVoters || !strings.Contains(text, "placement voters") ||
			!regexp.MustCompile(`shard 1000\s+0\s+1,2,3\s`).MatchString(text) || !strings.Contains(text, "SHARD REPLICAS") {
			return fmt.Errorf("placement not shown:\n%s", text)
		}
		for _, si := range v.Sites {
			if si.ShardReplicas != 2 || si.Service == "" {
				return fmt.Errorf("site %d: %d shard replicas, service %q:\n%s", si.Slot, si.ShardReplicas, si.Service, text)
			}
		}
		return nil
	})
	// shards -url on a replicated site adds each shard's Raft group: leader, indexes, replicas.
	testutil.Eventually(t, 20*time.Second, "shards shows the Raft groups", func() error {
		var rows []shardRow
		code, out, errs := runCmd(t, "shards", "-url", urls[0], "-json")
		if code != exitOK || errs != "" {
			return fmt.Errorf("shards -json: exit %d: %s", code, errs)
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return err
		}
		if len(rows) != 2 {
			return fmt.Errorf("shards: %d rows, want 2:\n%s", len(rows), out)
		}
		for _, r := range rows {
			if r.Raft == nil || r.Raft.Group != 1000+uint64(r.Shard) || len(r.Raft.Replicas) != 3 || r.Generations == 0 || r.Raft.LeaderSlot == 0 {
				return fmt.Errorf("shard %d: %+v", r.Shard, r.Raft)
			}
		}
		if _, text, _ := runCmd(t, "shards", "-url", urls[0]); !strings.Contains(text, "LEADER SLOT") || !strings.Contains(text, ":voter") {
			return fmt.Errorf("shards table:\n%s", text)
		}
		return nil
	})
	victim := -1
	for i, s := range sites {
		v, _ := cluster(i)
		for _, site := range v.Sites {
			if site.Slot == before && site.ID == s.ID() {
				victim = i
			}
		}
	}
	require.GreaterOrEqual(t, victim, 0, "no site holds slot %d", before)
	sites[victim].Close()
	other := (victim + 1) % 3
	testutil.Eventually(t, 20*time.Second, "ds-info shows a new leader of shard 0", func() error {
		v, text := cluster(other)
		for _, si := range v.Sites {
			if si.Slot == before && (si.Reachable || si.Health != raftgroup.HealthDown) {
				return fmt.Errorf("the closed site (slot %d) still shows reachable:\n%s", before, text)
			}
			if si.Slot == before && !regexp.MustCompile(regexp.QuoteMeta(si.Addr)+`\s+\S+\s+active\s+down\s`).MatchString(text) {
				return fmt.Errorf("the table does not show slot %d down:\n%s", before, text)
			}
		}
		if after := shard0Leader(v); after == 0 || after == before {
			return fmt.Errorf("leader slot %d (closed site: slot %d):\n%s", after, before, text)
		}
		return nil
	})
	// info sums it up: one site down, no shard without a leader.
	code, text, stderr := runCmd(t, "info", "-url", urls[other])
	require.Equal(t, exitOK, code, "info: exit %d, %s\n%s", code, stderr, text)
	require.Contains(t, text, "3: 2 up, 1 down, 0 lost, 0 left (not up: slots ["+fmt.Sprint(before)+"])", "info: exit %d, %s\n%s", code, stderr, text)
	require.Regexp(t, `leaderless shards +none`, text, "info: exit %d, %s\n%s", code, stderr, text)
	require.Regexp(t, `storage +replicated site`, text, "info: exit %d, %s\n%s", code, stderr, text)
	require.NotRegexp(t, `disk bytes +0\n`, text, "info: exit %d, %s\n%s", code, stderr, text)
}
