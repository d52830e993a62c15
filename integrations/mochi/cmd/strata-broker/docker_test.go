package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/strata-mq/strata/internal/dockertest"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// The identifiers of this file start with dk: the other test files of the package are shared.

// dkLabel marks the image, network and containers of the test, for a manual clean-up after an
// interrupted run: docker rm -f $(docker ps -aq -f label=strata-broker-docker-test) etc.
const dkLabel = "strata-broker-docker-test"

const (
	dkTopic    = "strata-docker/data"
	dkShards   = 4
	dkNodes    = 3
	dkMQTTPort = "1883/tcp"
	dkAdmPort  = "8080/tcp"
	// dkProposalTimeout is the brokers' -proposal-timeout: a store without quorum fails (and
	// the hook closes the publisher's connection) after about this long.
	dkProposalTimeout = 2 * time.Second
	// dkAckTimeout is how long a publisher waits for a PUBACK before it counts the publish
	// as stalled (not acknowledged) and reconnects.
	dkAckTimeout = 10 * time.Second
	// dkWindow is how many QoS 1 publishes a publisher keeps unacknowledged; dkPace is its
	// pause between two publishes (about 3 x 60 messages a second at most).
	dkWindow = 8
	dkPace   = 15 * time.Millisecond
)

// dkCluster is three strata-broker containers (replicated mode) from a FROM-scratch image.
// Each is attached to two networks: a private internal network of the test, on which the
// sites reach each other as <name>:7000 (Docker's DNS, fixed --ip) and which the test
// disconnects to cut a site off, and Docker's default bridge, which carries the MQTT and
// admin ports published on 127.0.0.1 (the default bridge resolves no container names, so Raft
// traffic cannot take it).
type dkCluster struct {
	t       *testing.T
	image   string
	network string
	names   []string
	ips     []netip.Addr
	starts  []int // how many times each container was started

	mu    sync.Mutex
	mqtt  []string // tcp://127.0.0.1:port (changes when the container restarts)
	admin []string // http://127.0.0.1:port
}

func (c *dkCluster) mqttAddr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mqtt[i]
}

func (c *dkCluster) adminURL(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.admin[i]
}

// waitListening waits until container i printed "listening on" once per start and records its
// published ports.
func (c *dkCluster) waitListening(i int, timeout time.Duration) {
	c.t.Helper()
	dkWait(c.t, timeout, fmt.Sprintf("broker %d (%s) listens", i, c.names[i]), func() error {
		running, err := dockertest.Running(c.names[i])
		if err != nil {
			return err
		}
		if !running {
			return dkFatalf("container %s is not running:\n%s", c.names[i], dockertest.Logs(c.names[i], 40))
		}
		logs, err := dockertest.Run(time.Minute, "logs", c.names[i])
		if err != nil {
			return err
		}
		if n := strings.Count(logs, "\nlistening on ") + dkBool(strings.HasPrefix(logs, "listening on ")); n < c.starts[i] {
			return fmt.Errorf("printed %q %d times in %d starts", "listening on", n, c.starts[i])
		}
		m, err := dockertest.PublishedAddr(c.names[i], dkMQTTPort)
		if err != nil {
			return err
		}
		a, err := dockertest.PublishedAddr(c.names[i], dkAdmPort)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.mqtt[i], c.admin[i] = "tcp://"+m.String(), "http://"+a.String()
		c.mu.Unlock()
		return nil
	})
}

func dkBool(b bool) int {
	if b {
		return 1
	}
	return 0
}

