package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// replCluster is three (or n) broker processes in replicated mode, each a site of one
// cluster with 4 shards and 3 replicas of each.
type replCluster struct {
	t     *testing.T
	bin   string
	dirs  []string
	logs  []string
	raft  []string // raft addresses
	procs []*brokerProc
}

// freeAddrs returns n addresses of 127.0.0.1 that were free a moment ago.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func startCluster(t *testing.T, n int) *replCluster {
	t.Helper()
	bin := brokerBinary(t)
	root := t.TempDir()
	c := &replCluster{t: t, bin: bin, raft: freeAddrs(t, n), procs: make([]*brokerProc, n)}
	for i := range n {
		c.dirs = append(c.dirs, filepath.Join(root, fmt.Sprintf("site%d", i)))
		c.logs = append(c.logs, filepath.Join(root, fmt.Sprintf("broker%d.log", i)))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range c.procs {
				if p != nil {
					t.Logf("broker %d log (tail):\n%s", i, p.tail())
				}
			}
		}
	})
	start := time.Now()
	for i := range n { // all at once: a site starts serving once a majority runs
		c.procs[i] = launchProc(t, bin, c.dirs[i], c.logs[i], c.args(i)...)
	}
	for _, p := range c.procs {
		p.waitListening(45 * time.Second)
	}
	t.Logf("%d brokers listening after %v", n, time.Since(start).Round(time.Millisecond))
	return c
}

// args are broker i's flags, the same on every start.
func (c *replCluster) args(i int) []string {
	return []string{"-raft-addr", c.raft[i], "-initial", strings.Join(c.raft, ","), "-shards", "4",
		"-admin", "127.0.0.1:0", "-admin-token", testAdminToken, "-owner", fmt.Sprintf("broker-%d", i), "-proposal-timeout", "5s"}
}

// testAdminToken turns on POST /v1/sites (and the payload views) of the test brokers.
const testAdminToken = "test-admin-token"

