package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/stretchr/testify/require"
)

// TestProcessStoppedHolder runs five ds-node processes with five shards, replication factor 3
// and the default placement (PlacementVoters), and hangs (SIGSTOP: its connections still
// accept, nothing answers) one node H holding a replica of a shard S while a node F that holds
// none stores and reads S's messages: F forwards them over the site service. Three rounds, on
// three shards: H a follower of S's group, the one F forwards to first when it prefers no
// holder (if some F does; else any follower); then S's leader (the site F forwards S's writes
// to once it has stored through it: a Submit's reply names the leader), F's first call after
// the stop a write; then the leader again, F's first call a read. While H is stopped, stores
// through F succeed again within a bound (a write forwarded to the hung node fails with
// outcome unknown, the next ones go elsewhere) and F reads every acknowledged message exactly
// once, in order (a forwarded read moves on from the hung node after an attempt timeout).
// Then H continues; the replicas converge and every node reads each acknowledged message
// exactly once and nothing that was answered "nothing stored".
//
// A store through F may fail with outcome unknown only when it was forwarded to the hung node
// (the error names its service address): found by this test, F's long poll of a shard's tail
// was cut off by a read's attempt timeout, which closed the connection its forwarded Stores to
// a live node shared; and with no holder preferred, every write went to the hung node first.
func TestProcessStoppedHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	const (
		nodes  = 5
		shards = 5
		rf     = 3
	)
	testStart := time.Now()
	procs, urls, _ := startProcessCluster(t, nodes, shards, rf, "-admin-token", testAdminToken)

	// A stopped process ignores SIGTERM (and keeps its connections open) until continued:
	// continue whatever is still stopped before startProcessCluster's cleanup kills the nodes
	// (cleanups run last registered first). A failed test first gets F's goroutines (SIGQUIT).
	stopped := map[int]bool{}
	dumpNode := -1
	t.Cleanup(func() {
		for i := range stopped {
			if stopped[i] {
				signalProc(t, procs[i], syscall.SIGCONT)
			}
		}
		if t.Failed() && dumpNode >= 0 && procs[dumpNode].running() {
			t.Logf("node %d's forwarding goroutines (SIGQUIT):\n%s", dumpNode, goroutineDump(t, procs[dumpNode]))
		}
	})

	// The placement settles: every shard on exactly rf nodes, the replicas caught up.
	waitConvergedHeld(t, urls, shards, rf, 60*time.Second)
	// Which node serves forwarded calls where (the errors name service addresses).
	var service map[int]string
	eventually(t, 30*time.Second, "every node's service address", func() error {
		addrs, err := serviceAddrs(urls)
		if err != nil {
			return err
		}
		if len(addrs) != nodes {
			return fmt.Errorf("service addresses known of %d nodes: %v", len(addrs), addrs)
		}
		t.Logf("service addresses: %v", addrs)
		service = addrs
		return nil
	})
	hung := "" // the service address of the node stopped now

	log := newAckLog()
	sent := 0
	// store sends one message of client through base and records its outcome as the writer
	// does (a failed attempt is never sent again: every message has a payload of its own).
	store := func(base string, node int, client, prefix string) storeResult {
		m := storeMessage{
			ClientID:   client,
			Topic:      fmt.Sprintf("t/%s/%d", prefix, sent%5),
			PayloadB64: base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%d", prefix, sent)),
		}
		sent++
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		started := time.Now()
		res, err := postStore(ctx, base, []storeMessage{m})
		done := time.Now()
		switch {
		case err != nil:
			log.failure("transport error")
			res.status, res.err.Error = -1, err.Error()
		case res.status == http.StatusOK:
			log.mu.Lock()
			log.acked = append(log.acked, ack{msg: m, ref: res.refs[0], node: node, started: started, done: done})
			log.mu.Unlock()
		case res.status == http.StatusServiceUnavailable && strings.Contains(res.err.Error, "nothing stored"):
			log.failure("status 503 nothing stored")
			log.mu.Lock()
			log.notStored = append(log.notStored, m.PayloadB64)
			log.mu.Unlock()
		case res.status == http.StatusServiceUnavailable && strings.Contains(res.err.Error, "outcome unknown") &&
			hung != "" && strings.Contains(res.err.Error, hung):
			log.failure("status 503 outcome unknown")
		case res.status == http.StatusServiceUnavailable && strings.Contains(res.err.Error, "outcome unknown"):
			// Only a call to the hung node may end without an answer.
			log.failure("status 503 outcome unknown from a live node")
		default:
			log.failure(fmt.Sprintf("status %d", res.status))
		}
		if res.status != http.StatusOK {
			t.Logf("%s store of %s through node %d: %d %s (%v)", done.Format("15:04:05.000"), decode(m.PayloadB64), node, res.status, res.err.Error, done.Sub(started).Round(time.Millisecond))
		}
		return res
	}

	var used []int // shards of earlier rounds
	rounds := []struct{ stopLeader, readFirst bool }{
		{stopLeader: false}, // H: the follower F calls first without a preference
		{stopLeader: true},  // F's next write goes to H
		{stopLeader: true, readFirst: true},
	}
	for round, rd := range rounds {
		stopLeader := rd.stopLeader
		role := map[bool]string{false: "follower", true: "leader"}[stopLeader]
		prefix := fmt.Sprintf("hs%d", round)

		// S: a shard of no earlier round whose group has a leader every holder agrees on; F: a
		// node without a replica of S; H: a holder of S, its leader or a follower.
		var s, f, h int
		eventually(t, 30*time.Second, "a shard with a known leader", func() error {
			held, err := heldByNode(urls, shards)
			if err != nil {
				return err
			}
			var fallback []int
			sts := map[int]statusResponse{}
			for i := range nodes {
				if sts[i], err = getStatus(urls[i]); err != nil {
					return fmt.Errorf("node %d: %w", i, err)
				}
			}
			for sh := range shards {
				if slices.Contains(used, sh) {
					continue
				}
				var holders, others []int
				for i := range nodes {
					if slices.Contains(held[i], sh) {
						holders = append(holders, i)
					} else {
						others = append(others, i)
					}
				}
				leader, agree := -1, true
				for _, i := range holders {
					g, ok := shardGroupStatus(sts[i], sh)
					first, _ := shardGroupStatus(sts[holders[0]], sh)
					if !ok || g.Leader == 0 || g.Leader != first.Leader || g.Term != first.Term {
						agree = false
					}
					if g.LeaderHere {
						leader = i
					}
				}
				if len(holders) != rf || len(others) == 0 || leader < 0 || !agree {
					continue
				}
				if stopLeader {
					s, f, h = sh, others[0], leader
					return nil
				}
				// A follower: the one F tries first when it prefers no holder, if any F
				// tries a follower first (there F's writes go after a forwarded call to the
				// hung node forgot it); else any.
				for _, o := range others {
					addr, err := firstTarget(urls[o], sh)
					if err != nil {
						return fmt.Errorf("node %d: %w", o, err)
					}
					first := slices.IndexFunc(holders, func(i int) bool { return sts[i].RaftAddress == addr })
					if first >= 0 && holders[first] != leader {
						s, f, h = sh, o, holders[first]
						return nil
					}
				}
				if fallback == nil {
					fallback = []int{sh, others[0], holders[slices.IndexFunc(holders, func(i int) bool { return i != leader })]}
				}
			}
			if fallback != nil {
				s, f, h = fallback[0], fallback[1], fallback[2]
				return nil
			}
			return fmt.Errorf("no shard outside %v with rf holders agreeing on a leader (held per node: %v; leaders: %s)", used, held, leaders(urls))
		})
		used = append(used, s)
		dumpNode = f
		var clients []string
		for j := 0; len(clients) < 3; j++ {
			if c := fmt.Sprintf("%s-c%d", prefix, j); int(ds.ShardOf(c, shards)) == s {
				clients = append(clients, c)
			}
		}
		held, err := heldByNode(urls, shards)
		require.NoError(t, err)
		first, err := firstTarget(urls[f], s)
		require.NoError(t, err)
		t.Logf("round %d: shard %d on nodes %v; stores and reads through node %d (holds %v, forwards to raft address %s first without a preference); stopping node %d (raft address %s), S's %s (leaders: %s)",
			round, s, holdersOf(held, s), f, held[f], first, h, raftAddr(t, urls[h]), role, leaders(urls))

		// Warm up: F stores S's messages (so that it forwards S's writes to the leader) and
		// reads them.
		eventually(t, 30*time.Second, "stores through F before the stop", func() error {
			for k := range 10 {
				if res := store(urls[f], f, clients[k%len(clients)], prefix); res.status != http.StatusOK {
					return fmt.Errorf("store through node %d: %d %s", f, res.status, res.err.Error)
				}
			}
			return nil
		})
		waitAllRead(t, log, map[int]string{f: urls[f]}, 30*time.Second)

		// Hang H.
		signalProc(t, procs[h], syscall.SIGSTOP)
		stopped[h], hung = true, service[h]
		stoppedAt := time.Now()
		t.Logf("round %d: %s SIGSTOP node %d", round, stoppedAt.Format("15:04:05.000"), h)
		if rd.readFirst {
			// F's first call after the stop is a read (in the rounds before, a write).
			waitAllRead(t, log, map[int]string{f: urls[f]}, 60*time.Second)
			t.Logf("round %d: node %d read everything %v after the stop", round, f, time.Since(stoppedAt).Round(time.Millisecond))
		}

		// (1) Stores through F succeed again while H is stopped: at least 200 stores sent since
		// the stop, the last 20 of them acknowledged in a row.
		sentBefore, streak := sent, 0
		var firstAck time.Duration
		eventually(t, 90*time.Second, "stores through F succeed with H stopped", func() error {
			for k := range 10 {
				if store(urls[f], f, clients[k%len(clients)], prefix).status == http.StatusOK {
					if streak++; firstAck == 0 {
						firstAck = time.Since(stoppedAt)
					}
				} else {
					streak = 0
				}
			}
			if n := sent - sentBefore; n < 200 || streak < 20 {
				return fmt.Errorf("%d stores sent since the stop, the last %d acknowledged; %s", n, streak, log.summary())
			}
			return nil
		})
		t.Logf("round %d: %d stores through node %d since the stop in %v, first acknowledged after %v; %s",
			round, sent-sentBefore, f, time.Since(stoppedAt).Round(time.Millisecond), firstAck.Round(time.Millisecond), log.summary())

		// (2) F reads every acknowledged message exactly once, in order, H still stopped.
		readFrom := time.Now()
		waitAllRead(t, log, map[int]string{f: urls[f]}, 60*time.Second)
		waitAllReadVia(t, log, map[int]string{f: urls[f]}, 60*time.Second, getAdminRead)
		t.Logf("round %d: node %d read everything in %v with node %d stopped", round, f, time.Since(readFrom).Round(time.Millisecond), h)
		require.True(t, procs[h].running(), "node %d exited while stopped", h)

		// (3) H continues: the replicas converge, every node reads every acknowledged message.
		signalProc(t, procs[h], syscall.SIGCONT)
		stopped[h], hung = false, ""
		t.Logf("round %d: %s SIGCONT node %d after %v", round, time.Now().Format("15:04:05.000"), h, time.Since(stoppedAt).Round(time.Millisecond))
		waitConvergedHeld(t, urls, shards, rf, 60*time.Second)
		waitAllRead(t, log, urls, 60*time.Second)
		waitAllReadVia(t, log, urls, 60*time.Second, getAdminRead)
		waitSameReads(t, urls, 30*time.Second)
	}
	dumpNode = -1

	// Failed stores: F never stopped, so no transport error; each a 503.
	log.mu.Lock()
	failures := maps.Clone(log.failures)
	log.mu.Unlock()
	for class := range failures {
		require.Contains(t, []string{"status 503", "status 503 nothing stored", "status 503 outcome unknown"}, class, "a store failed otherwise: %v", failures)
	}
	t.Logf("stores: %s", log.summary())

	for i, p := range procs {
		require.NoError(t, p.terminate(15*time.Second), "node %d: SIGTERM", i)
		require.Contains(t, p.tail(3), "msg=stopped", "node %d did not log msg=stopped:\n%s", i, p.tail(10))
	}
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}

