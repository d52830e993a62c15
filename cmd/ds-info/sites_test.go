package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/raftgroup/clustertest"
	"github.com/stretchr/testify/require"
)

// openSites bootstraps a cluster of n sites on 127.0.0.1 (raftgroup/clustertest), site i in
// root/i, with db as every site's DB options. The caller closes them (a test closes some
// before it reads their directories); if one fails to open, the others are closed and the
// test fails.
func openSites(t *testing.T, root string, n int, db *ds.Options) []*raftgroup.Site {
	t.Helper()
	c, err := clustertest.Start(context.Background(), clustertest.Options{Sites: n, Shards: db.NShards, Dir: root,
		Mutate: func(i int, cfg *raftgroup.Config) {
			cfg.Dir = filepath.Join(root, fmt.Sprint(i))
			cfg.DB = db
		}})
	require.NoError(t, err)
	sites := make([]*raftgroup.Site, n)
	for i := range sites {
		sites[i] = c.Site(i)
	}
	return sites
}
