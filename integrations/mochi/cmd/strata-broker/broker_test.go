package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// buildBroker builds this command into a temporary directory once per test binary.
var buildBroker = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "strata-broker-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "strata-broker")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// brokerBinary returns the built broker, skipping the test with -short or without a go
// command to build it.
func brokerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the broker binary")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the broker:", err)
	}
	bin, err := buildBroker()
	require.NoError(t, err)
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := buildBroker(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

// brokerProc is one run of the broker binary.
type brokerProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string        // tcp://host:port
	admin  string        // http://host:port with -admin
	exited chan struct{} // closed when the process exited
	err    error         // its exit status, set before exited is closed
	log    string        // its stderr

	listening chan string // the address printed
	site      chan string // replicated mode: the site ID printed ("site ID raft ADDRESS")
}

// startProc runs the broker on a free port of 127.0.0.1 over dataDir and waits for the
// address it prints.
// More flags may be given (-admin 127.0.0.1:0: its address is read too).
func startProc(t *testing.T, bin, dataDir, logPath string, more ...string) *brokerProc {
	t.Helper()
	p := launchProc(t, bin, dataDir, logPath, more...)
	p.waitListening(20 * time.Second)
	return p
}

// launchProc runs the broker like startProc without waiting for it to listen (a replicated
// broker listens only once a majority of the initial sites runs): see waitListening.
func launchProc(t *testing.T, bin, dataDir, logPath string, more ...string) *brokerProc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	fmt.Fprintf(f, "----- start %s %q\n", time.Now().Format(time.RFC3339Nano), more)
	args := append([]string{"-listen", "127.0.0.1:0", "-data", dataDir, "-owner", "test-broker", "-log-level", "warn"}, more...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = f
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	err = cmd.Start()
	if err != nil {
		f.Close()
	}
	require.NoError(t, err)
	p := &brokerProc{t: t, cmd: cmd, exited: make(chan struct{}), log: logPath, listening: make(chan string, 1),
		site: make(chan string, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "site "); ok {
				p.site <- strings.Fields(a)[0]
			}
			if a, ok := strings.CutPrefix(sc.Text(), "admin on "); ok {
				p.admin = "http://" + a // printed before the listening line
			}
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				p.listening <- a
			}
		}
		p.err = cmd.Wait() // after stdout is read to its end, as Wait requires
		f.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitListening waits for the address the broker prints and sets p.addr (and p.admin).
func (p *brokerProc) waitListening(timeout time.Duration) {
	p.t.Helper()
	select {
	case a := <-p.listening:
		p.addr = "tcp://" + a
	case <-p.exited:
		require.Failf(p.t, "broker exited", "broker exited before listening: %v\n%s", p.err, p.tail())
	case <-time.After(timeout):
		require.Failf(p.t, "timed out", "broker did not print its address within %v\n%s", timeout, p.tail())
	}
}

func (p *brokerProc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *brokerProc) kill() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Kill())
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		require.Fail(p.t, "broker not gone 10s after SIGKILL")
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *brokerProc) stop() {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
		require.NoError(p.t, p.err, "broker exited with %v after SIGTERM\n%s", p.err, p.tail())
	case <-time.After(15 * time.Second):
		require.Failf(p.t, "timed out", "broker still running 15s after SIGTERM\n%s", p.tail())
	}
}

const topic = "strata-test/data"

// payload is a message: the broker life it was published in, its sequence number.
func payload(life byte, seq int) []byte {
	b := make([]byte, 5, 16)
	b[0] = life
	binary.BigEndian.PutUint32(b[1:], uint32(seq))
	return append(b, "payload"...)
}

