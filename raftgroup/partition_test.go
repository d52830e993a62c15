package raftgroup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// newTCPTransport is dragonboat's default transport (the one a NodeHost uses when
// NodeHostConfig.Expert.TransportFactory is nil). dragonboat does not export it (it lives in
// internal/transport), so the test links to it by name; the signature must match
// internal/transport.NewTCPTransport of the dragonboat version in go.mod —
// TestPartitionTransportIsTCP checks that the linked function makes dragonboat's TCP transport.
//
//go:linkname newTCPTransport github.com/lni/dragonboat/v4/internal/transport.NewTCPTransport
func newTCPTransport(config.NodeHostConfig, raftio.MessageHandler, raftio.ChunkHandler) raftio.ITransport

// partitionTable says which site may send to which. Every site's transport consults it on
// every connection and every send, so cutting a path stops traffic at once, and healing it
// lets the next connection attempt (dragonboat retries within about a second) through.
type partitionTable struct {
	mu      sync.RWMutex
	blocked map[[2]string]bool // {from, to} RaftAddresses
	dropped atomic.Int64       // sends and connection attempts refused

	sentMu sync.Mutex
	sent   map[sentKey]time.Time // last message of a group sent from one address to another
}

type sentKey struct {
	from, to string
	group    uint64
}

var errPartitioned = errors.New("test partition: path blocked")

func newPartitionTable() *partitionTable {
	return &partitionTable{blocked: map[[2]string]bool{}, sent: map[sentKey]time.Time{}}
}

func (p *partitionTable) noteSent(from, to string, b *pb.MessageBatch) {
	now := time.Now()
	p.sentMu.Lock()
	defer p.sentMu.Unlock()
	for _, m := range b.Requests {
		p.sent[sentKey{from, to, m.ShardID}] = now
	}
}

// sentSince reports whether from sent a message of group to to after t.
func (p *partitionTable) sentSince(from, to string, group uint64, t time.Time) bool {
	p.sentMu.Lock()
	defer p.sentMu.Unlock()
	return p.sent[sentKey{from, to, group}].After(t)
}

func (p *partitionTable) isBlocked(from, to string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.blocked[[2]string{from, to}]
}

// split cuts every path between two different groups of addresses, in both directions;
// addresses in the same group still reach each other.
func (p *partitionTable) split(groups ...[]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, g := range groups {
		for j, h := range groups {
			if i == j {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					p.blocked[[2]string{a, b}] = true
				}
			}
		}
	}
}

// block cuts the path from one address to another, in that direction only.
func (p *partitionTable) block(from, to string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked[[2]string{from, to}] = true
}

func (p *partitionTable) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.blocked)
}

// faultyTransportFactory makes dragonboat's TCP transport, wrapped so that the sends of a
// blocked path fail.
type faultyTransportFactory struct{ table *partitionTable }

func (f faultyTransportFactory) Create(nhc config.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &faultyTransport{ITransport: newTCPTransport(nhc, h, ch), from: nhc.RaftAddress, table: f.table}
}

// Validate checks a RaftAddress (dragonboat uses the factory's Validate instead of its own
// check when a factory is set).
func (faultyTransportFactory) Validate(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	return err == nil && host != "" && port != ""
}

type faultyTransport struct {
	raftio.ITransport
	from  string
	table *partitionTable
}

func (t *faultyTransport) Name() string { return "faulty-" + t.ITransport.Name() }

func (t *faultyTransport) refuse(target string) bool {
	if t.table.isBlocked(t.from, target) {
		t.table.dropped.Add(1)
		return true
	}
	return false
}

func (t *faultyTransport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	if t.refuse(target) {
		return nil, errPartitioned
	}
	c, err := t.ITransport.GetConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &faultyConn{IConnection: c, t: t, to: target}, nil
}

