package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// The partition tests with five sites, replication factor 3 and the default placement
// (PlacementVoters): a shard's replicas are on three of the five sites, so every site forwards
// the Stores and reads of the shards it holds no replica of (forward.go) — the writers store
// through every site, so forwarded Stores run through the partition, from and to the cut-off
// site. The test partition cuts the Raft transport only: the site service (forwarded calls)
// still connects, so the cut-off site can forward its Stores of the shards it does not hold to
// the majority, and the majority's forwarders can still call it (where it answers for its
// replicas, which have lost their quorum).

const (
	fiveSites      = 5
	fiveSiteShards = 10
)

// newFiveSiteCluster bootstraps five sites (RF 3, PlacementVoters) on the faulty transport,
// with Config.LeaderBatching as given, waits until the placement is settled (every shard on three sites, every site missing some
// shard) and every site's service address is recorded.
func newFiveSiteCluster(t *testing.T, leaderBatching bool) (*testCluster, *partitionTable) {
	table := newPartitionTable()
	c := newTestCluster(t, fiveSites, fiveSiteShards, func(i int, cfg *Config) {
		cfg.transport = faultyTransportFactory{table}
		cfg.ProposalTimeout = partitionProposalTimeout
		cfg.LeaderBatching = leaderBatching
	})
	require.Equal(t, PlacementVoters, c.sites[0].Schema().Placement)
	require.Equal(t, 3, c.sites[0].Schema().ReplicationFactor)
	c.waitPlanDone(0, 60*time.Second)
	c.waitServices()
	eventually(t, 30*time.Second, "every shard on three sites, every site missing some", func() error {
		l := c.loads(fiveSiteShards)
		if sum(l) != 3*fiveSiteShards || slices.Max(l) == fiveSiteShards || slices.Min(l) == 0 {
			return fmt.Errorf("replicas per site %v", l)
		}
		return nil
	})
	return c, table
}

// storeAttempt is one Store of the tracking writer.
type storeAttempt struct {
	msg       string // as readAll formats it
	site      int
	shard     stream.ShardID
	forwarded bool // the site held no replica of the shard when the Store started
	started   time.Time
	err       error
}

// trackingWriter stores single, unique messages through every site (goroutine g's i-th Store
// goes through site (g+i) mod sites, to shard (i/sites+g) mod shards, so each goroutine covers
// every (site, shard) pair) and records every outcome: acknowledged, failed with "nothing
// stored" (ErrUnavailable without ErrOutcomeUnknown), or failed with an unknown outcome.
type trackingWriter struct {
	c    *testCluster
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu       sync.Mutex
	attempts []storeAttempt
}

func startTrackingWriter(t *testing.T, c *testCluster, nShards, goroutines int) *trackingWriter {
	w := &trackingWriter{c: c, stop: make(chan struct{})}
	t.Cleanup(w.finish) // before the cluster's cleanup closes the sites
	dbs := make([]*ds.DB, len(c.sites))
	for i := range c.sites {
		dbs[i] = c.db(i)
	}
	sites := slices.Clone(c.sites)
	for g := range goroutines {
		clients := shardClients(fmt.Sprintf("tw%d", g), nShards)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				default:
				}
				site, sh := (g+i)%len(dbs), (i/len(dbs)+g)%nShards
				m := ds.Message{ClientID: clients[sh], Topic: fmt.Sprintf("p/%d", i%3), Payload: []byte(fmt.Sprintf("tw%d-%d", g, i))}
				a := storeAttempt{msg: fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload), site: site, shard: stream.ShardID(sh),
					forwarded: sites[site].shardSM(stream.ShardID(sh)) == nil, started: time.Now()}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, a.err = dbs[site].Store(ctx, m)
				cancel()
				if a.err != nil && !ds.IsRetryable(a.err) {
					// Not require: a writer goroutine.
					t.Errorf("site %d shard %d (forwarded %v): Store failed with a non-retryable error: %v", site, sh, a.forwarded, a.err)
				}
				w.mu.Lock()
				w.attempts = append(w.attempts, a)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

func (w *trackingWriter) finish() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

func (w *trackingWriter) snapshot() []storeAttempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.attempts)
}

// count returns the acknowledged Stores that keep says yes to.
func (w *trackingWriter) count(keep func(storeAttempt) bool) int {
	n := 0
	for _, a := range w.snapshot() {
		if a.err == nil && (keep == nil || keep(a)) {
			n++
		}
	}
	return n
}

// waitAcked waits until n Stores that keep says yes to were acknowledged.
func (w *trackingWriter) waitAcked(t *testing.T, n int, timeout time.Duration, what string, keep func(storeAttempt) bool) {
	t.Helper()
	eventually(t, timeout, what, func() error {
		if got := w.count(keep); got < n {
			return fmt.Errorf("%d of %d acknowledged; %s", got, n, w.summary())
		}
		return nil
	})
}

