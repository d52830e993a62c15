package clustertest_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/raftgroup/clustertest"
	"github.com/stretchr/testify/require"
)

// readAll returns every message of db as "clientID topic payload", sorted.
func readAll(db *ds.DB) ([]string, error) {
	msgs, err := db.Messages("#", time.Time{}, 0)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload)
	}
	slices.Sort(out)
	return out, nil
}

func store(t *testing.T, db *ds.DB, prefix string, n int) []string {
	t.Helper()
	var acked []string
	for i := range n {
		m := ds.Message{ClientID: fmt.Sprintf("%s-c%d", prefix, i%7), Topic: fmt.Sprintf("t/%d/x", i%5), Payload: fmt.Appendf(nil, "%s-%d", prefix, i)}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := db.Store(ctx, m)
		cancel()
		require.NoError(t, err, "store %s #%d", prefix, i)
		acked = append(acked, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
	}
	return acked
}

func dbOf(t *testing.T, c *clustertest.Cluster, i int) *ds.DB {
	t.Helper()
	db, err := c.DB(i)
	require.NoError(t, err)
	return db
}

// TestClusterStoreAndReadEverywhere: three sites bootstrap; messages stored through each site
// are readable through every site, once; all replicas converge to identical bytes. A stopped
// site restarts from its directory, catches up with what was stored meanwhile, and the
// replicas converge again.
func TestClusterStoreAndReadEverywhere(t *testing.T) {
	const nShards = 4
	c := clustertest.New(t, clustertest.Options{Sites: 3, Shards: nShards})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, c.WaitLeaders(ctx))
	require.Equal(t, 3, c.N(), "N %d, addrs %v, site 0 at %s", c.N(), c.Addrs(), c.Site(0).RaftAddress())
	require.Len(t, c.Addrs(), 3, "N %d, addrs %v, site 0 at %s", c.N(), c.Addrs(), c.Site(0).RaftAddress())
	require.Equal(t, c.Addrs()[0], c.Site(0).RaftAddress(), "N %d, addrs %v, site 0 at %s", c.N(), c.Addrs(), c.Site(0).RaftAddress())
	require.True(t, raftgroup.IsSiteDir(c.Dir(2)), "%s is not a site directory", c.Dir(2))
	var acked []string
	for i := range c.N() {
		acked = append(acked, store(t, dbOf(t, c, i), fmt.Sprintf("s%d", i), 60)...)
	}
	readEverything := func() {
		t.Helper()
		slices.Sort(acked)
		for i := range c.N() {
			testutil.Eventually(t, 20*time.Second, fmt.Sprintf("site %d reads everything", i), func() error {
				got, err := readAll(dbOf(t, c, i))
				if err != nil {
					return err
				}
				if !slices.Equal(got, acked) {
					return fmt.Errorf("%d read, %d acked", len(got), len(acked))
				}
				return nil
			})
		}
	}
	readEverything()
	require.NoError(t, c.WaitConverged(ctx))
	gens, err := dbOf(t, c, 1).Generations()
	require.NoError(t, err, "generations %v, %v", gens, err)
	require.GreaterOrEqual(t, len(gens), nShards, "generations %v, %v", gens, err)

	require.NoError(t, c.Stop(1))
	require.Nil(t, c.Site(1), "a stopped site is still there")
	_, err = c.DB(1)
	require.Error(t, err, "DB of a stopped site")
	_, err = c.DBs()
	require.Error(t, err, "DBs with a stopped site")
	acked = append(acked, store(t, dbOf(t, c, 0), "while-down", 30)...)
	require.NoError(t, c.Restart(ctx, 1))
	require.Error(t, c.Restart(ctx, 1), "restarting a running site")
	require.NoError(t, c.WaitLeaders(ctx))
	readEverything()
	require.NoError(t, c.WaitConverged(ctx))
	require.NoError(t, c.Close())
	require.NoError(t, c.Close()) // again, as the test's cleanup does
}

// TestStartFails: a site that cannot open fails Start, which closes the sites it opened and
// removes the temporary directory it made.
func TestStartFails(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	bad := func(i int, c *raftgroup.Config) {
		if i == 2 {
			c.LogShards = 1000
		}
	}
	_, err := clustertest.Start(context.Background(), clustertest.Options{Sites: 3, Shards: 1, Mutate: bad})
	require.ErrorIs(t, err, raftgroup.ErrInvalidConfig, "Start: %v, want ErrInvalidConfig", err)
	left, _ := os.ReadDir(tmp)
	require.Empty(t, left, "left behind in the temporary directory: %v", left)

	_, err = clustertest.Start(context.Background(), clustertest.Options{Sites: 0})
	require.Error(t, err, "Start with no site succeeded")
}
