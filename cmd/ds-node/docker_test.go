package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// docker runs the docker CLI and returns its trimmed combined output.
func docker(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

func (c *dockerCluster) docker(args ...string) string {
	c.t.Helper()
	out, err := docker(2*time.Minute, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// createNetwork creates the private network with an explicit subnet (Docker attaches a
// container with a fixed --ip only to a network with a user-configured subnet): Docker first
// picks a free one, then the network is re-created with it spelled out.
func (c *dockerCluster) createNetwork() netip.Prefix {
	c.t.Helper()
	var last error
	for range 5 {
		if _, err := docker(time.Minute, "network", "create", "--internal", "--label", testLabel, c.network); err != nil {
			last = err
			continue
		}
		sub, err := docker(time.Minute, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", c.network)
		docker(time.Minute, "network", "rm", c.network)
		if err != nil {
			last = err
			continue
		}
		prefix, err := netip.ParsePrefix(strings.Fields(sub + " ")[0])
		if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 28 {
			last = fmt.Errorf("subnet %q: %v", sub, err)
			continue
		}
		if _, err := docker(time.Minute, "network", "create", "--internal", "--label", testLabel, "--subnet", prefix.String(), c.network); err != nil {
			last = err // taken meanwhile by a parallel run: try again
			continue
		}
		return prefix
	}
	c.t.Fatalf("create network %s: %v", c.network, last)
	return netip.Prefix{}
}

// url returns the base URL of container i's published HTTP port (it changes on restart).
func (c *dockerCluster) url(i int) (string, error) {
	out, err := docker(time.Minute, "port", c.names[i], "8080/tcp")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if ap, err := netip.ParseAddrPort(strings.TrimSpace(line)); err == nil && ap.Addr().Is4() {
			return "http://" + ap.String(), nil
		}
	}
	return "", fmt.Errorf("no published port for %s: %q", c.names[i], out)
}

// waitUp waits until container i answers GET /status and returns its base URL.
func (c *dockerCluster) waitUp(i int, timeout time.Duration) string {
	c.t.Helper()
	var url string
	eventually(c.t, timeout, fmt.Sprintf("container %s answers", c.names[i]), func() error {
		running, err := docker(time.Minute, "inspect", "-f", "{{.State.Running}}", c.names[i])
		if err != nil {
			return err
		}
		if running != "true" {
			logs, _ := docker(time.Minute, "logs", "--tail", "30", c.names[i])
			return fatalf("container %s is not running:\n%s", c.names[i], logs)
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
		if err != nil {
			t.Fatal(err)
		}
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
		switch {
		case errs[i] != nil:
			t.Errorf("%s probe %d: %v", prefix, i, errs[i])
		case res[i].status != http.StatusServiceUnavailable || !res[i].err.Retryable || res[i].err.Error == "":
			t.Errorf("%s probe %d: status %d %+v, want 503 with a retryable error", prefix, i, res[i].status, res[i].err)
		case took[i] > bound:
			t.Errorf("%s probe %d: failed only after %v (bound %v): %s", prefix, i, took[i], bound, res[i].err.Error)
		default:
			if strings.Contains(res[i].err.Error, "nothing stored") {
				log.mu.Lock()
				log.notStored = append(log.notStored, base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%d", prefix, i)))
				log.mu.Unlock()
			}
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
	if testing.Short() {
		t.Skip("Docker test: skipped with -short")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("docker is not on PATH: skipping the Docker test")
	}
	if out, err := docker(30*time.Second, "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("docker info failed (no Docker Engine reachable?): skipping the Docker test: %v", err)
	} else {
		t.Logf("Docker Engine %s", out)
	}
	const (
		nodes            = 3
		shards           = 4
		proposalTimeout  = 2 * time.Second
		unavailableBound = proposalTimeout + 6*time.Second
	)
	testStart := time.Now()
	bin := buildNode(t, "static")

	id := fmt.Sprintf("dsnode-%d-%04x", os.Getpid(), rand.N(1<<16))
	c := &dockerCluster{t: t, id: id, image: id + ":test", network: id + "-raft"}
	for i := range nodes {
		c.names = append(c.names, fmt.Sprintf("%s-%d", id, i))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.names {
				logs, _ := docker(time.Minute, "logs", "--tail", "60", n)
				t.Logf("--- container %s, last 60 lines:\n%s", n, logs)
			}
		}
		args := append([]string{"rm", "-f"}, c.names...)
		if out, err := docker(2*time.Minute, args...); err != nil && !strings.Contains(out, "No such container") {
			t.Logf("cleanup: %v", err)
		}
		docker(time.Minute, "network", "rm", c.network)
		docker(time.Minute, "rmi", "-f", c.image)
	})

	// The image: just the static binary.
	ctxDir := t.TempDir()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "ds-node"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	dockerfile := "FROM scratch\nCOPY ds-node /ds-node\nEXPOSE 7000 8080\nENTRYPOINT [\"/ds-node\"]\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	c.docker("build", "-q", "--label", testLabel, "-t", c.image, ctxDir)

	subnet := c.createNetwork()
	addr := subnet.Addr()
	for range 10 {
		addr = addr.Next()
	}
	var raft []string
	for i := range nodes {
		addr = addr.Next()
		c.ips = append(c.ips, addr)
		raft = append(raft, c.names[i]+":7000")
	}
	t.Logf("network %s %v, sites %v at %v", c.network, subnet, raft, c.ips)
	for i, name := range c.names {
		c.docker("create", "--name", name, "--hostname", name, "--label", testLabel, "--network", c.network, "--ip", c.ips[i].String(),
			"-p", "127.0.0.1::8080", c.image,
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
		for i := range nodes {
			if n := log.count(func(a ack) bool { return a.node == i }); n < 30 {
				return fmt.Errorf("site %d: %d acknowledged; %s", i, n, log.summary())
			}
		}
		return nil
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
		for i := range nodes {
			if n := log.count(func(a ack) bool { return a.node == i && a.started.After(restarted) }); n < 10 {
				return fmt.Errorf("site %d: %d acknowledged since the restart; %s", i, n, log.summary())
			}
		}
		return nil
	})
	w.stop()
	t.Logf("(d) writer stopped: %s", log.summary())
	waitAllRead(t, log, urls, 60*time.Second)
	waitConverged(t, urls, 60*time.Second)
	waitSameReads(t, urls, 20*time.Second)
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}
