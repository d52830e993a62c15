package main

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/strata-mq/strata/internal/dockertest"
	"github.com/stretchr/testify/require"
)

// dockerCluster is three ds-node containers from a FROM-scratch image. Each is attached to two
// networks: a private internal network of the test, on which the sites reach each other as
// <name>:7000 (resolved by Docker's DNS) and which the test disconnects to partition a site,
// and Docker's default bridge, which carries the HTTP port published to 127.0.0.1 (the default
// bridge resolves no container names, so Raft traffic cannot take it).
type dockerCluster struct {
	t       *testing.T
	id      string // unique prefix of every name
	image   string
	network string
	names   []string
	ips     []netip.Addr // fixed addresses on the network, kept across reconnects and restarts
}

// testLabel marks the image, network and containers of the test, for a manual clean-up after
// an interrupted run: docker rm -f $(docker ps -aq -f label=strata-ds-node-test) etc.
const testLabel = "strata-ds-node-test"

func (c *dockerCluster) docker(args ...string) string {
	c.t.Helper()
	return dockertest.Must(c.t, args...)
}

// url returns the base URL of container i's published HTTP port (it changes on restart).
func (c *dockerCluster) url(i int) (string, error) {
	ap, err := dockertest.PublishedAddr(c.names[i], "8080/tcp")
	if err != nil {
		return "", err
	}
	return "http://" + ap.String(), nil
}

// waitUp waits until container i answers GET /status and returns its base URL.
func (c *dockerCluster) waitUp(i int, timeout time.Duration) string {
	c.t.Helper()
	var url string
	eventually(c.t, timeout, fmt.Sprintf("container %s answers", c.names[i]), func() error {
		running, err := dockertest.Running(c.names[i])
		if err != nil {
			return err
		}
		if !running {
			return fatalf("container %s is not running:\n%s", c.names[i], dockertest.Logs(c.names[i], 30))
		}
		if url, err = c.url(i); err != nil {
			return err
		}
		_, err = getStatus(url)
		return err
	})
	return url
}

// leaderMost returns, of the containers in urls, the one whose site leads the most shard groups.
func leaderMost(t *testing.T, urls map[int]string) (int, int) {
	t.Helper()
	best, most := -1, -1
	for _, i := range sortedKeys(urls) {
		st, err := getStatus(urls[i])
		require.NoError(t, err)
		if n := shardLeaders(st); n > most {
			best, most = i, n
		}
	}
	return best, most
}