// view is GET /v1/cluster of broker i.
func (c *dkCluster) view(i int) (raftgroup.ClusterView, error) {
	var v raftgroup.ClusterView
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(c.adminURL(i) + "/v1/cluster")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /v1/cluster of broker %d: %s", i, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// leaderOfMost returns, of the brokers among, the one whose site leads the most shards as
// broker from sees it once every shard has a leader, and the shard leaders per broker.
func (c *dkCluster) leaderOfMost(from int, among []int) (int, map[int]int) {
	c.t.Helper()
	var counts map[int]int
	dkWait(c.t, 30*time.Second, "every shard has a known leader", func() error {
		v, err := c.view(from)
		if err != nil {
			return err
		}
		slotName := map[int]string{}
		for _, s := range v.Sites {
			host, _, _ := strings.Cut(s.Addr, ":")
			slotName[s.Slot] = host
		}
		counts = map[int]int{}
		for _, g := range v.Groups {
			if g.Meta {
				continue
			}
			i := slices.Index(c.names, slotName[g.LeaderSlot])
			if g.LeaderSlot == 0 || i < 0 {
				return fmt.Errorf("shard %d: leader slot %d unknown", g.Shard, g.LeaderSlot)
			}
			counts[i]++
		}
		return nil
	})
	best := among[0]
	for _, i := range among {
		if counts[i] > counts[best] {
			best = i
		}
	}
	return best, counts
}

// waitRejoined waits until broker i's site sees the cluster through the meta leader, reaches
// every site, runs a replica of every group, knows every leader, and has applied on every
// shard at least what broker ref had applied when the wait began.
func (c *dkCluster) waitRejoined(i, ref int, timeout time.Duration) {
	c.t.Helper()
	var target map[uint64]uint64
	dkWait(c.t, 20*time.Second, fmt.Sprintf("the applied indexes of broker %d", ref), func() error {
		v, err := c.view(ref)
		if err != nil {
			return err
		}
		target = appliedIndexes(v)
		return nil
	})
	dkWait(c.t, timeout, fmt.Sprintf("broker %d rejoined", i), func() error {
		v, err := c.view(i)
		if err != nil {
			return err
		}
		return notRejoined(v, dkNodes, target)
	})
}

// dkWait waits for cond like testutil.Eventually, but fails the test at once on a dkFatal
// error.
func dkWait(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	testutil.Eventually(t, timeout, what, func() error {
		err := cond()
		_, ok := err.(dkFatal)
		require.False(t, ok, "%s: %v", what, err)
		return err
	})
}

// dkPause paces a publisher's reconnection attempts (a client's retry back-off, not a wait
// for a condition: nothing signals that a container is back) and ends early with ctx.
func dkPause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// dkFatal is a condition waiting will not fix.
type dkFatal struct{ error }

func dkFatalf(format string, args ...any) error { return dkFatal{fmt.Errorf(format, args...)} }

// dkKey is a published message: its publisher and sequence number (the payload, as text).
type dkKey struct{ pub, seq int }

func dkPayload(k dkKey) []byte { return fmt.Appendf(nil, "p%d %d", k.pub, k.seq) }

func dkParse(p []byte) (dkKey, bool) {
	a, b, ok := strings.Cut(string(p), " ")
	if !ok || len(a) < 2 || a[0] != 'p' {
		return dkKey{}, false
	}
	pub, err1 := strconv.Atoi(a[1:])
	seq, err2 := strconv.Atoi(b)
	return dkKey{pub, seq}, err1 == nil && err2 == nil
}

// Outcomes of a publish.
const (
	dkPending = iota
	dkAcked   // the token completed without error
	dkFailed  // the token completed with an error
	dkStalled // the token did not complete within dkAckTimeout
)

// dkRec is one QoS 1 publish.
type dkRec struct {
	dkKey
	conn      int // the publisher's connection (1, 2, ...) it was sent on
	sent, end time.Time
	outcome   int
}

// dkLedger records every publish of the publishers and every failed connection attempt.
type dkLedger struct {
	mu        sync.Mutex
	recs      map[dkKey]*dkRec
	connFails map[int][]time.Time
	errs      map[string]int // failure texts, counted
}

func newDKLedger() *dkLedger {
	return &dkLedger{recs: map[dkKey]*dkRec{}, connFails: map[int][]time.Time{}, errs: map[string]int{}}
}

func (l *dkLedger) sent(k dkKey, conn int) *dkRec {
	r := &dkRec{dkKey: k, conn: conn, sent: time.Now()}
	l.mu.Lock()
	l.recs[k] = r
	l.mu.Unlock()
	return r
}

func (l *dkLedger) done(r *dkRec, outcome int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.end, r.outcome = time.Now(), outcome
	if err != nil {
		l.errs[dkShortErr(err)]++
	}
}

func (l *dkLedger) connFailed(pub int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.connFails[pub] = append(l.connFails[pub], time.Now())
	l.errs["connect: "+dkShortErr(err)]++
}

func dkShortErr(err error) string {
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

func (l *dkLedger) get(k dkKey) (dkRec, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.recs[k]
	if !ok {
		return dkRec{}, false
	}
	return *r, true
}

// dkCounts are the publishes of one publisher whose outcome became known in a time window (a
// stalled one: dkAckTimeout after it was sent), by outcome, and its failed connection
// attempts then.
type dkCounts struct{ acked, failed, stalled, pending, connFails int }

func (n dkCounts) String() string {
	return fmt.Sprintf("%d acknowledged, %d failed, %d stalled, %d failed connects", n.acked, n.failed, n.stalled, n.connFails)
}

// count counts publisher pub's publishes whose outcome became known in [from, to) (to zero:
// open).
func (l *dkLedger) count(pub int, from, to time.Time) dkCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	in := func(at time.Time) bool { return !at.Before(from) && (to.IsZero() || at.Before(to)) }
	var n dkCounts
	for _, r := range l.recs {
		if r.pub != pub || !in(r.end) {
			continue
		}
		switch r.outcome {
		case dkAcked:
			n.acked++
		case dkFailed:
			n.failed++
		case dkStalled:
			n.stalled++
		default:
			n.pending++
		}
	}
	for _, at := range l.connFails[pub] {
		if in(at) {
			n.connFails++
		}
	}
	return n
}

// ackedSentAfter returns publisher pub's publishes sent at or after from and acknowledged
// before to.
func (l *dkLedger) ackedSentAfter(pub int, from, to time.Time) []dkKey {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []dkKey
	for k, r := range l.recs {
		if r.pub == pub && r.outcome == dkAcked && !r.sent.Before(from) && r.end.Before(to) {
			out = append(out, k)
		}
	}
	return out
}

// failedSentAfter counts publisher pub's publishes sent at or after from that failed or
// stalled.
func (l *dkLedger) failedSentAfter(pub int, from time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.pub == pub && (r.outcome == dkFailed || r.outcome == dkStalled) && !r.sent.Before(from) {
			n++
		}
	}
	return n
}