func (t *faultyTransport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	if t.refuse(target) {
		return nil, errPartitioned
	}
	c, err := t.ITransport.GetSnapshotConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &faultySnapshotConn{ISnapshotConnection: c, t: t, to: target}, nil
}

// faultyConn fails every send once its path is blocked: dragonboat then closes it, drops the
// queued messages, reports the target unreachable and reconnects later through
// GetConnection.
type faultyConn struct {
	raftio.IConnection
	t  *faultyTransport
	to string
}

func (c *faultyConn) SendMessageBatch(b pb.MessageBatch) error {
	if c.t.refuse(c.to) {
		return errPartitioned
	}
	err := c.IConnection.SendMessageBatch(b)
	if err == nil {
		c.t.table.noteSent(c.t.from, c.to, &b)
	}
	return err
}

type faultySnapshotConn struct {
	raftio.ISnapshotConnection
	t  *faultyTransport
	to string
}

func (c *faultySnapshotConn) SendChunk(ch pb.Chunk) error {
	if c.t.refuse(c.to) {
		return errPartitioned
	}
	return c.ISnapshotConnection.SendChunk(ch)
}

// newPartitionCluster bootstraps three sites on the faulty transport, with a short
// ProposalTimeout so that Stores on the losing side of a partition fail fast.
func newPartitionCluster(t *testing.T, nShards int) (*testCluster, *partitionTable) {
	table := newPartitionTable()
	c := newTestCluster(t, 3, nShards, func(i int, cfg *Config) {
		cfg.transport = faultyTransportFactory{table}
		cfg.ProposalTimeout = partitionProposalTimeout
	})
	return c, table
}

const partitionProposalTimeout = 2 * time.Second

// shardClients returns, for every shard, a client ID that maps to it.
func shardClients(prefix string, nShards int) []string {
	out := make([]string, nShards)
	found := 0
	for k := 0; found < nShards; k++ {
		id := fmt.Sprintf("%s-%d", prefix, k)
		if sh := ds.ShardOf(id, nShards); out[sh] == "" {
			out[sh] = id
			found++
		}
	}
	return out
}

// failedStore is a Store that must fail.
type failedStore struct {
	site, shard int
	msg         string // as readAll formats it
	err         error
	took        time.Duration
}

// storeEveryShardExpectingFailure stores one message per shard through each of the given
// sites, all at once (the caller's ctx would allow 20s), and checks that every Store fails
// with a retryable ErrUnavailable within ProposalTimeout plus a margin.
func storeEveryShardExpectingFailure(t *testing.T, c *testCluster, prefix string, nShards int, sites ...int) []failedStore {
	t.Helper()
	var out []failedStore
	for _, i := range sites {
		for sh, client := range shardClients(fmt.Sprintf("%s-s%d", prefix, i), nShards) {
			m := ds.Message{ClientID: client, Topic: "t/partitioned", Payload: []byte(fmt.Sprintf("%s-s%d-%d", prefix, i, sh))}
			out = append(out, failedStore{site: i, shard: sh, msg: fmt.Sprintf("%s %s %s", m.ClientID, m.Topic, m.Payload)})
		}
	}
	var wg sync.WaitGroup
	for k := range out {
		f := &out[k]
		db, err := c.sites[f.site].DB() // not c.db: this may run outside the test's goroutine
		if err != nil {
			f.err = err
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts := strings.SplitN(f.msg, " ", 3)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			_, f.err = db.Store(ctx, ds.Message{ClientID: parts[0], Topic: parts[1], Payload: []byte(parts[2])})
			f.took = time.Since(start)
		}()
	}
	wg.Wait()
	limit := partitionProposalTimeout + 3*time.Second
	for _, f := range out {
		// t.Errorf, not require: this may run outside the test's goroutine.
		switch {
		case f.err == nil:
			t.Errorf("site %d shard %d: Store succeeded without a quorum", f.site, f.shard)
		case !errors.Is(f.err, ds.ErrUnavailable) || !ds.IsRetryable(f.err):
			t.Errorf("site %d shard %d: Store failed with %v, want a retryable ErrUnavailable", f.site, f.shard, f.err)
		case f.took > limit:
			t.Errorf("site %d shard %d: Store failed only after %v (limit %v): %v", f.site, f.shard, f.took, limit, f.err)
		}
	}
	if len(out) > 0 {
		t.Logf("e.g. site %d shard %d failed after %v: %v", out[0].site, out[0].shard, out[0].took.Round(time.Millisecond), out[0].err)
	}
	return out
}

