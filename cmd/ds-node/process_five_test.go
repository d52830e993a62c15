package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// TestProcessKillFiveSites is TestProcessKillLeader with five ds-node processes, replication
// factor 3 and the default placement (PlacementVoters): each shard lives on three of the five
// nodes only, so every node forwards the Stores and reads of the shards it holds no replica of
// to a node that holds one. Writers store through every node's HTTP API while, twice, the node
// leading the most shard groups is killed with SIGKILL and restarted from its directory (the
// second victim a different node). Afterwards every node (forwarding what it does not hold)
// reads each acknowledged message exactly once, in order, nothing answered "nothing stored" is
// read, the replicas of each shard are identical, and every node obeys SIGTERM.
func TestProcessKillFiveSites(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	const (
		nodes  = 5
		shards = 5
		rf     = 3
	)
	testStart := time.Now()
	procs, urls, ts := startProcessCluster(t, nodes, shards, rf, "-admin-token", testAdminToken)

	// The placement settles on rf replicas per shard: every node misses some shard, so it
	// forwards.
	eventually(t, 30*time.Second, "each shard held by exactly rf nodes", func() error {
		held, err := heldByNode(urls, shards)
		if err != nil {
			return err
		}
		for sh := range shards {
			n := 0
			for _, h := range held {
				if slices.Contains(h, sh) {
					n++
				}
			}
			if n != rf {
				return fmt.Errorf("shard %d held by %d nodes (held per node: %v)", sh, n, held)
			}
		}
		for i, h := range held {
			if len(h) == shards {
				return fmt.Errorf("node %d holds every shard (held per node: %v)", i, held)
			}
		}
		return nil
	})

	log := newAckLog()
	w := startWriter(log, ts, "p5", shards)
	defer w.stop()
	eventually(t, 30*time.Second, "acknowledged writes through every node", func() error {
		return log.everyNodeAcked(time.Time{}, nodes, 20)
	})

	var victims []int
	for round := range 2 {
		// The victim: the node leading the most shard groups, not a node killed before.
		victim, most := -1, -1
		for i := range nodes {
			if slices.Contains(victims, i) {
				continue
			}
			st, err := getStatus(urls[i])
			require.NoError(t, err)
			if n := shardLeaders(st); n > most {
				victim, most = i, n
			}
		}
		victims = append(victims, victim)
		held, err := heldByNode(urls, shards)
		require.NoError(t, err)
		ts.remove(victim)
		procs[victim].kill()
		killed := time.Now()
		t.Logf("round %d: killed node %d (leader of %d shard groups, holds shards %v) after %d acknowledged messages",
			round, victim, most, held[victim], log.count(nil))

		afterKill := func(a ack) bool { return a.started.After(killed) }
		eventually(t, 30*time.Second, "acknowledged writes to every shard after the kill", func() error {
			if n := log.count(afterKill); n < 100 {
				return fmt.Errorf("%d acknowledged after the kill; %s", n, log.summary())
			}
			return log.everyShardAcked(killed, shards, 5)
		})
		t.Logf("round %d: first acknowledgement per shard after the kill: %s", round, log.firstPerShard(killed, shards))

		// What the survivors holding each shard applied: the restarted node must get there for
		// the shards it holds.
		target := make([]uint64, shards)
		for i := range nodes {
			if i == victim {
				continue
			}
			st, err := getStatus(urls[i])
			require.NoError(t, err)
			for _, d := range st.Shards {
				target[d.Shard] = max(target[d.Shard], d.Applied)
			}
		}
		procs[victim].start()
		urls[victim] = procs[victim].waitReady(60 * time.Second)
		restarted := time.Now()
		ts.set(victim, urls[victim])
		t.Logf("round %d: node %d restarted, ready %v after the kill", round, victim, time.Since(killed).Round(time.Millisecond))
		eventually(t, 30*time.Second, "restarted node catches up", func() error {
			st, err := getStatus(urls[victim])
			if err != nil {
				return err
			}
			n := 0
			for _, d := range st.Shards {
				switch {
				case notHeld(d):
					continue
				case d.Error != "":
					return fmt.Errorf("shard %d: %s", d.Shard, d.Error)
				case d.Applied < target[d.Shard]:
					return fmt.Errorf("shard %d at applied index %d, survivors were at %d", d.Shard, d.Applied, target[d.Shard])
				}
				n++
			}
			if n == 0 {
				return fmt.Errorf("holds no shard yet")
			}
			if n := log.count(func(a ack) bool { return a.node == victim && a.started.After(restarted) }); n < 20 {
				return fmt.Errorf("%d acknowledged through the restarted node", n)
			}
			return nil
		})
	}
	w.stop()
	t.Logf("writer stopped: %s", log.summary())
	// Failed stores: 503 (retryable, as Strata's handlers answer ErrUnavailable) or a transport
	// error (the node was killed under the request), nothing else.
	log.mu.Lock()
	failures := maps.Clone(log.failures)
	log.mu.Unlock()
	for class := range failures {
		require.Contains(t, []string{"status 503", "transport error"}, class, "a store failed otherwise: %v", failures)
	}
	acked, _ := log.snapshot()
	for i := range nodes {
		n := 0
		for _, a := range acked {
			if a.node == i {
				n++
			}
		}
		require.Positive(t, n, "node %d acknowledged nothing", i)
	}

	// GET /read and the admin handler's /v1/messages both read through the site's DB, which
	// forwards what the node does not hold (GET /read refused with 503 on any node without a
	// replica of every shard before: every node here).
	waitAllRead(t, log, urls, 30*time.Second)
	waitAllReadVia(t, log, urls, 30*time.Second, getAdminRead)
	waitConvergedHeld(t, urls, shards, rf, 30*time.Second)
	waitSameReadsVia(t, urls, 20*time.Second, getAdminRead)

	for i, p := range procs {
		require.NoError(t, p.terminate(15*time.Second), "node %d: SIGTERM", i)
		require.Contains(t, p.tail(3), "msg=stopped", "node %d did not log msg=stopped:\n%s", i, p.tail(10))
	}
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}

