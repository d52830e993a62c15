package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// writer stores unique messages through a set of sites from several goroutines and records
// every acknowledged one.
type writer struct {
	mu     sync.Mutex
	acked  []string
	failed atomic.Int64
	n      atomic.Int64
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func startWriter(t testing.TB, dbs func() []*ds.DB, goroutines int) *writer {
	w := &writer{stop: make(chan struct{})}
	// Stop before the cluster's cleanup closes the sites, if the test ends early.
	t.Cleanup(func() { w.finish() })
	for g := range goroutines {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				default:
				}
				list := dbs()
				db := list[(g+i)%len(list)]
				m := ds.Message{ClientID: writerClient(g, i), Topic: fmt.Sprintf("f/%d", i%3), Payload: []byte(fmt.Sprintf("w%d-%d", g, i))}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := db.Store(ctx, m)
				cancel()
				if err != nil {
					w.failed.Add(1)
					if !errors.Is(err, ds.ErrClosed) && !ds.IsRetryable(err) {
						t.Errorf("store: unexpected error %v", err) // not require: a writer goroutine
					}
					continue
				}
				w.n.Add(1)
				w.mu.Lock()
				w.acked = append(w.acked, fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload))
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// writerClient is the client ID of goroutine g's i-th Store: eight per goroutine in turn, so
// that the writers cover every shard (and, through every site, every (site, shard) pair).
func writerClient(g, i int) string { return fmt.Sprintf("w%d-c%d", g, i%8) }

func (w *writer) finish() []string {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
	return w.acked
}

// waitAcked waits until n more messages were acknowledged.
func (w *writer) waitAcked(t testing.TB, n int64, what string) {
	t.Helper()
	target := w.n.Load() + n
	eventually(t, 30*time.Second, what, func() error {
		if got := w.n.Load(); got < target {
			return fmt.Errorf("%d of %d acknowledged", got, target)
		}
		return nil
	})
}

// leaderSite returns the open site that leads the most shard groups.
func (c *testCluster) leaderSite() int {
	best, bestN := -1, -1
	for i, s := range c.sites {
		if s == nil {
			continue
		}
		n := 0
		for _, g := range s.Groups() {
			if !g.Meta && g.Leader != 0 && g.Leader == g.Replica {
				n++
			}
		}
		if n > bestN {
			best, bestN = i, n
		}
	}
	return best
}

func (c *testCluster) requireAllRead(acked []string, timeout time.Duration) {
	c.t.Helper()
	for i, s := range c.sites {
		if s == nil {
			continue
		}
		eventually(c.t, timeout, fmt.Sprintf("site %d holds every acknowledged message once", i), func() error {
			got, err := readAll(c.db(i))
			if err != nil {
				return err
			}
			missing, dups := diff(acked, got)
			if len(missing) > 0 || len(dups) > 0 {
				return fmt.Errorf("%d read, %d acked: missing %d (%.3q), duplicated %d (%.3q)", len(got), len(acked), len(missing), missing, len(dups), dups)
			}
			return nil
		})
	}
}

// TestClusterLeaderLoss: the site leading most shards is closed mid-stream; the others elect
// new leaders and go on taking writes; the closed site restarts and catches up; every
// acknowledged message is on every site exactly once and the replicas are identical.
func TestClusterLeaderLoss(t *testing.T) { testLeaderLoss(t, 3, false) }

// TestClusterLeaderLossFiveSites is TestClusterLeaderLoss with five sites and replication
// factor 3 in the default placement (PlacementVoters): each shard's replicas are on three of
// the five sites, so every site forwards the Stores and reads of the shards it does not hold,
// and the writers, which store through every live site, include forwarded Stores before, during
// and after the loss.
func TestClusterLeaderLossFiveSites(t *testing.T) {
	if testing.Short() {
		t.Skip("five sites")
	}
	testLeaderLoss(t, 5, false)
}

// TestClusterLeaderLossLeaderBatching is TestClusterLeaderLossFiveSites with
// Config.LeaderBatching: every site sends its Store batches of a shard it holds but does not
// lead to the leader's site, so the loss strands batches on their way to the closed leader.
func TestClusterLeaderLossLeaderBatching(t *testing.T) {
	if testing.Short() {
		t.Skip("five sites")
	}
	testLeaderLoss(t, 5, true)
}

func testLeaderLoss(t *testing.T, sites int, leaderBatching bool) {
	const nShards = 4
	c := newTestCluster(t, sites, nShards, func(i int, cfg *Config) { cfg.LeaderBatching = leaderBatching })
	require.Equal(t, PlacementVoters, c.sites[0].Schema().Placement)
	if rf := c.sites[0].Schema().ReplicationFactor; sites > rf {
		// Every shard on rf sites only: every site misses some shard, so it forwards.
		eventually(t, 30*time.Second, "placement on a subset of the sites", func() error {
			l := c.loads(nShards)
			if sum(l) != rf*nShards || slices.Max(l) == nShards {
				return fmt.Errorf("replicas per site %v", l)
			}
			return nil
		})
		c.waitServices()
	}
	var mu sync.Mutex
	var live []*ds.DB
	for i := range sites {
		live = append(live, c.db(i))
	}
	dbs := func() []*ds.DB { mu.Lock(); defer mu.Unlock(); return live }
	const writers = 8
	covered := map[ds.ShardID]bool{}
	for g := range writers {
		for i := range 8 {
			covered[ds.ShardOf(writerClient(g, i), nShards)] = true
		}
	}
	require.Len(t, covered, nShards, "the writers' client IDs miss a shard: %v", covered)
	w := startWriter(t, dbs, writers)
	w.waitAcked(t, 200, "writes before the loss")

	victim := c.leaderSite()
	mu.Lock()
	live = nil
	for i := range c.sites {
		if i != victim {
			live = append(live, c.db(i))
		}
	}
	mu.Unlock()
	c.close(victim)
	w.waitAcked(t, 300, "writes after the leader site closed")
	// Every group has a leader again, on a live site, as some live site sees it (with five
	// sites a site holding a non-voting replica learns of a new leader only from its
	// heartbeats).
	eventually(t, 20*time.Second, "new leaders", func() error {
		led := map[uint64]bool{}
		var groups []uint64
		for i, s := range c.sites {
			if i == victim || s == nil {
				continue
			}
			for _, g := range s.Groups() {
				if len(groups) < len(s.Groups()) && i == (victim+1)%sites {
					groups = append(groups, g.Group)
				}
				if g.Leader != 0 && (g.Meta || g.Leader != uint64(slotOfSite(c, victim))) {
					led[g.Group] = true
				}
			}
		}
		for _, g := range groups {
			if !led[g] {
				return fmt.Errorf("group %d: no leader on a live site", g)
			}
		}
		return nil
	})
	c.restart(victim)
	mu.Lock()
	live = append(live, c.db(victim))
	mu.Unlock()
	w.waitAcked(t, 200, "writes after the restart")
	acked := w.finish()
	t.Logf("%d acknowledged, %d failed attempts", len(acked), w.failed.Load())
	c.requireAllRead(acked, 30*time.Second)
	c.waitConverged(nShards, 30*time.Second)
}

// slotOfSite returns site i's slot, which is its replica ID in every initial group.
func slotOfSite(c *testCluster, i int) int { return slotOf(sortedCopy(c.addrs), c.addrs[i]) }