// expectUnavailable sends single-message stores through url and checks that every one fails
// with 503, retryable, with an error text, within bound; it records those that say nothing
// was stored.
func expectUnavailable(t *testing.T, log *ackLog, url, prefix string, bound time.Duration) {
	t.Helper()
	const n = 8 // client IDs spread over the shards
	res, errs, took := probeStores(url, prefix, n)
	for i := range n {
		require.NoError(t, errs[i], "%s probe %d", prefix, i)
		require.Equal(t, http.StatusServiceUnavailable, res[i].status, "%s probe %d: status %d %+v, want 503 with a retryable error", prefix, i, res[i].status, res[i].err)
		require.True(t, res[i].err.Retryable, "%s probe %d: status %d %+v, want 503 with a retryable error", prefix, i, res[i].status, res[i].err)
		require.NotEmpty(t, res[i].err.Error, "%s probe %d: status %d %+v, want 503 with a retryable error", prefix, i, res[i].status, res[i].err)
		require.LessOrEqual(t, took[i], bound, "%s probe %d: failed only after %v (bound %v): %s", prefix, i, took[i], bound, res[i].err.Error)
		if strings.Contains(res[i].err.Error, "nothing stored") {
			log.mu.Lock()
			log.notStored = append(log.notStored, base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%d", prefix, i)))
			log.mu.Unlock()
		}
	}
	var slowest time.Duration
	for _, d := range took {
		slowest = max(slowest, d)
	}
	t.Logf("%s: %d stores failed with 503 within %v, e.g. %q", prefix, n, slowest.Round(time.Millisecond), res[0].err.Error)
}

// TestDockerPartitionAndKill runs three ds-node containers on a private Docker network and
// checks, storing all along and verifying every acknowledged message on every site after each
// step:
//
//	(a) stores are accepted through every site;
//	(b) a site cut off from the network (docker network disconnect) refuses stores with a clear
//	    503 within a bounded time, while the other two keep accepting them;
//	(c) once reconnected it catches up: all three read the same messages, replicas converge;
//	(d) with one site killed the other two accept stores; with a second killed the last refuses
//	    them with 503; both restarted, nothing acknowledged is lost or duplicated.
func TestDockerPartitionAndKill(t *testing.T) {
	t.Logf("Docker Engine %s", dockertest.SkipUnlessAvailable(t))
	const (
		nodes            = 3
		shards           = 4
		proposalTimeout  = 2 * time.Second
		unavailableBound = proposalTimeout + 6*time.Second
	)
	testStart := time.Now()
	bin := buildNode(t, "static")

	id := dockertest.UniqueID("dsnode")
	c := &dockerCluster{t: t, id: id, image: id + ":test", network: id + "-raft"}
	for i := range nodes {
		c.names = append(c.names, fmt.Sprintf("%s-%d", id, i))
	}
	t.Cleanup(func() { dockertest.Remove(t, 60, c.image, c.network, c.names...) })

	// The image: just the static binary.
	dockertest.BuildScratchImage(t, c.image, testLabel, bin, "ds-node", 7000, 8080)

	subnet := dockertest.CreateNetwork(t, c.network, testLabel, true)
	c.ips = dockertest.FixedAddrs(subnet, 11, nodes)
	var raft []string
	for i := range nodes {
		raft = append(raft, c.names[i]+":7000")
	}
	t.Logf("network %s %v, sites %v at %v", c.network, subnet, raft, c.ips)
	for i, name := range c.names {
		c.docker("create", "--name", name, "--hostname", name, "--label", testLabel, "--network", c.network, "--ip", c.ips[i].String(),
			"-p", "127.0.0.1::8080", "-e", apiTokenEnv+"="+testAPIToken, c.image,
			"-dir", "/data", "-raft-addr", raft[i], "-http-addr", ":8080", "-initial", strings.Join(raft, ","),
			"-shards", fmt.Sprint(shards), "-rf", "3", "-proposal-timeout", proposalTimeout.String(), "-open-timeout", "2m")
		c.docker("network", "connect", "bridge", name)
	}
	c.docker(append([]string{"start"}, c.names...)...)
	urls := map[int]string{}
	ts := newTargets()
	for i := range nodes {
		urls[i] = c.waitUp(i, 90*time.Second)
		ts.set(i, urls[i])
	}
	t.Logf("3 containers up after %v: %v", time.Since(testStart).Round(time.Millisecond), urls)
	log := newAckLog()

	// (a) Stores through all three.
	w := startWriter(log, ts, "a", shards)
	defer func() { w.stop() }()
	eventually(t, 60*time.Second, "(a) acknowledged writes through every site", func() error {
		return log.everyNodeAcked(time.Time{}, nodes, 30)
	})
	t.Logf("(a) %s", log.summary())

	// (b) Partition the site leading the most shard groups.
	m, led := leaderMost(t, urls)
	ts.remove(m)
	c.docker("network", "disconnect", c.network, c.names[m])
	partitioned := time.Now()
	t.Logf("(b) disconnected site %d (leader of %d shard groups)", m, led)
	expectUnavailable(t, log, urls[m], "minority-early", unavailableBound)
	eventually(t, 60*time.Second, "(b) the majority accepts writes", func() error {
		if n := log.count(func(a ack) bool { return a.started.After(partitioned) }); n < 100 {
			return fmt.Errorf("%d acknowledged since the partition; %s", n, log.summary())
		}
		return log.everyShardAcked(partitioned, shards, 5)
	})
	t.Logf("(b) majority: first acknowledgement per shard after the partition: %s", log.firstPerShard(partitioned, shards))
	expectUnavailable(t, log, urls[m], "minority-late", unavailableBound)

	// (c) Reconnect it: it catches up and takes writes again.
	c.docker("network", "connect", "--ip", c.ips[m].String(), c.network, c.names[m])
	reconnected := time.Now()
	ts.set(m, urls[m])
	eventually(t, 60*time.Second, "(c) the reconnected site accepts writes", func() error {
		if n := log.count(func(a ack) bool { return a.node == m && a.started.After(reconnected) }); n < 20 {
			return fmt.Errorf("%d acknowledged through site %d since the reconnect; %s", n, m, log.summary())
		}
		return nil
	})
	w.stop()
	t.Logf("(c) reconnected site %d stores again after %v; writer stopped: %s", m,
		time.Since(reconnected).Round(time.Millisecond), log.summary())
	waitAllRead(t, log, urls, 60*time.Second)
	waitConverged(t, urls, 60*time.Second)
	waitSameReads(t, urls, 20*time.Second)

	// (d) Kill one site, then a second.
	w = startWriter(log, ts, "d", shards)
	eventually(t, 30*time.Second, "(d) writes before the kill", func() error {
		if n := log.count(func(a ack) bool { return strings.HasPrefix(a.msg.ClientID, "d-") }); n < 50 {
			return fmt.Errorf("%d acknowledged; %s", n, log.summary())
		}
		return nil
	})
	k1, led := leaderMost(t, urls)
	ts.remove(k1)
	c.docker("kill", c.names[k1])
	killed := time.Now()
	t.Logf("(d) killed site %d (leader of %d shard groups)", k1, led)
	eventually(t, 60*time.Second, "(d) two sites accept writes", func() error {
		if n := log.count(func(a ack) bool { return a.started.After(killed) }); n < 100 {
			return fmt.Errorf("%d acknowledged since the kill; %s", n, log.summary())
		}
		return log.everyShardAcked(killed, shards, 5)
	})
	w.stop()
	t.Logf("(d) first acknowledgement per shard after the kill: %s; writer stopped: %s", log.firstPerShard(killed, shards), log.summary())
	k2 := (k1 + 1) % nodes
	last := (k1 + 2) % nodes
	c.docker("kill", c.names[k2])
	t.Logf("(d) killed site %d too; site %d is alone", k2, last)
	expectUnavailable(t, log, urls[last], "alone", unavailableBound)

	c.docker("start", c.names[k1], c.names[k2])
	for _, i := range []int{k1, k2} {
		urls[i] = c.waitUp(i, 90*time.Second)
		ts.set(i, urls[i])
	}
	restarted := time.Now()
	t.Logf("(d) sites %d and %d restarted: %v", k1, k2, urls)
	w = startWriter(log, ts, "e", shards)
	eventually(t, 60*time.Second, "(d) writes through every site after the restarts", func() error {
		return log.everyNodeAcked(restarted, nodes, 10)
	})
	w.stop()
	t.Logf("(d) writer stopped: %s", log.summary())
	waitAllRead(t, log, urls, 60*time.Second)
	waitConverged(t, urls, 60*time.Second)
	waitSameReads(t, urls, 20*time.Second)
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}
