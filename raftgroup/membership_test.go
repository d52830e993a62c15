package raftgroup

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/inspect"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// join adds a new site (index len(c.sites)) through member: PrepareSite gives its ID, AddSite
// records it, and Open returns once it has caught up with the meta group.
func (c *testCluster) join(member int) int {
	c.t.Helper()
	i := len(c.sites)
	c.addrs = append(c.addrs, freeAddr(c.t))
	c.sites = append(c.sites, nil)
	cfg := c.config(i, nil, true, 0)
	id, err := PrepareSite(cfg)
	require.NoError(c.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(c.t, c.sites[member].AddSite(ctx, id, c.addrs[i]))
	require.NoError(c.t, c.openSite(i, nil, true, 0))
	return i
}

// waitPlanDone waits until the meta group's allocation has no transition left.
func (c *testCluster) waitPlanDone(via int, timeout time.Duration) *MetaState {
	c.t.Helper()
	var st *MetaState
	eventually(c.t, timeout, "replica transitions done", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		st, err = c.sites[via].Meta(ctx)
		if err != nil {
			return err
		}
		for _, r := range st.Replicas {
			if t := r.Transition(); t != "" {
				return fmt.Errorf("group %d replica %d on slot %d: %s", r.Group, r.ReplicaID, r.Slot, t)
			}
		}
		return nil
	})
	return st
}

// TestClusterJoinAndLeave (PlacementEverySite): a fourth site joins a cluster whose logs were compacted, so it
// receives every shard by snapshot (its replicas run on a recovered Pebble), reads everything
// locally and takes writes; then one of the initial sites leaves: the joiner's non-voting
// replicas are promoted first, the leaver's replicas removed and its data deleted; the
// cluster goes on with the remaining three and all replicas are identical.
func TestClusterJoinAndLeave(t *testing.T) {
	const nShards = 3
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) {
		cfg.SnapshotEntries, cfg.CompactionOverhead = 30, 5
		cfg.ReadReplicas = true // PlacementEverySite: TestPlacementJoinAndLeave does PlacementVoters
	})
	var mu sync.Mutex
	live := []*ds.DB{c.db(0), c.db(1), c.db(2)}
	dbs := func() []*ds.DB { mu.Lock(); defer mu.Unlock(); return live }
	w := startWriter(t, dbs, 6)
	w.waitAcked(t, 400, "writes before the join") // > SnapshotEntries+CompactionOverhead entries per shard

	j := c.join(0)
	st := c.waitPlanDone(0, 30*time.Second)
	jslot, _ := c.sites[j].mySlot(st)
	for _, g := range st.groups() {
		found := false
		for _, r := range st.GroupReplicas(g) {
			if r.Slot == jslot {
				found = true
				require.False(t, r.Voter, "group %d: the joiner's replica %+v, want a non-voting member (RF 3 is met)", g, r)
				require.Equal(t, memberNonVoting, r.Member, "group %d: the joiner's replica %+v, want a non-voting member (RF 3 is met)", g, r)
			}
		}
		require.True(t, found, "group %d has no replica on the joiner", g)
	}
	// Every shard reached the joiner by snapshot: its replica runs on a recovered store.
	eventually(t, 30*time.Second, "joiner's replicas recovered from snapshots", func() error {
		for sh := range nShards {
			sm := c.sites[j].shardSM(stream.ShardID(sh))
			if sm == nil {
				return fmt.Errorf("shard %d not running", sh)
			}
			cur, err := os.ReadFile(filepath.Join(sm.dir, "CURRENT"))
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(cur)) == "db-000001" {
				return fmt.Errorf("shard %d: still on its initial store (no snapshot received)", sh)
			}
		}
		return nil
	})
	mu.Lock()
	live = append(live, c.db(j))
	mu.Unlock()
	w.waitAcked(t, 200, "writes with the joiner")

	// Site 0 leaves.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.sites[1].RemoveSite(ctx, c.sites[0].ID()))
	mu.Lock()
	live = []*ds.DB{c.db(1), c.db(2), c.db(j)}
	mu.Unlock()
	st = c.waitPlanDone(1, 60*time.Second)
	leaver, _ := st.SiteByID(c.sites[0].ID())
	require.Equal(t, SiteLeft, leaver.State, "leaver is %s", leaver.State)
	for _, g := range st.groups() {
		voters := 0
		for _, r := range st.GroupReplicas(g) {
			require.NotEqual(t, leaver.Slot, r.Slot, "group %d still has replica %+v on the leaver", g, r)
			if r.Member == memberVoter {
				voters++
			}
		}
		require.Equal(t, 3, voters, "group %d has %d voters, want 3", g, voters)
	}
	// The leaver stops its shard replicas and deletes their data.
	eventually(t, 20*time.Second, "leaver's replicas stopped", func() error {
		for sh := range nShards {
			if c.sites[0].shardSM(stream.ShardID(sh)) != nil {
				return fmt.Errorf("shard %d still runs on the leaver", sh)
			}
		}
		return nil
	})
	// The leaver's admin views have no replica to read: 503 (ErrUnavailable), a JSON error,
	// never an empty list that looks like "no data"; its metrics say so per shard.
	h, err := c.sites[0].AdminHandler(inspect.WithPayloads(nil))
	require.NoError(t, err)
	for _, path := range []string{"/v1/generations", "/v1/messages?filter=%23"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var e inspect.ErrorBody
		err := json.Unmarshal(rec.Body.Bytes(), &e)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code, "leaver's %s: %d %s", path, rec.Code, rec.Body)
		require.NoError(t, err, "leaver's %s: %d %s", path, rec.Code, rec.Body)
		require.Contains(t, e.Error, "no replica of shard", "leaver's %s: %d %s", path, rec.Code, rec.Body)
	}
	_, err = c.db(0).Streams("#", time.Time{})
	require.ErrorIs(t, err, ds.ErrUnavailable, "leaver's Streams: %v, want retryable ErrUnavailable", err)
	require.True(t, ds.IsRetryable(err), "leaver's Streams: %v, want retryable ErrUnavailable", err)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	require.Contains(t, rec.Body.String(), `strata_shard_available{shard="0"} 0`, "leaver's metrics do not show shard 0 unavailable:\n%s", rec.Body)
	w.waitAcked(t, 200, "writes after the leave")
	acked := w.finish()
	c.close(0)
	t.Logf("%d acknowledged, %d failed attempts", len(acked), w.failed.Load())
	c.requireAllRead(acked, 30*time.Second)
	c.waitConverged(nShards, 30*time.Second)
}