func connect(t *testing.T, o *paho.ClientOptions) (paho.Client, bool) {
	t.Helper()
	c := paho.NewClient(o.SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect %s: %v", o.ClientID, tok.Error())
	require.NoError(t, tok.Error(), "connect %s: %v", o.ClientID, tok.Error())
	return c, tok.(*paho.ConnectToken).SessionPresent()
}

// publish sends QoS 1 messages for seqs, in order, at most window unacknowledged, until all
// were sent or one failed (the connection was lost). It returns the sequence numbers whose
// PUBACK arrived (token.Wait success). After killAfter PUBACKs (if > 0), onKill is called
// once, while publishing continues.
func publish(t *testing.T, c paho.Client, life byte, seqs []int, killAfter int, onKill func()) []int {
	const window = 64
	type inflight struct {
		seq int
		tok paho.Token
	}
	toks := make(chan inflight, window)
	var failed atomic.Bool
	var acked []int
	done := make(chan struct{})
	deadline := time.Now().Add(20 * time.Second)
	go func() {
		defer close(done)
		for f := range toks {
			if !f.tok.WaitTimeout(time.Until(deadline)) || f.tok.Error() != nil {
				failed.Store(true)
				continue
			}
			acked = append(acked, f.seq)
			if len(acked) == killAfter {
				onKill()
			}
		}
	}()
	for _, seq := range seqs {
		if failed.Load() {
			break
		}
		toks <- inflight{seq, c.Publish(topic, 1, false, payload(life, seq))}
	}
	close(toks)
	<-done
	return acked
}

// A durable subscriber gets every message whose PUBACK the publisher had, across a kill -9
// of the broker during publishing and its restart on the same data.
func TestKillDuringPublish(t *testing.T) {
	bin := brokerBinary(t)
	const n, killAfter = 2000, 1000
	dataDir := filepath.Join(t.TempDir(), "data")
	logPath := filepath.Join(t.TempDir(), "broker.log")
	start := time.Now()
	b := startProc(t, bin, dataDir, logPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", b.tail())
		}
	})

	type msg struct {
		life byte
		seq  int
	}
	recv := make(chan msg, 4*n)
	handler := func(_ paho.Client, m paho.Message) {
		p := m.Payload()
		if m.Topic() != topic || len(p) < 5 {
			recv <- msg{life: 0xff, seq: -1}
			return
		}
		recv <- msg{life: p[0], seq: int(binary.BigEndian.Uint32(p[1:]))}
	}
	subOpts := func(addr string) *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker(addr).SetClientID("durable-sub").SetCleanSession(false).
			SetDefaultPublishHandler(handler).SetOrderMatters(true)
	}
	pubOpts := func(addr string) *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker(addr).SetClientID("publisher").SetCleanSession(true)
	}

	// A durable subscription, then the subscriber goes away.
	sub, present := connect(t, subOpts(b.addr))
	require.False(t, present, "session present on the first connect")
	tok := sub.Subscribe("strata-test/+", 1, handler)
	require.True(t, tok.WaitTimeout(10*time.Second), "subscribe: %v", tok.Error())
	require.NoError(t, tok.Error(), "subscribe: %v", tok.Error())
	sub.Disconnect(250)

	// Life 1: publish all n, kill -9 the broker after killAfter PUBACKs.
	pub, _ := connect(t, pubOpts(b.addr))
	seqs := make([]int, n)
	for i := range seqs {
		seqs[i] = i
	}
	killed := make(chan struct{})
	acked1 := publish(t, pub, 1, seqs, killAfter, func() {
		go func() { b.kill(); close(killed) }()
	})
	select {
	case <-killed:
	case <-time.After(15 * time.Second):
		require.Failf(t, "timed out", "broker not killed: %d PUBACKs", len(acked1))
	}
	pub.Disconnect(0)
	require.GreaterOrEqual(t, len(acked1), killAfter, "%d of %d messages acknowledged before the kill, want from %d to %d", len(acked1), n, killAfter, n-1)
	require.Less(t, len(acked1), n, "%d of %d messages acknowledged before the kill, want from %d to %d", len(acked1), n, killAfter, n-1)
	t.Logf("life 1: %d PUBACKs before kill -9 (%v)", len(acked1), time.Since(start).Round(time.Millisecond))

	// Life 2 on the same data: the subscriber comes back, the publisher sends the rest.
	b = startProc(t, bin, dataDir, logPath, "-admin", "127.0.0.1:0")
	sub, present = connect(t, subOpts(b.addr))
	defer sub.Disconnect(250)
	require.True(t, present, "session not present after the restart")
	ackedSet := make(map[int]bool, n)
	for _, s := range acked1 {
		ackedSet[s] = true
	}
	var rest []int
	for _, s := range seqs {
		if !ackedSet[s] {
			rest = append(rest, s)
		}
	}
	pub, _ = connect(t, pubOpts(b.addr))
	defer pub.Disconnect(250)
	acked2 := publish(t, pub, 2, append(rest, n), 0, nil) // n: the end marker
	require.Len(t, acked2, len(rest)+1, "life 2: %d of %d messages acknowledged", len(acked2), len(rest)+1)
	for _, s := range acked2 {
		ackedSet[s] = true
	}

	// Every acknowledged message, duplicates allowed, each life's in publishing order
	// (counting the first delivery of each message).
	var (
		seen      = map[msg]bool{}
		got       = map[int]bool{}
		last      = map[byte]int{1: -1, 2: -1}
		delivered int
		dups      int
		marker    bool
	)
	timeout := time.After(20 * time.Second)
	for !marker || len(got) < n {
		select {
		case m := <-recv:
			delivered++
			require.False(t, m.life != 1 && m.life != 2, "unexpected message: %+v", m)
			k := msg{life: m.life, seq: m.seq}
			if seen[k] {
				dups++
				continue
			}
			seen[k] = true
			require.Greater(t, m.seq, last[m.life], "life %d: message %d delivered after %d", m.life, m.seq, last[m.life])
			last[m.life] = m.seq
			if m.seq == n {
				marker = true
			} else {
				got[m.seq] = true
			}
		case <-timeout:
			var missing []int
			for s := range n {
				if ackedSet[s] && !got[s] {
					missing = append(missing, s)
				}
			}
			if len(missing) > 10 {
				missing = missing[:10]
			}
			require.Failf(t, "timed out", "after 20s: %d distinct of %d acknowledged messages delivered, marker %v; missing e.g. %v",
				len(got), n, marker, missing)
		}
	}
	// Messages of life 1 without a PUBACK may be delivered (stored before the kill) too.
	extra := 0
	for k := range seen {
		if k.life == 1 && k.seq < n && !slices.Contains(acked1, k.seq) {
			extra++
		}
	}
	t.Logf("delivered %d (%d duplicates, %d life-1 messages without a PUBACK); total %v",
		delivered, dups, extra, time.Since(start).Round(time.Millisecond))

	// The admin endpoint serves the DB's and the sessions' metrics.
	resp, err := http.Get(b.admin + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err, "GET /metrics: %d %v", resp.StatusCode, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET /metrics: %d %v", resp.StatusCode, err)
	for _, name := range []string{"strata_subscriptions ", "strata_session_"} {
		require.Contains(t, string(body), name, "GET /metrics: no %q in\n%.2000s", name, body)
	}

	// A clean stop on SIGTERM, the durable subscriber still connected.
	pub.Disconnect(250)
	b.stop()
}