// acked returns every acknowledged publish, sorted.
func (l *dkLedger) acked() []dkKey {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []dkKey
	for k, r := range l.recs {
		if r.outcome == dkAcked {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b dkKey) int {
		if a.pub != b.pub {
			return a.pub - b.pub
		}
		return a.seq - b.seq
	})
	return out
}

func (l *dkLedger) errSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for e, n := range l.errs {
		parts = append(parts, fmt.Sprintf("%dx %q", n, e))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// dkPublish is publisher pub: with client ID docker-pub-<pub> (clean session), through the
// broker at addr() (read again on every connection attempt), it publishes QoS 1 messages with
// sequence numbers 1, 2, ... at most dkWindow unacknowledged, until ctx is done. When a
// publish fails or stalls, or the connection is lost, it reconnects (auto-reconnect is off)
// and goes on with the next sequence number.
func dkPublish(ctx context.Context, l *dkLedger, pub int, addr func() string) {
	seq, conn := 0, 0
	for ctx.Err() == nil {
		a := addr()
		if a == "" { // the container is down: look again shortly
			dkPause(ctx, 100*time.Millisecond)
			continue
		}
		o := paho.NewClientOptions().AddBroker(a).SetClientID(fmt.Sprintf("docker-pub-%d", pub)).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
			SetKeepAlive(5 * time.Second).SetPingTimeout(5 * time.Second)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			err := tok.Error()
			if err == nil {
				err = fmt.Errorf("no CONNACK within 10s")
			}
			l.connFailed(pub, err)
			c.Disconnect(0)
			dkPause(ctx, 200*time.Millisecond)
			continue
		}
		conn++
		type inflight struct {
			r   *dkRec
			tok paho.Token
		}
		toks := make(chan inflight, dkWindow)
		broken := make(chan struct{})
		waited := make(chan struct{})
		go func() {
			defer close(waited)
			once := sync.OnceFunc(func() { close(broken) })
			for f := range toks {
				switch {
				case !f.tok.WaitTimeout(time.Until(f.r.sent.Add(dkAckTimeout))):
					l.done(f.r, dkStalled, nil)
					once()
				case f.tok.Error() != nil:
					l.done(f.r, dkFailed, f.tok.Error())
					once()
				default:
					l.done(f.r, dkAcked, nil)
				}
			}
		}()
	publishing:
		for ctx.Err() == nil {
			seq++
			r := l.sent(dkKey{pub, seq}, conn)
			select {
			case toks <- inflight{r, c.Publish(dkTopic, 1, false, dkPayload(r.dkKey))}:
			case <-broken:
				// Never sent to the goroutine: the window was full of doomed publishes. Its
				// token fails or completes once the connection is closed below; either way
				// it is not counted as acknowledged.
				l.done(r, dkFailed, fmt.Errorf("abandoned: an earlier publish failed"))
				break publishing
			}
			select {
			case <-broken:
				break publishing
			case <-time.After(dkPace):
			}
		}
		close(toks)
		<-waited // every publish sent has its outcome (within dkAckTimeout)
		c.Disconnect(0)
	}
}

