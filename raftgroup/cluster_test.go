package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/loopback"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// testCluster runs sites in this process on 127.0.0.1, for the tests of this package that need
// its internals (unexported Config fields such as transport, the meta state's records, the
// shard state machines). Everything else starts local clusters with raftgroup/clustertest,
// which cannot be used here: it imports raftgroup (an import cycle). So this is a second,
// deliberately minimal, implementation of the same thing, with the same defaults (plus small
// snapshot thresholds, to exercise snapshots); tests that need only the exported API belong
// in clustertest's tests or in package raftgroup_test with clustertest. Its fields are used
// directly: a joining site is added by appending to addrs and sites and calling openSite.
type testCluster struct {
	t      testing.TB
	root   string
	addrs  []string
	sites  []*Site
	mutate func(i int, c *Config)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	a, err := loopback.FreeAddrs(1)
	require.NoError(t, err)
	return a[0]
}

func testLogger() *slog.Logger {
	if os.Getenv("STRATA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return discardLogger()
}

// newTestCluster bootstraps n sites with nShards shards.
func newTestCluster(t testing.TB, n, nShards int, mutate func(i int, c *Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, root: t.TempDir(), mutate: mutate}
	for range n {
		c.addrs = append(c.addrs, freeAddr(t))
	}
	c.sites = make([]*Site, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.openSite(i, c.addrs, false, nShards)
		}()
	}
	wg.Wait()
	t.Cleanup(c.closeAll)
	require.NoError(t, errors.Join(errs...))
	return c
}

func (c *testCluster) config(i int, initial []string, join bool, nShards int) Config {
	cfg := Config{
		Dir: filepath.Join(c.root, fmt.Sprintf("site-%d", i)), RaftAddress: c.addrs[i],
		InitialSites: initial, Join: join,
		LogDBMemory: LogDBTiny, SnapshotEntries: 200, CompactionOverhead: 100,
		ReconcileInterval: 20 * time.Millisecond,
		DB: &ds.Options{NShards: nShards, Logger: testLogger(), Retention: ds.RetainForever,
			GenerationSpan: time.Hour, Expert: ds.ExpertOptions{MemTableBytes: 4 << 20, CacheBytes: 8 << 20}},
	}
	if c.mutate != nil {
		c.mutate(i, &cfg)
	}
	return cfg
}

func (c *testCluster) openSite(i int, initial []string, join bool, nShards int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Open(ctx, c.config(i, initial, join, nShards))
	if err != nil {
		return fmt.Errorf("site %d: %w", i, err)
	}
	c.sites[i] = s
	return nil
}

// restart reopens a closed site from its directory.
func (c *testCluster) restart(i int) {
	c.t.Helper()
	require.NoError(c.t, c.openSite(i, c.addrs, false, 0))
}

func (c *testCluster) close(i int) {
	if c.sites[i] != nil {
		c.sites[i].Close()
		c.sites[i] = nil
	}
}

func (c *testCluster) closeAll() {
	var wg sync.WaitGroup
	for i := range c.sites {
		wg.Add(1)
		go func() { defer wg.Done(); c.close(i) }()
	}
	wg.Wait()
}

func (c *testCluster) db(i int) *ds.DB {
	c.t.Helper()
	db, err := c.sites[i].DB()
	require.NoError(c.t, err)
	return db
}

var eventually = testutil.Eventually

// readAll returns every message of db as "clientID topic payload", per shard in timestamp
// order.
func readAll(db *ds.DB) ([]string, error) {
	streams, err := db.Streams("#", time.Time{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range streams {
		it, err := db.Iterator(s, "#", time.Time{})
		if err != nil {
			return nil, err
		}
		for {
			msgs, next, err := db.Next(context.Background(), it, 1000)
			if err != nil && !errors.Is(err, ds.ErrEndOfStream) {
				return nil, err
			}
			for _, m := range msgs {
				out = append(out, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
			}
			if len(msgs) == 0 || err != nil {
				break
			}
			it = next
		}
	}
	return out, nil
}

// sameSet reports the difference between what was acknowledged and what was read: missing
// and duplicated messages.
func diff(acked, read []string) (missing, dups []string) {
	count := map[string]int{}
	for _, r := range read {
		count[r]++
		if count[r] == 2 {
			dups = append(dups, r)
		}
	}
	for _, a := range acked {
		if count[a] == 0 {
			missing = append(missing, a)
		}
	}
	return missing, dups
}

// waitConverged waits until every open site's replica of every shard has the same digest at
// the same applied index, and every shard has a replica on an open site (under
// PlacementVoters, a site holds only some shards).
func (c *testCluster) waitConverged(nShards int, timeout time.Duration) {
	c.t.Helper()
	eventually(c.t, timeout, "replicas converge", func() error {
		for sh := range nShards {
			var first *ReplicaDigest
			for i, s := range c.sites {
				if s == nil || !s.Schema().everySite() && s.shardSM(stream.ShardID(sh)) == nil {
					continue
				}
				d, err := s.Digest(stream.ShardID(sh))
				if err != nil {
					return fmt.Errorf("site %d: %w", i, err)
				}
				if first == nil {
					first = &d
				} else if d != *first {
					return fmt.Errorf("shard %d: site %d at index %d digest %x, first at %d %x", sh, i, d.Applied, d.Sum[:6], first.Applied, first.Sum[:6])
				}
			}
			if first == nil {
				return fmt.Errorf("shard %d: no open site holds a replica", sh)
			}
		}
		return nil
	})
}

func storeN(t testing.TB, db *ds.DB, prefix string, n int) []string {
	t.Helper()
	var acked []string
	for i := range n {
		m := ds.Message{ClientID: fmt.Sprintf("%s-c%d", prefix, i%7), Topic: fmt.Sprintf("t/%d/x", i%5), Payload: []byte(fmt.Sprintf("%s-%d", prefix, i))}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := db.Store(ctx, m)
		cancel()
		require.NoError(t, err, "store %s #%d", prefix, i)
		acked = append(acked, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
	}
	return acked
}