func (w *trackingWriter) summary() string {
	var acked, fwd, notStored, unknown int
	for _, a := range w.snapshot() {
		switch {
		case a.err == nil:
			acked++
			if a.forwarded {
				fwd++
			}
		case errors.Is(a.err, ds.ErrOutcomeUnknown):
			unknown++
		default:
			notStored++
		}
	}
	return fmt.Sprintf("%d acknowledged (%d forwarded), %d failed with nothing stored, %d with an unknown outcome", acked, fwd, notStored, unknown)
}

// requireOutcomes checks every site's reads against the writer's record: every acknowledged
// message exactly once, no message of a Store that failed with "nothing stored"
// (ErrUnavailable without ErrOutcomeUnknown), and no message twice (every attempt stores a new
// payload, so this covers the unknown outcomes too). Each site reads every shard, forwarding
// the reads of the shards it holds no replica of.
func (w *trackingWriter) requireOutcomes(t *testing.T, timeout time.Duration) {
	t.Helper()
	var acked, notStored []string
	var failedForwarded, unknown int
	for _, a := range w.snapshot() {
		switch {
		case a.err == nil:
			acked = append(acked, a.msg)
		case errors.Is(a.err, ds.ErrOutcomeUnknown):
			unknown++
		default:
			require.ErrorIs(t, a.err, ds.ErrUnavailable, "site %d shard %d: a retryable failure is ErrUnavailable", a.site, a.shard)
			notStored = append(notStored, a.msg)
			if a.forwarded {
				failedForwarded++
			}
		}
	}
	t.Logf("checking reads: %s; %d of the 'nothing stored' failures forwarded", w.summary(), failedForwarded)
	w.c.requireAllRead(acked, timeout)
	for i := range w.c.sites {
		got, err := readAll(w.c.db(i))
		require.NoError(t, err, "site %d", i)
		count := make(map[string]int, len(got))
		for _, m := range got {
			count[m]++
			require.Equal(t, 1, count[m], "site %d: message %q read twice", i, m)
		}
		for _, m := range notStored {
			require.Zero(t, count[m], "site %d: %q was answered 'nothing stored' but is read", i, m)
		}
		stored := 0
		for _, a := range w.snapshot() {
			if a.err != nil && errors.Is(a.err, ds.ErrOutcomeUnknown) && count[a.msg] > 0 {
				stored++
			}
		}
		if i == 0 {
			t.Logf("%d of %d Stores with an unknown outcome ended up stored", stored, unknown)
		}
	}
}

// waitShardLeadersAmong waits until every shard group has a leader that is a replica on one of
// the given sites, as every one of those sites that holds the shard sees it.
func waitShardLeadersAmong(t *testing.T, c *testCluster, sites []int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("every shard led within sites %v", sites), func() error {
		for sh := range stream.ShardID(fiveSiteShards) {
			own := map[uint64]bool{}
			for _, i := range sites {
				if g := c.sites[i].Groups()[1+int(sh)]; g.Replica != 0 {
					own[g.Replica] = true
				}
			}
			if len(own) < 2 {
				return fmt.Errorf("shard %d: %d replicas on sites %v", sh, len(own), sites)
			}
			for _, i := range sites {
				g := c.sites[i].Groups()[1+int(sh)]
				if g.Replica != 0 && (g.Leader == 0 || !own[g.Leader]) {
					return fmt.Errorf("site %d: shard %d led by %d (replicas here: %v)", i, sh, g.Leader, own)
				}
			}
		}
		return nil
	})
}

// leads returns the shards whose group site i leads.
func (c *testCluster) leads(i int) []stream.ShardID {
	var out []stream.ShardID
	for _, g := range c.sites[i].Groups() {
		if !g.Meta && g.LeaderHere {
			out = append(out, g.Shard)
		}
	}
	return out
}

// TestPartitionFiveSitesLeaderIsolated: five sites, RF 3, ten shards (PlacementVoters), writers
// through every site. The site leading the most shard groups is cut off (Raft) from the other
// four. Its Stores of the shards it holds fail with retryable errors, while the ones it
// forwards go on; the majority elects leaders for every shard and takes writes to every shard
// through every site. After healing, every site reads every acknowledged message exactly once,
// nothing answered "nothing stored" is read, and the replicas converge.
//
// Subtests: local-batching (default: a site proposes its batches through its own replica) and
// leader-batching (Config.LeaderBatching: batches go to the leader's site, so the cut also
// strands batches sent to the old leader).
func TestPartitionFiveSitesLeaderIsolated(t *testing.T) {
	if testing.Short() {
		t.Skip("five sites")
	}
	forBatchings(t, testPartitionFiveSitesLeaderIsolated)
}