// holdersOf returns the nodes holding shard sh, in heldByNode's answer.
func holdersOf(held map[int][]int, sh int) []int {
	var out []int
	for _, i := range sortedKeys(held) {
		if slices.Contains(held[i], sh) {
			out = append(out, i)
		}
	}
	return out
}

// serviceAddrs maps each node to the address where it serves forwarded calls, as node 0's
// cluster view (GET /v1/cluster) has it.
func serviceAddrs(urls map[int]string) (map[int]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var view raftgroup.ClusterView
	if err := getJSON(ctx, urls[0]+"/v1/cluster", &view); err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, i := range sortedKeys(urls) {
		st, err := getStatus(urls[i])
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		for _, sv := range view.Sites {
			if sv.Addr == st.RaftAddress && sv.Service != "" {
				out[i] = sv.Service
			}
		}
	}
	return out, nil
}

// firstTarget returns the node that the node at base forwards shard sh's calls to first when
// it prefers none, by its Raft address (raftgroup's forwarder.targets: the other sites holding a member replica of
// the shard, in the meta state's order, rotated by the shard and the forwarding site's slot),
// from its cluster view (GET /v1/cluster) and every node's /status.
func firstTarget(base string, sh int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var view raftgroup.ClusterView
	if err := getJSON(ctx, base+"/v1/cluster", &view); err != nil {
		return "", err
	}
	st, err := getStatus(base)
	if err != nil {
		return "", err
	}
	g, ok := shardGroupStatus(st, sh)
	if !ok {
		return "", fmt.Errorf("no group of shard %d", sh)
	}
	slotOf := map[int]raftgroup.SiteView{}
	mySlot := -1
	for _, sv := range view.Sites {
		slotOf[sv.Slot] = sv
		if sv.Addr == st.RaftAddress {
			mySlot = sv.Slot
		}
	}
	var slots []int
	for _, r := range view.Replicas {
		sv, ok := slotOf[r.Slot]
		if r.Group != g.Group || r.Member == "" || r.Remove || !ok || sv.State == raftgroup.SiteLeft || sv.Service == "" || sv.Slot == mySlot {
			continue
		}
		slots = append(slots, r.Slot)
	}
	if len(slots) == 0 || mySlot < 0 {
		return "", fmt.Errorf("shard %d: no other holder, or no slot of this site, in %+v", sh, view)
	}
	return slotOf[slots[(sh+mySlot)%len(slots)]].Addr, nil
}