// dkStoreErrors returns the errors of the stores container logged as failed (the hook then
// closes the publisher's connection) between from and to, and after to.
func dkStoreErrors(container string, from, to time.Time) (during, after []string) {
	logs, err := dockertest.Run(time.Minute, "logs", container)
	if err != nil {
		return []string{err.Error()}, nil
	}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "storing a publish") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		_, e, _ := strings.Cut(line, "error=")
		switch {
		case err != nil || at.Before(from):
		case at.Before(to):
			during = append(during, e)
		default:
			after = append(after, e)
		}
	}
	return during, after
}

func dkFirst(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return s[0]
}

// dkWarmUp publishes QoS 1 messages "warm-up <i>" through each broker i until the connected
// subscriber sub received one from each.
func dkWarmUp(t *testing.T, sub *dkSub, c *dkCluster) {
	t.Helper()
	clients := make([]paho.Client, dkNodes)
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.Disconnect(0)
			}
		}
	}()
	dkWait(t, 30*time.Second, "warm-up messages through every broker delivered", func() error {
		sub.drain(10 * time.Millisecond)
		for i := range dkNodes {
			if sub.warm[i] {
				continue
			}
			if clients[i] == nil || !clients[i].IsConnectionOpen() {
				o := paho.NewClientOptions().AddBroker(c.mqttAddr(i)).SetClientID(fmt.Sprintf("docker-warm-%d", i)).
					SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
				clients[i] = paho.NewClient(o)
				if tok := clients[i].Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					return fmt.Errorf("warm-up client %d: connect: %v", i, tok.Error())
				}
			}
			if tok := clients[i].Publish(dkTopic, 1, false, fmt.Sprintf("warm-up %d", i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				return fmt.Errorf("warm-up client %d: publish: %v", i, tok.Error())
			}
			return fmt.Errorf("nothing received yet through broker %d", i)
		}
		return nil
	})
}