// forBatchings runs f as the subtests local-batching and leader-batching (Config.LeaderBatching).
func forBatchings(t *testing.T, f func(t *testing.T, leaderBatching bool)) {
	for _, lb := range []bool{false, true} {
		name := "local-batching"
		if lb {
			name = "leader-batching"
		}
		t.Run(name, func(t *testing.T) { f(t, lb) })
	}
}

func testPartitionFiveSitesLeaderIsolated(t *testing.T, leaderBatching bool) {
	c, table := newFiveSiteCluster(t, leaderBatching)
	w := startTrackingWriter(t, c, fiveSiteShards, 10)
	w.waitAcked(t, 300, 30*time.Second, "writes before the partition", nil)
	require.Positive(t, w.count(func(a storeAttempt) bool { return a.forwarded }), "no forwarded Store acknowledged")

	iso := c.leaderSite()
	require.NotEmpty(t, c.leads(iso), "site %d leads no shard", iso)
	testPartitionFiveSites(t, c, table, w, iso, leaderBatching)
}

// TestPartitionFiveSitesForwarderIsolated: as TestPartitionFiveSitesLeaderIsolated, but the
// site cut off is one that leads the fewest shard groups (a follower, ideally of every shard
// it holds), and it holds no replica of some shards, which it forwards throughout.
// Subtests as TestPartitionFiveSitesLeaderIsolated's.
func TestPartitionFiveSitesForwarderIsolated(t *testing.T) {
	if testing.Short() {
		t.Skip("five sites")
	}
	forBatchings(t, testPartitionFiveSitesForwarderIsolated)
}

func testPartitionFiveSitesForwarderIsolated(t *testing.T, leaderBatching bool) {
	c, table := newFiveSiteCluster(t, leaderBatching)
	w := startTrackingWriter(t, c, fiveSiteShards, 10)
	w.waitAcked(t, 300, 30*time.Second, "writes before the partition", nil)
	iso, fewest := -1, fiveSiteShards+1
	for i := range c.sites {
		if n := len(c.leads(i)); n < fewest {
			iso, fewest = i, n
		}
	}
	testPartitionFiveSites(t, c, table, w, iso, leaderBatching)
}