// waitLeadersAmong waits until, for every group, the given sites agree on a leader that is
// one of their own replicas.
func waitLeadersAmong(t *testing.T, c *testCluster, sites []int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("every group led within sites %v", sites), func() error {
		own := map[uint64]map[uint64]bool{} // group → replica IDs on these sites
		var views [][]GroupStatus
		for _, i := range sites {
			gs := c.sites[i].Groups()
			views = append(views, gs)
			for _, g := range gs {
				if own[g.Group] == nil {
					own[g.Group] = map[uint64]bool{}
				}
				if g.Replica != 0 {
					own[g.Group][g.Replica] = true
				}
			}
		}
		for k, g := range views[0] {
			if g.Leader == 0 || !own[g.Group][g.Leader] {
				return fmt.Errorf("site %d: group %d led by %d", sites[0], g.Group, g.Leader)
			}
			for v := 1; v < len(views); v++ {
				if o := views[v][k]; o.Leader != g.Leader {
					return fmt.Errorf("group %d: site %d sees leader %d, site %d sees %d", g.Group, sites[0], g.Leader, sites[v], o.Leader)
				}
			}
		}
		return nil
	})
}

// waitLeadsNothing waits until site i believes it leads no group (CheckQuorum makes a leader
// cut off from its quorum step down).
func waitLeadsNothing(t *testing.T, c *testCluster, i int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("site %d steps down everywhere", i), func() error {
		for _, g := range c.sites[i].Groups() {
			if g.Replica != 0 && g.Leader == g.Replica {
				return fmt.Errorf("group %d: still leader (replica %d, term %d)", g.Group, g.Replica, g.Term)
			}
		}
		return nil
	})
}

// waitReconnected waits until, for every group, every site holding it and its leader have sent
// each other messages of the group since t. After a partition heals, a site's dragonboat
// transport drops messages to a peer it failed to reach, silently, until its circuit breaker's
// backoff (0.25s to 1.5s) has passed and it reconnected — per peer address, and each of the
// StreamConnections (4) connections to a peer carries its own subset of the groups (group ID
// mod 4), so one group's traffic may flow while another's does not yet. A Store forwarded to
// the leader in that window is lost and waits out a proposal attempt (see
// TestPartitionStoreRightAfterHeal).
func waitReconnected(t *testing.T, c *testCluster, table *partitionTable, since time.Time, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "sites reconnected to the leaders", func() error {
		site := map[uint64]map[uint64]int{} // group → replica ID → site
		for i, s := range c.sites {
			for _, g := range s.Groups() {
				if site[g.Group] == nil {
					site[g.Group] = map[uint64]int{}
				}
				if g.Replica != 0 {
					site[g.Group][g.Replica] = i
				}
			}
		}
		for i, s := range c.sites {
			for _, g := range s.Groups() {
				if g.Replica == 0 {
					continue // not placed on this site (PlacementVoters): it sends the group nothing
				}
				l, ok := site[g.Group][g.Leader]
				switch {
				case !ok:
					return fmt.Errorf("site %d: group %d has no known leader (%d)", i, g.Group, g.Leader)
				case l == i:
				case !table.sentSince(c.addrs[i], c.addrs[l], g.Group, since):
					return fmt.Errorf("site %d has sent nothing to site %d (leader of group %d) since the heal", i, l, g.Group)
				case !table.sentSince(c.addrs[l], c.addrs[i], g.Group, since):
					return fmt.Errorf("site %d (leader of group %d) has sent nothing to site %d since the heal", l, g.Group, i)
				}
			}
		}
		return nil
	})
}