// dkSub is a durable subscriber (clean session = false, QoS 1) that checks what it receives
// against the ledger: only published messages, each publisher's messages first delivered in
// publishing order (MQTT orders a connection's messages: a message of an earlier connection
// of the publisher first delivered after one of a later connection is counted apart), again
// only with the DUP flag.
type dkSub struct {
	t    *testing.T
	l    *dkLedger
	id   string
	c    paho.Client
	addr string
	recv chan paho.Message

	warm      map[int]bool // brokers a warm-up message was received from
	seen      map[dkKey]int
	last      map[int]dkKey // per publisher, the highest message first delivered
	total     int           // deliveries
	dups      int
	crossConn int // first delivered after a later message of a later connection of its publisher
	bad       []string
}

func newDKSub(t *testing.T, l *dkLedger, id string) *dkSub {
	return &dkSub{t: t, l: l, id: id, recv: make(chan paho.Message, 1<<16), warm: map[int]bool{},
		seen: map[dkKey]int{}, last: map[int]dkKey{}}
}

// connect connects to addr and returns whether a session was present.
func (s *dkSub) connect(addr string) bool {
	s.t.Helper()
	s.addr = addr
	o := paho.NewClientOptions().AddBroker(addr).SetClientID(s.id).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { s.recv <- m })
	s.c = paho.NewClient(o)
	tok := s.c.Connect()
	require.True(s.t, tok.WaitTimeout(15*time.Second), "subscriber: connect to %s: %v", addr, tok.Error())
	require.NoError(s.t, tok.Error(), "subscriber: connect to %s: %v", addr, tok.Error())
	return tok.(*paho.ConnectToken).SessionPresent()
}

func (s *dkSub) take(m paho.Message) {
	s.total++
	if b, ok := strings.CutPrefix(string(m.Payload()), "warm-up "); ok && m.Topic() == dkTopic {
		i, _ := strconv.Atoi(b)
		s.warm[i] = true
		return
	}
	k, ok := dkParse(m.Payload())
	if m.Topic() != dkTopic || !ok {
		s.bad = append(s.bad, fmt.Sprintf("unexpected message %q on %q", m.Payload(), m.Topic()))
		return
	}
	r, ok := s.l.get(k)
	if !ok {
		s.bad = append(s.bad, fmt.Sprintf("message %v was never published", k))
		return
	}
	n := s.seen[k]
	s.seen[k] = n + 1
	if n > 0 {
		s.dups++
		if !m.Duplicate() {
			s.bad = append(s.bad, fmt.Sprintf("message %v delivered again without DUP", k))
		}
		return
	}
	last, ok := s.last[k.pub]
	switch {
	case !ok || k.seq > last.seq:
		s.last[k.pub] = k
	default:
		lr, _ := s.l.get(last)
		if lr.conn == r.conn {
			s.bad = append(s.bad, fmt.Sprintf("publisher %d: message %d first delivered after %d (same connection %d)", k.pub, k.seq, last.seq, r.conn))
		} else {
			s.crossConn++
		}
	}
}

// waitFor receives until every message of want was delivered (reconnecting to the same
// broker if the connection is lost), failing on a violation of the checks.
func (s *dkSub) waitFor(want []dkKey, timeout time.Duration) {
	s.t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	next := 0 // want[:next] were delivered
	for {
		require.Empty(s.t, s.bad, "subscriber: %d violations, e.g. %v", len(s.bad), s.bad[:min(len(s.bad), 10)])
		for next < len(want) && s.seen[want[next]] > 0 {
			next++
		}
		if next == len(want) {
			return
		}
		select {
		case m := <-s.recv:
			s.take(m)
		case <-tick.C:
			if !s.c.IsConnectionOpen() {
				s.t.Logf("subscriber: connection to %s lost; connecting again", s.addr)
				s.connect(s.addr)
			}
		case <-deadline:
			var missing []dkKey
			for _, k := range want[next:] {
				if s.seen[k] == 0 {
					missing = append(missing, k)
				}
			}
			require.Failf(s.t, "timed out", "subscriber: %d of %d acknowledged messages not delivered within %v, e.g. %v",
				len(missing), len(want), timeout, missing[:min(len(missing), 10)])
		}
	}
}