// appliedIndexes returns the applied index of every shard group in a site's cluster view.
func appliedIndexes(v raftgroup.ClusterView) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for _, g := range v.Groups {
		if !g.Meta {
			out[g.Group] = g.Applied
		}
	}
	return out
}

// notRejoined says why the site whose view is v has not rejoined its cluster (nil once it has):
// its meta copy is fresh, it sees every site up (and sites of them, if sites > 0), no replica
// is being added, promoted or removed, and every group placed on it has a replica running
// here, a known leader and, for a shard, applied at least target.
func notRejoined(v raftgroup.ClusterView, sites int, target map[uint64]uint64) error {
	if !v.MetaFresh {
		return fmt.Errorf("meta not fresh")
	}
	if sites > 0 && len(v.Sites) != sites {
		return fmt.Errorf("%d sites", len(v.Sites))
	}
	for _, s := range v.Sites {
		if s.Health != raftgroup.HealthUp {
			return fmt.Errorf("site %d (%s) %s", s.Slot, s.Addr, s.Health)
		}
	}
	mySlot := 0
	for _, s := range v.Sites {
		if s.ID == v.Site {
			mySlot = s.Slot
		}
	}
	for _, r := range v.Replicas {
		if r.Transition != "" {
			return fmt.Errorf("group %d replica %d on slot %d: %s", r.Group, r.ReplicaID, r.Slot, r.Transition)
		}
	}
	for _, g := range v.Groups {
		placed := false // under the default placement a site holds only some shards
		for _, r := range v.Replicas {
			placed = placed || r.Group == g.Group && r.Slot == mySlot
		}
		switch {
		case !placed:
			continue // held elsewhere: this site forwards its calls
		case g.Replica == 0:
			return fmt.Errorf("group %d: placed here, no replica running", g.Group)
		case g.Leader == 0:
			return fmt.Errorf("group %d: no leader known", g.Group)
		case !g.Meta && g.Applied < target[g.Group]:
			return fmt.Errorf("shard %d: applied %d < %d", g.Shard, g.Applied, target[g.Group])
		}
	}
	return nil
}