// TestClusterReplicationFactor (PlacementEverySite): lowering the replication factor to 1 makes two voters per shard
// leave their group and rejoin as a non-voting replica (Raft cannot demote) with a new replica
// ID; raising it again promotes one; replica IDs are never reused; writes go on throughout
// and all replicas stay identical.
func TestClusterReplicationFactor(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.ReadReplicas = true })
	w := startWriter(t, func() []*ds.DB { return []*ds.DB{c.db(0), c.db(1), c.db(2)} }, 4)
	w.waitAcked(t, 100, "writes before")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	voters := func(st *MetaState, g uint64) (n int) {
		for _, r := range st.GroupReplicas(g) {
			if r.Member == memberVoter {
				n++
			}
		}
		return n
	}
	// RF 1: two voters per shard leave at once in the plan; each keeps running until the group
	// removed it, so the group never loses its quorum on the way.
	require.NoError(t, c.sites[2].SetReplicationFactor(ctx, 1))
	st := c.waitPlanDone(0, 30*time.Second)
	for _, g := range st.groups() {
		want := 1
		if g == metaGroup {
			want = 3 // the meta group never demotes
		}
		n := voters(st, g)
		require.Equal(t, want, n, "RF 1: group %d has %d voters, want %d", g, n, want)
		n = len(st.GroupReplicas(g))
		require.Equal(t, 3, n, "RF 1: group %d has %d replicas, want one per site", g, n)
	}
	w.waitAcked(t, 100, "writes at RF 1")
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.sites[1].SetReplicationFactor(ctx, 3))
	st = c.waitPlanDone(0, 30*time.Second)
	for _, g := range st.groups() {
		n := voters(st, g)
		require.Equal(t, 3, n, "RF 3: group %d has %d voters, want 3", g, n)
	}
	require.Greater(t, st.NextReplicaID, uint64(4), "next replica ID %d: the demoted voters' new non-voting replicas should have new IDs", st.NextReplicaID)
	w.waitAcked(t, 100, "writes at RF 3 again")
	acked := w.finish()
	c.requireAllRead(acked, 30*time.Second)
	c.waitConverged(nShards, 30*time.Second)
}

// TestRemoveSiteNeverAdded: a site added and removed before the reconciler made any of its
// replicas members is taken out without being added first — its records are "removing" from
// the start — though dragonboat is then asked to delete replicas its groups never held. The
// removal completes, the cluster keeps taking writes, and no group's membership lists the
// site's replicas. (The reconciler is slowed so that both records land between two rounds; if
// a round slips in between anyway, the end state must still hold.)
func TestRemoveSiteNeverAdded(t *testing.T) {
	const nShards = 2
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) { cfg.ReconcileInterval = 250 * time.Millisecond })
	acked := storeN(t, c.db(0), "before", 20)
	id, err := ParseSiteID("00000000000000aa")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.sites[1].AddSite(ctx, id, freeAddr(t))) // nobody listens there
	require.NoError(t, c.sites[1].RemoveSite(ctx, id))
	st, err := c.metaVia(0)
	require.NoError(t, err)
	si, ok := st.SiteByID(id)
	require.True(t, ok, "site %s not recorded", id)
	var gone []ReplicaInfo
	for _, r := range st.Replicas {
		if r.Slot == si.Slot {
			gone = append(gone, r)
			require.Equal(t, "removing", r.Transition(), "replica %+v of the removed site", r)
		}
	}
	require.NotEmpty(t, gone, "the site's replicas were not allocated")

	acked = append(acked, storeN(t, c.db(2), "after", 20)...)
	waitRemoved(t, c, id, 40*time.Second)
	c.requireAllRead(acked, 20*time.Second)
	for _, r := range gone {
		mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := c.sites[0].nh.SyncGetShardMembership(mctx, r.Group)
		mcancel()
		require.NoError(t, err, "membership of group %d", r.Group)
		_, voter := m.Nodes[r.ReplicaID]
		_, nonVoting := m.NonVotings[r.ReplicaID]
		require.False(t, voter || nonVoting, "group %d still lists replica %d of the removed site", r.Group, r.ReplicaID)
		_, removed := m.Removed[r.ReplicaID]
		t.Logf("group %d replica %d: in the group's removed set: %v", r.Group, r.ReplicaID, removed)
	}
}