// drain takes what arrives until nothing did for quiet.
func (s *dkSub) drain(quiet time.Duration) {
	for {
		select {
		case m := <-s.recv:
			s.take(m)
		case <-time.After(quiet):
			return
		}
	}
}

// TestDockerKillAndPartition runs three replicated strata-broker containers (-rf 3, -shards 4)
// on a private Docker network. A durable subscriber subscribes through broker 0 and goes away;
// three publishers, one through each broker, publish QoS 1 messages all along, while
//
//	(a) the broker whose site leads the most shards is killed (docker kill: SIGKILL), the
//	    others go on acknowledging, and it is restarted (docker start) and rejoins;
//	(b) another broker is cut off the private network (docker network disconnect): its
//	    publisher's publishes fail or stall, none sent after the cut is acknowledged before the
//	    reconnect, the others go on; it is reconnected and rejoins.
//
// The subscriber then resumes on the third broker (neither killed nor cut off) and must
// receive every acknowledged message: again only with DUP, each publisher connection's
// messages first delivered in order, nothing that was never published.
func TestDockerKillAndPartition(t *testing.T) {
	t.Logf("Docker Engine %s", dockertest.SkipUnlessAvailable(t))
	testStart := time.Now()
	elapsed := func() time.Duration { return time.Since(testStart).Round(time.Millisecond) }

	bin := filepath.Join(t.TempDir(), "strata-broker")
	require.NoError(t, dockertest.BuildStatic(".", bin))
	id := dockertest.UniqueID("strata-broker")
	c := &dkCluster{t: t, image: id + ":test", network: id + "-raft", starts: make([]int, dkNodes),
		mqtt: make([]string, dkNodes), admin: make([]string, dkNodes)}
	for i := range dkNodes {
		c.names = append(c.names, fmt.Sprintf("%s-%d", id, i))
	}
	t.Cleanup(func() { dockertest.Remove(t, 80, c.image, c.network, c.names...) })
	dockertest.BuildScratchImage(t, c.image, dkLabel, bin, "strata-broker", 1883, 7000, 8080)
	subnet := dockertest.CreateNetwork(t, c.network, dkLabel, true)
	c.ips = dockertest.FixedAddrs(subnet, 11, dkNodes)
	var raft []string
	for _, n := range c.names {
		raft = append(raft, n+":7000")
	}
	for i, name := range c.names {
		dockertest.Must(t, "create", "--name", name, "--hostname", name, "--label", dkLabel,
			"--network", c.network, "--ip", c.ips[i].String(), "-p", "127.0.0.1::1883", "-p", "127.0.0.1::8080", c.image,
			"-listen", ":1883", "-admin", ":8080", "-data", "/data", "-raft-addr", raft[i], "-initial", strings.Join(raft, ","),
			"-shards", fmt.Sprint(dkShards), "-rf", "3", "-proposal-timeout", dkProposalTimeout.String(), "-open-timeout", "2m",
			"-log-level", "info")
		dockertest.Must(t, "network", "connect", "bridge", name)
	}
	dockertest.Must(t, append([]string{"start"}, c.names...)...)
	for i := range dkNodes {
		c.starts[i]++
	}
	for i := range dkNodes {
		c.waitListening(i, 90*time.Second)
	}
	t.Logf("network %s %v, sites %v at %v; brokers listening after %v: MQTT %v", c.network, subnet, raft, c.ips, elapsed(), c.mqtt)
	for i := range dkNodes {
		c.waitRejoined(i, i, 60*time.Second) // every group has a leader, every site is reached
	}

	// The durable subscriber subscribes through broker 0 and disconnects; before that, a
	// warm-up client publishes through each broker until one of its messages is delivered
	// (every broker serves and delivers before the publishers start).
	l := newDKLedger()
	sub := newDKSub(t, l, "docker-durable-sub")
	require.False(t, sub.connect(c.mqttAddr(0)), "subscriber: session present on the first connect")
	tok := sub.c.Subscribe("strata-docker/+", 1, nil)
	require.True(t, tok.WaitTimeout(15*time.Second), "subscribe: %v", tok.Error())
	require.NoError(t, tok.Error(), "subscribe: %v", tok.Error())
	dkWarmUp(t, sub, c)
	sub.c.Disconnect(1000)
	sub.drain(200 * time.Millisecond)
	t.Logf("subscriber subscribed through broker 0, received a warm-up message through every broker, disconnected (%v)", elapsed())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stopPublishers := func() {
		cancel()
		wg.Wait()
	}
	defer stopPublishers()
	for i := range dkNodes {
		wg.Go(func() { dkPublish(ctx, l, i+1, func() string { return c.mqttAddr(i) }) })
	}
	waitAcks := func(what string, pubs []int, since time.Time, n int, timeout time.Duration) {
		t.Helper()
		dkWait(t, timeout, what, func() error {
			for _, p := range pubs {
				if got := l.count(p+1, since, time.Time{}); got.acked < n {
					return fmt.Errorf("publisher %d: %v since %v; errors: %s", p+1, got, since.Format("15:04:05.000"), l.errSummary())
				}
			}
			return nil
		})
	}
	waitAcks("acknowledged publishes through every broker", []int{0, 1, 2}, testStart, 100, 30*time.Second)

	// (a) Kill the broker whose site leads the most shards.
	k, counts := c.leaderOfMost(0, []int{0, 1, 2})
	others := slices.DeleteFunc([]int{0, 1, 2}, func(i int) bool { return i == k })
	dockertest.Must(t, "kill", c.names[k])
	killed := time.Now()
	t.Logf("(a) shard leaders per broker %v: killed broker %d (%v)", counts, k, elapsed())
	waitAcks("(a) the two others acknowledge publishes", others, killed, 150, 60*time.Second)
	dkWait(t, 30*time.Second, "(a) the killed broker's publisher fails to connect", func() error {
		if n := l.count(k+1, killed, time.Time{}); n.connFails < 3 || time.Since(killed) < 8*time.Second {
			return fmt.Errorf("publisher %d: %v", k+1, n)
		}
		return nil
	})
	dockertest.Must(t, "start", c.names[k])
	c.starts[k]++
	restarted := time.Now()
	c.waitListening(k, 90*time.Second)
	c.waitRejoined(k, others[0], 60*time.Second)
	waitAcks("(a) the restarted broker acknowledges publishes", []int{k}, restarted, 20, 60*time.Second)
	aDone := time.Now()
	t.Logf("(a) broker %d restarted, rejoined and acknowledges again %v after the restart (%v)", k,
		aDone.Sub(restarted).Round(time.Millisecond), elapsed())
	for i := range dkNodes {
		t.Logf("(a) publisher %d through broker %d: down %v: %v; up again: %v", i+1, i,
			restarted.Sub(killed).Round(time.Millisecond), l.count(i+1, killed, restarted), l.count(i+1, restarted, aDone))
	}

	// (b) Cut off another broker, the one of the other two leading the most shards.
	p, counts := c.leaderOfMost(others[0], others)
	rest := slices.DeleteFunc([]int{0, 1, 2}, func(i int) bool { return i == p })
	dockertest.Must(t, "network", "disconnect", c.network, c.names[p])
	cut := time.Now()
	t.Logf("(b) shard leaders per broker %v: cut broker %d off the network (%v)", counts, p, elapsed())
	waitAcks("(b) the two others acknowledge publishes", rest, cut, 100, 60*time.Second)
	dkWait(t, 60*time.Second, "(b) publishes through the cut-off broker fail", func() error {
		if a := l.ackedSentAfter(p+1, cut, time.Now()); len(a) > 0 {
			return dkFatalf("publisher %d: %d publishes acknowledged by the cut-off broker %d, e.g. %v", p+1, len(a), p, a[0])
		}
		if n := l.count(p+1, cut, time.Time{}); n.failed+n.stalled+n.connFails < 5 || time.Since(cut) < 4*dkProposalTimeout {
			return fmt.Errorf("publisher %d: %v", p+1, n)
		}
		return nil
	})
	reconnected := time.Now()
	dockertest.Must(t, "network", "connect", "--ip", c.ips[p].String(), c.network, c.names[p])
	if a := l.ackedSentAfter(p+1, cut, reconnected); len(a) > 0 {
		require.Failf(t, "publishes acknowledged by a cut-off broker", "(b) publisher %d: %d publishes acknowledged by the cut-off broker %d, e.g. %v", p+1, len(a), p, a[0])
	}
	c.waitRejoined(p, rest[0], 60*time.Second)
	rejoined := time.Now()
	waitAcks("(b) the reconnected broker acknowledges publishes", []int{p}, reconnected, 20, 60*time.Second)
	bDone := time.Now()
	t.Logf("(b) broker %d reconnected; rejoined (GET /v1/cluster) after %v, acknowledges again after %v (%v); "+
		"of its publisher's publishes %d sent after the reconnect failed, %d sent after the rejoin", p,
		rejoined.Sub(reconnected).Round(time.Millisecond), bDone.Sub(reconnected).Round(time.Millisecond), elapsed(),
		l.failedSentAfter(p+1, reconnected), l.failedSentAfter(p+1, rejoined))
	for i := range dkNodes {
		t.Logf("(b) publisher %d through broker %d: cut off %v: %v; reconnected: %v", i+1, i,
			reconnected.Sub(cut).Round(time.Millisecond), l.count(i+1, cut, reconnected), l.count(i+1, reconnected, bDone))
	}
	stopPublishers()
	during, after := dkStoreErrors(c.names[p], cut, reconnected)
	t.Logf("(b) broker %d logged %d failed stores while cut off, e.g. %s; %d after the reconnect, e.g. %s", p,
		len(during), dkFirst(during), len(after), dkFirst(after))
	for i := range dkNodes {
		t.Logf("publisher %d through broker %d, whole run: %v", i+1, i, l.count(i+1, testStart, time.Time{}))
	}
	t.Logf("publish and connect errors: %s", l.errSummary())

	// The subscriber resumes on the broker neither killed nor cut off.
	r := rest[0]
	if r == k {
		r = rest[1]
	}
	want := l.acked()
	require.True(t, sub.connect(c.mqttAddr(r)), "subscriber: session not present on broker %d", r)
	resumed := time.Now()
	sub.waitFor(want, 90*time.Second)
	sub.drain(time.Second) // whatever else comes is checked too
	sub.c.Disconnect(1000)
	sub.drain(200 * time.Millisecond)
	require.Empty(t, sub.bad, "subscriber: %d violations, e.g. %v", len(sub.bad), sub.bad[:min(len(sub.bad), 10)])
	notAcked := 0
	for k := range sub.seen {
		if rec, _ := l.get(k); rec.outcome != dkAcked {
			notAcked++
		}
	}
	t.Logf("subscriber resumed on broker %d: all %d acknowledged messages delivered within %v; %d distinct messages "+
		"delivered in all (%d of them not acknowledged to their publisher), %d deliveries, %d again with DUP, "+
		"%d first delivered after a later connection's message of their publisher (%v)",
		r, len(want), time.Since(resumed).Round(time.Millisecond), len(sub.seen), notAcked, sub.total, sub.dups,
		sub.crossConn, elapsed())
}