// requireFailedStores checks what became of Stores that failed: one that said "nothing
// stored" must not be on any site; one with an unknown outcome may be, but at most once.
func requireFailedStores(t *testing.T, c *testCluster, failed []failedStore) {
	t.Helper()
	for i := range c.sites {
		got, err := readAll(c.db(i))
		require.NoError(t, err)
		count := map[string]int{}
		for _, m := range got {
			count[m]++
		}
		present := 0
		for _, f := range failed {
			n := count[f.msg]
			if n > 0 {
				present++
			}
			require.LessOrEqual(t, n, 1, "site %d: failed Store %q present %d times", i, f.msg, n)
			require.False(t, n > 0 && !strings.Contains(f.err.Error(), "outcome unknown"), "site %d: Store %q failed with %q (not an unknown outcome) but is present", i, f.msg, f.err)
		}
		if i == 0 {
			t.Logf("%d of %d failed Stores ended up stored (unknown outcome)", present, len(failed))
		}
	}
}

// TestPartitionTransportIsTCP: the linked transport is dragonboat's TCP transport (a check of
// the go:linkname above). The partition tests check that the sites run on the wrapper (it
// drops sends).
func TestPartitionTransportIsTCP(t *testing.T) {
	f := faultyTransportFactory{newPartitionTable()}
	tr := f.Create(config.NodeHostConfig{RaftAddress: "127.0.0.1:1"}, func(pb.MessageBatch) {}, func(pb.Chunk) bool { return true })
	got := tr.Name()
	require.Equal(t, "faulty-go-tcp-transport", got, "transport %q", got)
}

// TestPartitionMinority: one site is cut off from the other two (the site leading shard 0's
// group, so that a leader is among the isolated). Stores through it fail within
// ProposalTimeout plus a margin with a retryable ErrUnavailable; it steps down from every
// group it led; the other two elect leaders and take writes. After healing, all three converge
// and hold every acknowledged message exactly once, and the isolated site takes writes again.
func TestPartitionMinority(t *testing.T) {
	const nShards = 4
	c, table := newPartitionCluster(t, nShards)
	var acked []string
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("before-s%d", i), 20)...)
	}
	iso := -1
	for i, s := range c.sites {
		g := s.Groups()[1+0] // shard 0 (index 0 is the meta group)
		require.Equal(t, ds.ShardID(0), g.Shard, "Groups()[1] is %+v", g)
		require.False(t, g.Meta, "Groups()[1] is %+v", g)
		if g.Leader != 0 && g.Leader == g.Replica {
			iso = i
		}
	}
	require.GreaterOrEqual(t, iso, 0, "shard 0 has no leader")
	var majority []int
	var majorityAddrs []string
	for i := range c.sites {
		if i != iso {
			majority = append(majority, i)
			majorityAddrs = append(majorityAddrs, c.addrs[i])
		}
	}
	t.Logf("isolating site %d (leader of shard 0)", iso)
	start := time.Now()
	table.split([]string{c.addrs[iso]}, majorityAddrs)

	var failed []failedStore
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed = storeEveryShardExpectingFailure(t, c, "isolated", nShards, iso)
	}()
	t.Cleanup(func() { <-done }) // before the cluster closes, should the test stop early
	waitLeadersAmong(t, c, majority, 10*time.Second)
	t.Logf("majority has leaders after %v", time.Since(start).Round(time.Millisecond))
	for _, i := range majority {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("majority-s%d", i), 20)...)
	}
	<-done
	waitLeadsNothing(t, c, iso, 5*time.Second)
	require.NotZero(t, table.dropped.Load(), "the partition dropped nothing")

	table.heal()
	healed := time.Now()
	c.waitConverged(nShards, 20*time.Second)
	t.Logf("converged %v after healing", time.Since(healed).Round(time.Millisecond))
	c.requireAllRead(acked, 20*time.Second)
	requireFailedStores(t, c, failed)
	waitReconnected(t, c, table, healed, 10*time.Second)
	acked = append(acked, storeN(t, c.db(iso), "healed", 20)...)
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
}