func testPartitionFiveSites(t *testing.T, c *testCluster, table *partitionTable, w *trackingWriter, iso int, leaderBatching bool) {
	held := c.heldShards(iso, fiveSiteShards)
	require.Less(t, len(held), fiveSiteShards, "site %d holds every shard: it forwards nothing", iso)
	require.NotEmpty(t, held, "site %d holds no shard", iso)
	var majority []int
	var majorityAddrs []string
	for i := range c.sites {
		if i != iso {
			majority = append(majority, i)
			majorityAddrs = append(majorityAddrs, c.addrs[i])
		}
	}
	t.Logf("isolating site %d: holds shards %v, leads %v; %s", iso, held, c.leads(iso), w.summary())
	cut := time.Now()
	table.split([]string{c.addrs[iso]}, majorityAddrs)

	waitShardLeadersAmong(t, c, majority, 20*time.Second)
	led := time.Now()
	t.Logf("the majority leads every shard %v after the cut", led.Sub(cut).Round(time.Millisecond))
	waitLeadsNothing(t, c, iso, 10*time.Second)
	// The majority takes writes to every shard, through every majority site; the isolated site
	// still forwards the Stores of the shards it holds no replica of (its service calls are
	// not cut).
	after := func(a storeAttempt) bool { return a.started.After(led) }
	w.waitAcked(t, 200, 30*time.Second, "writes through the majority during the partition", after)
	eventually(t, 30*time.Second, "every shard written through the majority during the partition", func() error {
		per := make([]int, fiveSiteShards)
		for _, a := range w.snapshot() {
			if a.err == nil && a.site != iso && a.started.After(led) {
				per[a.shard]++
			}
		}
		if slices.Min(per) < 3 {
			return fmt.Errorf("acknowledged per shard %v", per)
		}
		return nil
	})
	w.waitAcked(t, 5, 30*time.Second, "Stores forwarded from the isolated site during the partition", func(a storeAttempt) bool {
		return a.site == iso && a.forwarded && a.started.After(led)
	})
	// Which (majority site, shard) pairs stored nothing during the partition: a site that
	// forwards a shard to the isolated site keeps calling it (see the report in
	// TestPartitionForwardToIsolatedHolder).
	stuck := map[int][]stream.ShardID{}
	for _, i := range majority {
		for sh := range stream.ShardID(fiveSiteShards) {
			if w.count(func(a storeAttempt) bool { return a.site == i && a.shard == sh && a.started.After(led) }) == 0 {
				stuck[i] = append(stuck[i], sh)
			}
		}
	}
	t.Logf("during the partition: %s; (majority site → shards without an acknowledged Store) %v", w.summary(), stuck)
	// Nothing through the isolated site's own replicas got acknowledged during the cut (with
	// LeaderBatching, the isolated site sends the batches of the shards it holds but does not
	// lead to the leader's site through the service, which this partition does not cut).
	for _, a := range w.snapshot() {
		if leaderBatching {
			break
		}
		if a.err == nil && a.site == iso && !a.forwarded && a.started.After(cut.Add(partitionProposalTimeout+time.Second)) {
			require.Failf(t, "a Store through a cut-off replica acknowledged", "site %d shard %d: %q started %v after the cut", iso, a.shard, a.msg, a.started.Sub(cut))
		}
	}
	require.NotZero(t, table.dropped.Load(), "the partition dropped nothing")

	table.heal()
	healed := time.Now()
	waitReconnected(t, c, table, healed, 20*time.Second)
	// Writes to every shard through every site, the isolated one included, after the heal.
	eventually(t, 60*time.Second, "every (site, shard) written after the heal", func() error {
		n := 0
		var missing []string
		for i := range c.sites {
			for sh := range stream.ShardID(fiveSiteShards) {
				if w.count(func(a storeAttempt) bool { return a.site == i && a.shard == sh && a.started.After(healed) }) == 0 {
					missing = append(missing, fmt.Sprintf("%d/%d", i, sh))
				} else {
					n++
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("site/shard without an acknowledged Store since the heal: %v", missing)
		}
		return nil
	})
	t.Logf("every site stored to every shard %v after the heal", time.Since(healed).Round(time.Millisecond))
	w.finish()
	w.requireOutcomes(t, 30*time.Second)
	c.waitConverged(fiveSiteShards, 30*time.Second)
}

// TestPartitionForwardToIsolatedHolder: a site X without a replica of shard S forwards S's
// Stores to the holder it last succeeded with; when that holder is cut off (Raft) from the
// other two, which elect a leader and take S's writes, X's Stores of S should succeed again
// (through another holder) while the partition lasts.
//
// It failed before forwarder.callTo tried the next holder after a "nothing stored" answer: the
// cut-off holder's ErrUnavailable ended every call, and X could not store S until the
// partition healed.
func TestPartitionForwardToIsolatedHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("five sites")
	}
	c, table := newFiveSiteCluster(t, false)
	// X: site 0; S: a shard it does not hold.
	const x = 0
	held := c.heldShards(x, fiveSiteShards)
	var s stream.ShardID
	for sh := range stream.ShardID(fiveSiteShards) {
		if !slices.Contains(held, sh) {
			s = sh
			break
		}
	}
	client := clientOf(s, fiveSiteShards, "fwd-iso")
	store := func(p string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.db(x).Store(ctx, ds.Message{ClientID: client, Topic: "f/iso", Payload: []byte(p)})
		return err
	}
	require.NoError(t, store("before"))
	c.sites[x].fwd.mu.Lock()
	prefer := c.sites[x].fwd.mu.prefer[s]
	c.sites[x].fwd.mu.Unlock()
	iso := slices.IndexFunc(c.sites, func(st *Site) bool { return st.Service() == prefer })
	require.GreaterOrEqual(t, iso, 0, "no site serves %q", prefer)
	require.NotEqual(t, x, iso)
	var others []string
	var majority []int
	for i := range c.sites {
		if i != iso {
			others = append(others, c.addrs[i])
			majority = append(majority, i)
		}
	}
	t.Logf("site %d forwards shard %d to site %d; cutting site %d off", x, s, iso, iso)
	table.split([]string{c.addrs[iso]}, others)
	waitShardLeadersAmong(t, c, majority, 20*time.Second)
	waitLeadsNothing(t, c, iso, 10*time.Second)
	// The other two holders take S's writes (through site 1..4 that hold it, or forward to them).
	var errs []error
	eventually(t, 20*time.Second, fmt.Sprintf("a Store of shard %d through site %d during the partition", s, x), func() error {
		err := store(fmt.Sprintf("during-%d", len(errs)))
		if err != nil {
			errs = append(errs, err)
		}
		return err
	})
	c.sites[x].fwd.mu.Lock()
	after := c.sites[x].fwd.mu.prefer[s]
	c.sites[x].fwd.mu.Unlock()
	t.Logf("%d Stores failed first, e.g. %v; site %d now forwards shard %d to site %d", len(errs), errors.Join(errs[:min(len(errs), 1)]...),
		x, s, slices.IndexFunc(c.sites, func(st *Site) bool { return st.Service() == after }))
}