// notHeld reports whether a node's digest of a shard says it holds no replica of it.
func notHeld(d digestJSON) bool { return strings.Contains(d.Error, "no replica of shard") }

// heldByNode returns, per node, the shards it holds a replica of (as /status says).
func heldByNode(urls map[int]string, shards int) (map[int][]int, error) {
	out := map[int][]int{}
	for _, i := range sortedKeys(urls) {
		st, err := getStatus(urls[i])
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		if len(st.Shards) != shards {
			return nil, fatalf("node %d reports %d shards, want %d", i, len(st.Shards), shards)
		}
		out[i] = []int{}
		for _, d := range st.Shards {
			if !notHeld(d) {
				out[i] = append(out[i], int(d.Shard))
			}
		}
	}
	return out, nil
}

// waitConvergedHeld is waitConverged for a placement on a subset of the nodes: for every
// shard, exactly rf nodes hold a replica, all at the same applied index with the same digest
// (two at the same index with different digests fail at once); the others say they hold none.
func waitConvergedHeld(t *testing.T, urls map[int]string, shards, rf int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "replicas converge", func() error {
		type seen struct {
			node int
			d    digestJSON
		}
		per := make([][]seen, shards)
		for _, i := range sortedKeys(urls) {
			st, err := getStatus(urls[i])
			if err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
			if len(st.Shards) != shards {
				return fatalf("node %d reports %d shards, want %d", i, len(st.Shards), shards)
			}
			for _, d := range st.Shards {
				switch {
				case notHeld(d):
				case d.Error != "":
					return fmt.Errorf("node %d shard %d: %s", i, d.Shard, d.Error)
				default:
					per[d.Shard] = append(per[d.Shard], seen{i, d})
				}
			}
		}
		for sh, reps := range per {
			if len(reps) != rf {
				return fmt.Errorf("shard %d: %d replicas, want %d", sh, len(reps), rf)
			}
			for _, r := range reps[1:] {
				if r.d.Applied == reps[0].d.Applied && r.d.Sum != reps[0].d.Sum {
					return fatalf("shard %d at applied index %d: node %d digest %s, node %d digest %s", sh, r.d.Applied, reps[0].node, reps[0].d.Sum, r.node, r.d.Sum)
				}
				if r.d.Applied != reps[0].d.Applied {
					return fmt.Errorf("shard %d: node %d at applied index %d, node %d at %d", sh, r.node, r.d.Applied, reps[0].node, reps[0].d.Applied)
				}
			}
		}
		for sh, reps := range per {
			var on []int
			for _, r := range reps {
				on = append(on, r.node)
			}
			t.Logf("shard %d: nodes %v at applied index %d, %d keys, digest %.16s", sh, on, reps[0].d.Applied, reps[0].d.Keys, reps[0].d.Sum)
		}
		return nil
	})
}

const testAdminToken = "test-admin-token-5e1a"

// getAdminRead reads every message through a node's admin handler (GET /v1/messages, with
// testAdminToken), sorted by shard and timestamp, as readMessages.
func getAdminRead(base string) ([]readMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/messages?filter=%23&limit=0", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := apiClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/v1/messages: %d %s", base, resp.StatusCode, body)
	}
	var views []struct {
		Shard    ds.ShardID `json:"shard"`
		Micros   uint64     `json:"timestamp_us"`
		ClientID string     `json:"client_id"`
		Topic    string     `json:"topic"`
		Payload  string     `json:"payload_base64"`
	}
	if err := json.Unmarshal(body, &views); err != nil {
		return nil, fmt.Errorf("GET %s/v1/messages: %w", base, err)
	}
	out := make([]readMessage, len(views))
	for i, v := range views {
		out[i] = readMessage{Shard: v.Shard, TS: v.Micros, ClientID: v.ClientID, Topic: v.Topic, PayloadB64: v.Payload}
	}
	slices.SortStableFunc(out, func(a, b readMessage) int {
		return cmp.Or(cmp.Compare(a.Shard, b.Shard), cmp.Compare(a.TS, b.TS))
	})
	return out, nil
}
