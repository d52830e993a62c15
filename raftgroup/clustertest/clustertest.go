// Package clustertest starts a replicated Strata cluster inside one process, every site on
// 127.0.0.1 with its own dragonboat NodeHost, Raft log and replicas: the local cluster that
// tests, examples of use and benchmarks (cmd/ds-bench) need, as etcd's rafttest is for etcd.
// It is not for production: a real deployment runs one site per machine (see raftgroup).
//
// Start works without a testing.T (benchmarks use it); New is the test convenience, which
// fails the test on an error and closes the cluster when the test ends.
//
// Invariants:
//   - Site i listens on Addrs()[i], a free loopback port that no other cluster of this process
//     was given (internal/loopback), and keeps its directory Dir(i) for the cluster's life:
//     Restart reopens it from there with the same configuration (Config(i)).
//   - Every site is an initial site: InitialSites is Addrs() on each, so they bootstrap one
//     cluster together. Start returns once every site is open (each knows the schema), or,
//     on an error, with every site it opened closed again and the temporary directory removed.
//   - A site's configuration is the defaults below, then Options.Mutate; the same function
//     gives it on a restart.
//   - Close closes every running site and removes the directory if Start made it; it can be
//     called more than once.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/loopback"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/stream"
)

// Options describe a local cluster.
type Options struct {
	// Sites is the number of sites (at least 1).
	Sites int
	// Shards is the cluster's NShards (DB.NShards of every site). Default 2.
	Shards int
	// Dir holds a directory per site (Dir/site-<i>, unless Mutate sets Config.Dir). Default: a
	// temporary directory that Close removes.
	Dir string
	// OpenTimeout bounds each site's Open. Default 1 minute.
	OpenTimeout time.Duration
	// Mutate, if set, adjusts site i's configuration after the defaults, which are sized for
	// tests: a tiny Raft log memory, frequent reconciliation, small memtables and cache,
	// retention forever, one-hour generations, logs discarded (unless the environment
	// variable STRATA_TEST_LOG is set: then debug logs go to stderr). Mutate may replace c.DB;
	// the schema fields must be the same on every site. It is called whenever site i's
	// configuration is needed (Start, Restart, Config, Dir), so it must give the same result
	// each time.
	Mutate func(i int, c *raftgroup.Config)
}

// Cluster is a running local cluster. Its methods are not safe for concurrent use, except the
// read-only ones (Addrs, Dir, Site, DB) while no Stop or Restart runs.
type Cluster struct {
	opts       Options
	root       string
	removeRoot bool
	addrs      []string
	sites      []*raftgroup.Site // nil: stopped
}