// TestPartitionNoQuorum: every site is cut off from the two others, so no group has a quorum
// anywhere: Stores through every site fail with a retryable ErrUnavailable within
// ProposalTimeout plus a margin. After healing, writes succeed everywhere again and nothing
// acknowledged is lost or duplicated.
func TestPartitionNoQuorum(t *testing.T) {
	const nShards = 4
	c, table := newPartitionCluster(t, nShards)
	var acked []string
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("before-s%d", i), 20)...)
	}
	table.split([]string{c.addrs[0]}, []string{c.addrs[1]}, []string{c.addrs[2]})
	failed := storeEveryShardExpectingFailure(t, c, "split", nShards, 0, 1, 2)
	for i := range c.sites {
		waitLeadsNothing(t, c, i, 5*time.Second)
	}

	table.heal()
	healed := time.Now()
	waitLeadersAmong(t, c, []int{0, 1, 2}, 20*time.Second)
	waitReconnected(t, c, table, healed, 10*time.Second)
	t.Logf("every group has a leader, reached by every site, %v after healing", time.Since(healed).Round(time.Millisecond))
	for i := range c.sites {
		acked = append(acked, storeN(t, c.db(i), fmt.Sprintf("healed-s%d", i), 20)...)
	}
	c.requireAllRead(acked, 20*time.Second)
	c.waitConverged(nShards, 20*time.Second)
	requireFailedStores(t, c, failed)
}

// TestPartitionStoreRightAfterHeal: a follower that could not reach its leader for a moment
// (it still heard the leader) takes a Store right after the path is open again. Its dragonboat
// transport drops the forwarded proposal without a word while its circuit breaker to the
// leader backs off (0.25s to 0.75s after the first failed connection), and the proposer
// notices only when its attempt times out. With an attempt of min(3s, ProposalTimeout) this
// Store took 3.0s every time (6 of 6 runs); attempts of two election timeouts (1s here) bring
// it to about 1s.
func TestPartitionStoreRightAfterHeal(t *testing.T) {
	table := newPartitionTable()
	c := newTestCluster(t, 3, 1, func(i int, cfg *Config) { cfg.transport = faultyTransportFactory{table} })
	storeN(t, c.db(0), "warm", 5)
	leader := -1
	for i, s := range c.sites {
		if g := s.Groups()[1]; g.Leader != 0 && g.Leader == g.Replica {
			leader = i
		}
	}
	require.GreaterOrEqual(t, leader, 0, "shard 0 has no leader")
	x := (leader + 1) % 3
	table.block(c.addrs[x], c.addrs[leader])
	// Heal right after a refused send: the breaker has just tripped.
	n := table.dropped.Load()
	eventually(t, 5*time.Second, "a refused send", func() error {
		if table.dropped.Load() == n {
			return errors.New("none yet")
		}
		return nil
	})
	table.heal()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.db(x).Store(ctx, ds.Message{ClientID: "right-after-heal", Topic: "t/x", Payload: []byte("p")})
	took := time.Since(start)
	require.NoError(t, err, "Store through site %d (leader: site %d) right after the heal: %v after %v", x, leader, err, took.Round(time.Millisecond))
	require.LessOrEqual(t, took, 2500*time.Millisecond, "Store through site %d (leader: site %d) right after the heal: %v after %v", x, leader, err, took.Round(time.Millisecond))
	t.Logf("Store through site %d right after the heal took %v", x, took.Round(time.Millisecond))
}