func raftAddr(t *testing.T, base string) string {
	st, err := getStatus(base)
	require.NoError(t, err)
	return st.RaftAddress
}

// shardGroupStatus returns shard sh's group in a node's /status.
func shardGroupStatus(st statusResponse, sh int) (raftgroup.GroupStatus, bool) {
	i := slices.IndexFunc(st.Groups, func(g raftgroup.GroupStatus) bool { return !g.Meta && int(g.Shard) == sh })
	if i < 0 {
		return raftgroup.GroupStatus{}, false
	}
	return st.Groups[i], true
}

// signalProc sends sig to the current run of p.
func signalProc(t *testing.T, p *proc, sig syscall.Signal) {
	t.Helper()
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	require.NoError(t, syscall.Kill(cmd.Process.Pid, sig), "node %d: %v", p.idx, sig)
}

// goroutineDump makes p print its goroutines and exit (SIGQUIT) and returns those of them that
// forward, serve the HTTP API or wait in net/rpc.
func goroutineDump(t *testing.T, p *proc) string {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return err.Error()
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		return "no exit within 10s of SIGQUIT"
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, g := range strings.Split(string(b), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && (strings.Contains(g, "forwarder") || strings.Contains(g, "net/rpc") || strings.Contains(g, "main.(*api)")) {
			keep = append(keep, g)
		}
	}
	return strings.Join(keep, "\n\n")
}