// Start starts a cluster of o.Sites sites in parallel and returns once every one is open.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Sites < 1 {
		return nil, fmt.Errorf("clustertest: %d sites", o.Sites)
	}
	if o.Shards == 0 {
		o.Shards = 2
	}
	if o.OpenTimeout == 0 {
		o.OpenTimeout = time.Minute
	}
	c := &Cluster{opts: o, root: o.Dir, sites: make([]*raftgroup.Site, o.Sites)}
	if c.root == "" {
		tmp, err := os.MkdirTemp("", "strata-clustertest-")
		if err != nil {
			return nil, err
		}
		c.root, c.removeRoot = tmp, true
	}
	var err error
	if c.addrs, err = loopback.FreeAddrs(o.Sites); err != nil {
		c.Close()
		return nil, err
	}
	errs := make([]error, o.Sites)
	var wg sync.WaitGroup
	for i := range c.sites {
		wg.Go(func() { errs[i] = c.open(ctx, i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// New is Start for a test: it fails the test on an error, and closes the cluster when the
// test ends. The sites live under t.TempDir() unless o.Dir is set.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	c, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Config returns site i's configuration (a new copy each time).
func (c *Cluster) Config(i int) raftgroup.Config {
	cfg := raftgroup.Config{
		Dir: filepath.Join(c.root, fmt.Sprintf("site-%d", i)), RaftAddress: c.addrs[i], InitialSites: c.Addrs(),
		LogDBMemory: raftgroup.LogDBTiny, ReconcileInterval: 20 * time.Millisecond,
		DB: &ds.Options{NShards: c.opts.Shards, Retention: ds.RetainForever, GenerationSpan: time.Hour,
			Expert: ds.ExpertOptions{MemTableBytes: 4 << 20, CacheBytes: 8 << 20}},
	}
	if os.Getenv("STRATA_TEST_LOG") != "" {
		cfg.DB.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if c.opts.Mutate != nil {
		c.opts.Mutate(i, &cfg)
	}
	return cfg
}

func (c *Cluster) open(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OpenTimeout)
	defer cancel()
	s, err := raftgroup.Open(ctx, c.Config(i))
	if err != nil {
		return fmt.Errorf("clustertest: site %d: %w", i, err)
	}
	c.sites[i] = s
	return nil
}

// N returns the number of sites, running or stopped.
func (c *Cluster) N() int { return len(c.sites) }

// Addrs returns the sites' Raft addresses, site i's at i (a copy).
func (c *Cluster) Addrs() []string { return append([]string(nil), c.addrs...) }

// Dir returns site i's directory: Options.Dir/site-<i>, unless Options.Mutate changes it.
func (c *Cluster) Dir(i int) string { return c.Config(i).Dir }

// Site returns site i, or nil while it is stopped.
func (c *Cluster) Site(i int) *raftgroup.Site { return c.sites[i] }

// DB returns site i's DB.
func (c *Cluster) DB(i int) (*ds.DB, error) {
	if c.sites[i] == nil {
		return nil, fmt.Errorf("clustertest: site %d is stopped", i)
	}
	return c.sites[i].DB()
}

// DBs returns every site's DB, site i's at i; every site must be running.
func (c *Cluster) DBs() ([]*ds.DB, error) {
	dbs := make([]*ds.DB, len(c.sites))
	for i := range c.sites {
		var err error
		if dbs[i], err = c.DB(i); err != nil {
			return nil, err
		}
	}
	return dbs, nil
}

// Stop closes site i, keeping its directory; a stopped site stays stopped.
func (c *Cluster) Stop(i int) error {
	s := c.sites[i]
	if s == nil {
		return nil
	}
	c.sites[i] = nil
	return s.Close()
}

// Restart reopens stopped site i from its directory, with the same configuration.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if c.sites[i] != nil {
		return fmt.Errorf("clustertest: site %d is running", i)
	}
	return c.open(ctx, i)
}

// Close closes every running site, in parallel, and removes the cluster's directory if Start
// created it.
func (c *Cluster) Close() error {
	errs := make([]error, len(c.sites))
	var wg sync.WaitGroup
	for i := range c.sites {
		wg.Go(func() { errs[i] = c.Stop(i) })
	}
	wg.Wait()
	if c.removeRoot {
		errs = append(errs, os.RemoveAll(c.root))
		c.removeRoot = false
	}
	return errors.Join(errs...)
}

// poll calls cond every 10ms until it returns nil or ctx ends, then returns cond's last error.
func poll(ctx context.Context, what string, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clustertest: %s: %w (last: %w)", what, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// WaitLeaders waits until every running site knows a leader of every group (the meta group
// and every shard), or ctx ends.
func (c *Cluster) WaitLeaders(ctx context.Context) error {
	return poll(ctx, "every group has a leader", func() error {
		led := map[uint64]bool{}
		var groups []uint64
		for i, s := range c.sites {
			if s == nil {
				continue
			}
			for _, g := range s.Groups() {
				if !slices.Contains(groups, g.Group) {
					groups = append(groups, g.Group)
				}
				if g.Replica == 0 {
					continue // not placed here (PlacementVoters)
				}
				if g.Leader == 0 {
					return fmt.Errorf("site %d knows no leader of group %d", i, g.Group)
				}
				led[g.Group] = true
			}
		}
		for _, g := range groups {
			if !led[g] {
				return fmt.Errorf("no running site has a replica of group %d that knows its leader", g)
			}
		}
		return nil
	})
}

// WaitConverged waits until every running site's replica of every shard has the same digest
// at the same applied index, or ctx ends.
func (c *Cluster) WaitConverged(ctx context.Context) error {
	return poll(ctx, "replicas converge", func() error {
		shards := 0
		for _, s := range c.sites {
			if s != nil {
				shards = s.Schema().NShards
			}
		}
		for sh := range shards {
			var first *raftgroup.ReplicaDigest
			for i, s := range c.sites {
				if s == nil || !placedHere(s, stream.ShardID(sh)) {
					continue
				}
				d, err := s.Digest(stream.ShardID(sh))
				if err != nil {
					return fmt.Errorf("site %d: %w", i, err)
				}
				if first == nil {
					first = &d
				} else if d != *first {
					return fmt.Errorf("shard %d: site %d at index %d digest %x, the first at %d %x",
						sh, i, d.Applied, d.Sum[:6], first.Applied, first.Sum[:6])
				}
			}
			if first == nil {
				return fmt.Errorf("shard %d: no running site holds a replica", sh)
			}
		}
		return nil
	})
}

// placedHere reports whether site s runs a replica of shard sh (under PlacementVoters a site
// holds only some shards).
func placedHere(s *raftgroup.Site, sh stream.ShardID) bool {
	for _, g := range s.Groups() {
		if !g.Meta && g.Shard == sh {
			return g.Replica != 0
		}
	}
	return false
}