// join starts a new broker with -join (its site joins the cluster) and adds it through
// broker via's POST /v1/sites; it returns the new broker's index once it listens.
func (c *replCluster) join(via int) int {
	c.t.Helper()
	i := len(c.procs)
	root := filepath.Dir(c.dirs[0])
	c.dirs = append(c.dirs, filepath.Join(root, fmt.Sprintf("site%d", i)))
	c.logs = append(c.logs, filepath.Join(root, fmt.Sprintf("broker%d.log", i)))
	c.raft = append(c.raft, freeAddrs(c.t, 1)[0])
	args := []string{"-raft-addr", c.raft[i], "-join", "-admin", "127.0.0.1:0", "-admin-token", testAdminToken, "-owner", fmt.Sprintf("broker-%d", i),
		"-proposal-timeout", "5s"}
	p := launchProc(c.t, c.bin, c.dirs[i], c.logs[i], args...)
	c.procs = append(c.procs, p)
	var id string
	select {
	case id = <-p.site:
	case <-p.exited:
		require.Failf(c.t, "broker exited", "joining broker exited: %v\n%s", p.err, p.tail())
	case <-time.After(20 * time.Second):
		require.Failf(c.t, "timed out", "joining broker printed no site ID within 20s\n%s", p.tail())
	}
	body := fmt.Sprintf(`{"id": %q, "raft_address": %q}`, id, c.raft[i])
	// Without the admin token the broker refuses to add a site.
	resp, err := http.Post(c.procs[via].admin+"/v1/sites", "application/json", strings.NewReader(body))
	require.NoError(c.t, err)
	resp.Body.Close()
	require.Equal(c.t, http.StatusUnauthorized, resp.StatusCode, "POST /v1/sites without the admin token: %d, want 401", resp.StatusCode)
	testutil.Eventually(c.t, 30*time.Second, "POST /v1/sites", func() error {
		req, err := http.NewRequest(http.MethodPost, c.procs[via].admin+"/v1/sites", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	})
	p.waitListening(45 * time.Second)
	return i
}

// restart starts broker i again with the same flags and data.
func (c *replCluster) restart(i int) {
	c.t.Helper()
	c.procs[i] = launchProc(c.t, c.bin, c.dirs[i], c.logs[i], c.args(i)...)
	c.procs[i].waitListening(45 * time.Second)
}

// stopAll stops every broker with SIGTERM, one after the other, and expects clean exits.
// One at a time: a broker finishing a write at shutdown (the session of a client that just
// disconnected) needs a quorum of the others, or waits out the proposal timeout.
func (c *replCluster) stopAll() {
	c.t.Helper()
	start := time.Now()
	for _, p := range c.procs {
		p.stop()
	}
	c.t.Logf("all brokers stopped in %v", time.Since(start).Round(time.Millisecond))
}

// cluster is GET /v1/cluster on broker i.
func (c *replCluster) cluster(i int) (raftgroup.ClusterView, error) {
	var v raftgroup.ClusterView
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(c.procs[i].admin + "/v1/cluster")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /v1/cluster: %s", resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// leaderOfMost returns the broker whose site leads the most shards, as broker from sees it
// once every shard has a leader.
func (c *replCluster) leaderOfMost(from int) (int, map[int]int) {
	c.t.Helper()
	var counts map[int]int
	testutil.Eventually(c.t, 20*time.Second, "every shard has a known leader", func() error {
		v, err := c.cluster(from)
		if err != nil {
			return err
		}
		slotAddr := map[int]string{}
		for _, s := range v.Sites {
			slotAddr[s.Slot] = s.Addr
		}
		counts = map[int]int{}
		for _, g := range v.Groups {
			if g.Meta {
				continue
			}
			i := slices.Index(c.raft, slotAddr[g.LeaderSlot])
			if g.LeaderSlot == 0 || i < 0 {
				return fmt.Errorf("shard %d: leader slot %d unknown", g.Shard, g.LeaderSlot)
			}
			counts[i]++
		}
		return nil
	})
	best := 0
	for i := range c.procs {
		if counts[i] > counts[best] {
			best = i
		}
	}
	return best, counts
}

// waitRejoined waits until broker i's site sees the cluster through the meta leader, runs a
// replica of every group, knows every leader, reaches every site, and has applied on every
// shard at least what broker other had applied when the wait began.
func (c *replCluster) waitRejoined(i, other int) {
	c.t.Helper()
	var target map[uint64]uint64
	testutil.Eventually(c.t, 10*time.Second, fmt.Sprintf("the applied indexes of broker %d", other), func() error {
		v, err := c.cluster(other)
		if err != nil {
			return err
		}
		target = appliedIndexes(v)
		return nil
	})
	testutil.Eventually(c.t, 30*time.Second, fmt.Sprintf("broker %d rejoined", i), func() error {
		v, err := c.cluster(i)
		if err != nil {
			return err
		}
		return notRejoined(v, 0, target)
	})
}

// key is a published message: its publisher (the payload's first byte) and sequence number.
type key struct {
	pub byte
	seq int
}

type delivery struct {
	key
	dup bool
}

// durableSub is a paho subscriber with clean session = false, QoS 1, that checks what it
// receives: each publisher's messages first delivered in publishing order, a message
// delivered again only with the DUP flag.
type durableSub struct {
	t    *testing.T
	id   string
	c    paho.Client
	addr string
	recv chan delivery

	seen  map[key]int  // deliveries per message
	last  map[byte]int // per publisher, the last sequence number first delivered
	dups  int
	bad   []string
	phase map[key]int // the connection (1, 2, ...) that first delivered the message
	conn  int
}

func newSub(t *testing.T, id string) *durableSub {
	return &durableSub{t: t, id: id, recv: make(chan delivery, 1<<16), seen: map[key]int{}, last: map[byte]int{},
		phase: map[key]int{}}
}

func (s *durableSub) handler(_ paho.Client, m paho.Message) {
	p := m.Payload()
	if m.Topic() != topic || len(p) < 5 {
		s.recv <- delivery{key: key{pub: 0xff, seq: -1}}
		return
	}
	s.recv <- delivery{key: key{pub: p[0], seq: int(binary.BigEndian.Uint32(p[1:]))}, dup: m.Duplicate()}
}

// connect connects (clean session = false) to addr and returns whether a session was present.
func (s *durableSub) connect(addr string) bool {
	s.t.Helper()
	s.drain()
	s.conn++
	s.addr = addr
	o := paho.NewClientOptions().AddBroker(addr).SetClientID(s.id).SetCleanSession(false).
		SetDefaultPublishHandler(s.handler).SetOrderMatters(true)
	c, present := connect(s.t, o)
	s.c = c
	return present
}

func (s *durableSub) subscribe(filter string) {
	s.t.Helper()
	tok := s.c.Subscribe(filter, 1, s.handler)
	require.True(s.t, tok.WaitTimeout(10*time.Second), "subscribe: %v", tok.Error())
	require.NoError(s.t, tok.Error(), "subscribe: %v", tok.Error())
}

func (s *durableSub) disconnect() {
	s.c.Disconnect(1000) // waits for the PUBACKs of what the handler returned from
	s.drain()
}

// drain takes in what was received so far.
func (s *durableSub) drain() {
	for {
		select {
		case d := <-s.recv:
			s.take(d)
		default:
			return
		}
	}
}

func (s *durableSub) take(d delivery) {
	if d.pub == 0xff {
		s.bad = append(s.bad, "unexpected message")
		return
	}
	n := s.seen[d.key]
	s.seen[d.key] = n + 1
	if n > 0 {
		s.dups++
		if !d.dup {
			s.bad = append(s.bad, fmt.Sprintf("publisher %d message %d delivered again without DUP", d.pub, d.seq))
		}
		return
	}
	s.phase[d.key] = s.conn
	if last, ok := s.last[d.pub]; ok && d.seq <= last {
		s.bad = append(s.bad, fmt.Sprintf("publisher %d: message %d first delivered after %d", d.pub, d.seq, last))
	}
	s.last[d.pub] = d.seq
}

// waitFor waits until every message of want was delivered; it fails on a check's violation.
// If the connection is lost it connects again to the same broker (clean session = false).
func (s *durableSub) waitFor(want []key, timeout time.Duration) {
	s.t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	missing := func() []key {
		var m []key
		for _, k := range want {
			if s.seen[k] == 0 {
				m = append(m, k)
			}
		}
		return m
	}
	for {
		require.Empty(s.t, s.bad, "subscriber: %d violations, e.g. %v", len(s.bad), s.bad[:min(len(s.bad), 10)])
		m := missing()
		if len(m) == 0 {
			return
		}
		select {
		case d := <-s.recv:
			s.take(d)
		case <-tick.C:
			if !s.c.IsConnectionOpen() {
				s.t.Logf("subscriber: connection to %s lost; connecting again", s.addr)
				s.connect(s.addr)
			}
		case <-deadline:
			require.Failf(s.t, "timed out", "subscriber: %d of %d messages not delivered within %v, e.g. %v",
				len(m), len(want), timeout, m[:min(len(m), 10)])
		}
	}
}

func keys(pub byte, seqs []int) []key {
	out := make([]key, len(seqs))
	for i, s := range seqs {
		out[i] = key{pub, s}
	}
	return out
}

func seqRange(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func connectPub(t *testing.T, addr, id string) paho.Client {
	c, _ := connect(t, paho.NewClientOptions().AddBroker(addr).SetClientID(id).SetCleanSession(true))
	return c
}

// dialPub is connectPub for goroutines other than the test's: it returns the failure
// instead of ending the test.
func dialPub(addr, id string) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(addr).SetClientID(id).SetCleanSession(true)
	c := paho.NewClient(o.SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
	}
	return c, nil
}

// A durable subscriber receives and acknowledges messages on broker A and goes away; more are
// published through broker B; it resumes on broker C and gets everything it had not
// acknowledged (each publisher's messages in order, again only with DUP), then live
// messages published through B.
func TestReplicatedResumeOnAnotherBroker(t *testing.T) {
	c := startCluster(t, 3)
	start := time.Now()
	a, b, cc := c.procs[0], c.procs[1], c.procs[2]
	const pubID = 1

	sub := newSub(t, "durable-sub")
	require.False(t, sub.connect(a.addr), "session present on the first connect")
	sub.subscribe("strata-test/+")
	// Published through B at once: B stores every QoS 1 message (-store all, the default in
	// replicated mode), though it may not know the subscription made through A yet.

	pub := connectPub(t, b.addr, "publisher")
	defer pub.Disconnect(250)
	for _, r := range [][2]int{{0, 300}, {300, 800}, {800, 900}} {
		seqs := seqRange(r[0], r[1])
		acked := publish(t, pub, pubID, seqs, 0, nil)
		require.Len(t, acked, len(seqs), "messages %d to %d through broker B: %d PUBACKs", r[0], r[1]-1, len(acked))
		switch r[0] {
		case 0: // received and acknowledged on A, then the subscriber goes away
			sub.waitFor(keys(pubID, seqs), 20*time.Second)
			sub.disconnect()
			t.Logf("300 messages received on broker A (%v)", time.Since(start).Round(time.Millisecond))
		case 300: // published while the subscriber is away; it resumes on C
			require.True(t, sub.connect(cc.addr), "session not present on broker C")
		}
	}
	sub.waitFor(keys(pubID, seqRange(0, 900)), 30*time.Second)
	sub.disconnect()
	again := 0
	for k, n := range sub.seen {
		if n > 1 && sub.phase[k] == 1 {
			again++
		}
	}
	t.Logf("900 messages delivered, %d duplicates (DUP), %d of the 300 received on A delivered again on C; %v",
		sub.dups, again, time.Since(start).Round(time.Millisecond))
	// At most what was in flight when it disconnected (it waited for its PUBACKs).
	require.LessOrEqual(t, again, 100, "%d of the 300 messages acknowledged on broker A delivered again on broker C", again)

	// The admin endpoint serves the site's metrics (Raft gauges) and the sessions'.
	resp, err := http.Get(cc.admin + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err, "GET /metrics: %d %v", resp.StatusCode, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET /metrics: %d %v", resp.StatusCode, err)
	for _, name := range []string{"strata_messages_stored_total", "strata_raft_leader", "strata_session_"} {
		require.Contains(t, string(body), name, "GET /metrics: no %q in\n%.2000s", name, body)
	}
	pub.Disconnect(250)
	c.stopAll()
}

// kill -9 of the broker whose site leads the most shards while publishers publish QoS 1
// through every broker: every PUBACK'd message is delivered to a durable subscriber connected
// to a surviving broker; the killed broker restarted with the same flags rejoins (its site
// catches up and serves MQTT again).
func TestReplicatedKillLeader(t *testing.T) {
	c := startCluster(t, 3)
	start := time.Now()
	victim, counts := c.leaderOfMost(0)
	var survivors []int
	for i := range c.procs {
		if i != victim {
			survivors = append(survivors, i)
		}
	}
	t.Logf("shard leaders per broker %v: killing broker %d", counts, victim)

	sub := newSub(t, "durable-sub")
	sub.connect(c.procs[survivors[0]].addr)
	sub.subscribe("strata-test/+")

	const n1, n2, killAfter = 600, 200, 200
	var (
		acked  = make([][]int, len(c.procs))
		wg     sync.WaitGroup
		killed = make(chan struct{})
		pubs   = make([]paho.Client, len(c.procs))
	)
	for i, p := range c.procs {
		pubs[i] = connectPub(t, p.addr, fmt.Sprintf("pub-%d", i))
	}
	for i := range c.procs {
		wg.Go(func() {
			if i == victim {
				acked[i] = publish(t, pubs[i], byte(i+1), seqRange(0, n1), killAfter, func() {
					go func() { c.procs[victim].kill(); close(killed) }()
				})
				return
			}
			acked[i] = publish(t, pubs[i], byte(i+1), seqRange(0, n1), 0, nil)
		})
	}
	wg.Wait()
	select {
	case <-killed:
	case <-time.After(15 * time.Second):
		require.Failf(t, "timed out", "broker %d not killed: %d PUBACKs", victim, len(acked[victim]))
	}
	for _, p := range pubs {
		p.Disconnect(0)
	}
	t.Logf("PUBACKs of messages 0..%d before and around the kill: %v (%v)", n1-1,
		[]int{len(acked[0]), len(acked[1]), len(acked[2])}, time.Since(start).Round(time.Millisecond))

	// After the kill: the survivors' publishers go on (new connections: a store that failed
	// while the shards elected new leaders closed theirs).
	for _, i := range survivors {
		wg.Go(func() {
			p, err := dialPub(c.procs[i].addr, fmt.Sprintf("pub-%d", i))
			if err != nil {
				t.Errorf("publisher %d: %v", i, err) // not require: a publisher goroutine
				return
			}
			defer p.Disconnect(250)
			acked[i] = append(acked[i], publish(t, p, byte(i+1), seqRange(n1, n1+n2), 0, nil)...)
		})
	}
	wg.Wait()
	var want []key
	for i, a := range acked {
		want = append(want, keys(byte(i+1), a)...)
	}
	for _, i := range survivors {
		require.GreaterOrEqual(t, len(acked[i]), n2, "broker %d: only %d PUBACKs", i, len(acked[i]))
	}
	sub.waitFor(want, 30*time.Second)
	t.Logf("all %d PUBACK'd messages delivered (%d duplicates with DUP) (%v)", len(want), sub.dups,
		time.Since(start).Round(time.Millisecond))

	// The killed broker, restarted with the same flags, rejoins and serves again: messages
	// published through it reach the subscriber.
	c.restart(victim)
	c.waitRejoined(victim, survivors[0])
	p := connectPub(t, c.procs[victim].addr, fmt.Sprintf("pub-%d", victim))
	after := seqRange(n1, n1+100)
	a := publish(t, p, byte(victim+1), after, 0, nil)
	require.Len(t, a, len(after), "through the restarted broker: %d of %d PUBACKs", len(a), len(after))
	p.Disconnect(250)
	sub.waitFor(keys(byte(victim+1), after), 20*time.Second)
	t.Logf("broker %d rejoined and serves (%v)", victim, time.Since(start).Round(time.Millisecond))
	sub.disconnect()
	c.stopAll()
}

// A broker started with -join is added through another broker's POST /v1/sites: its site
// takes over its share of the shards (the others it forwards), and a durable subscriber
// resumes on it with everything published (through another broker) while it was away.
func TestReplicatedJoin(t *testing.T) {
	c := startCluster(t, 3)
	start := time.Now()
	const pubID = 1
	sub := newSub(t, "durable-sub")
	sub.connect(c.procs[0].addr)
	sub.subscribe("strata-test/+")
	pub := connectPub(t, c.procs[1].addr, "publisher")
	defer pub.Disconnect(250)
	first := seqRange(0, 200)
	a := publish(t, pub, pubID, first, 0, nil)
	require.Len(t, a, len(first), "%d of %d PUBACKs", len(a), len(first))
	sub.waitFor(keys(pubID, first), 20*time.Second)
	sub.disconnect()

	d := c.join(0)
	t.Logf("broker %d joined and listens (%v)", d, time.Since(start).Round(time.Millisecond))
	c.waitRejoined(d, 0)
	t.Logf("broker %d holds its share of the shards (%v)", d, time.Since(start).Round(time.Millisecond))

	more := seqRange(200, 500)
	a = publish(t, pub, pubID, more, 0, nil)
	require.Len(t, a, len(more), "%d of %d PUBACKs", len(a), len(more))
	require.True(t, sub.connect(c.procs[d].addr), "session not present on the joined broker")
	sub.waitFor(keys(pubID, more), 20*time.Second)
	sub.disconnect()
	t.Logf("the subscriber resumed on broker %d: %d duplicates (DUP) (%v)", d, sub.dups, time.Since(start).Round(time.Millisecond))
	pub.Disconnect(250)
	c.stopAll()
}
