package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-mq/strata/internal/loopback"
	"github.com/stretchr/testify/require"
)

// proc is one ds-node process of the multi-process test.
type proc struct {
	t       *testing.T
	idx     int
	bin     string
	args    []string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	http   string        // base URL from the ready line
	ready  chan struct{} // closed at the ready line of the current run
	exited chan struct{} // closed once the current run exited
	err    error         // the current run's exit status
}

var readyLine = regexp.MustCompile(`msg=ready http=(\S+)`)

// logWriter appends a process's stderr to its log file and spots the ready line.
type logWriter struct {
	p    *proc
	f    *os.File
	buf  []byte
	seen bool
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.f.Write(b)
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if m := readyLine.FindStringSubmatch(line); m != nil && !w.seen {
			w.seen = true
			w.p.mu.Lock()
			w.p.http = "http://" + m[1]
			close(w.p.ready)
			w.p.mu.Unlock()
		}
	}
	return len(b), nil
}

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	fmt.Fprintf(f, "----- start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	// The API token comes from the flags the test gives, never from the test's environment.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, apiTokenEnv+"=") })
	cmd.Stdout = f
	p.mu.Lock()
	p.cmd, p.http = cmd, ""
	p.ready, p.exited = make(chan struct{}), make(chan struct{})
	cmd.Stderr = &logWriter{p: p, f: f}
	exited := p.exited
	p.mu.Unlock()
	err = cmd.Start()
	if err != nil {
		f.Close()
	}
	require.NoError(p.t, err)
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(exited)
	}()
}

// waitReady waits for the ready line and returns the HTTP base URL.
func (p *proc) waitReady(timeout time.Duration) string {
	p.t.Helper()
	p.mu.Lock()
	ready, exited := p.ready, p.exited
	p.mu.Unlock()
	select {
	case <-ready:
	case <-exited:
		require.Failf(p.t, "node exited before it was ready", "node %d exited before it was ready: %v\n%s", p.idx, p.err, p.tail(30))
	case <-time.After(timeout):
		require.Failf(p.t, "node not ready in time", "node %d not ready within %v\n%s", p.idx, timeout, p.tail(30))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.http
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill kills the process with SIGKILL and waits until it is gone.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// terminate sends SIGTERM and returns the exit status (an error after the timeout).
func (p *proc) terminate(timeout time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("node %d still running %v after SIGTERM", p.idx, timeout)
	}
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- node %d (%s), last %d lines:\n%s", p.idx, p.logPath, len(lines), strings.Join(lines, "\n"))
}

func freePort(t *testing.T) string {
	t.Helper()
	a, err := loopback.FreeAddrs(1)
	require.NoError(t, err)
	return a[0]
}

// TestProcessKillLeader runs three ds-node processes, stores through all of them from
// concurrent writers, kills (SIGKILL) the process that leads the most shard groups mid-stream,
// keeps storing through the other two, restarts it from its directory and then checks on every
// node that each acknowledged message is there exactly once, in order, and that the replicas
// converge to identical digests. It ends with SIGTERM, which every node must obey with a clean
// exit.
func TestProcessKillLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	const (
		nodes  = 3
		shards = 4
	)
	testStart := time.Now()
	procs, urls, ts := startProcessCluster(t, nodes, shards, 3)

	log := newAckLog()
	w := startWriter(log, ts, "p", shards)
	defer w.stop()
	eventually(t, 30*time.Second, "acknowledged writes through every node", func() error {
		return log.everyNodeAcked(time.Time{}, nodes, 30)
	})

	// The victim: the node leading the most shard groups, as the nodes themselves say.
	victim, most := -1, -1
	for i := range nodes {
		st, err := getStatus(urls[i])
		require.NoError(t, err)
		if n := shardLeaders(st); n > most {
			victim, most = i, n
		}
	}
	beforeKill := log.count(nil)
	ts.remove(victim)
	procs[victim].kill()
	killed := time.Now()
	t.Logf("%s killed node %d (leader of %d of %d shard groups) after %d acknowledged messages", killed.Format("15:04:05.000"), victim, most, shards, beforeKill)

	// Writes keep succeeding through the other two once new leaders are elected.
	afterKill := func(a ack) bool { return a.started.After(killed) }
	eventually(t, 30*time.Second, "acknowledged writes to every shard after the kill", func() error {
		if n := log.count(afterKill); n < 100 {
			return fmt.Errorf("%d acknowledged after the kill; %s", n, log.summary())
		}
		return log.everyShardAcked(killed, shards, 5)
	})
	t.Logf("%d writes sent after the kill acknowledged within %v; first acknowledgement per shard after: %s",
		log.count(afterKill), time.Since(killed).Round(time.Millisecond), log.firstPerShard(killed, shards))

	// What the survivors applied before the restart: the restarted node must get there.
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
	t.Logf("leaders before the restart: %s", leaders(urls))
	procs[victim].start()
	urls[victim] = procs[victim].waitReady(60 * time.Second)
	restarted := time.Now()
	ts.set(victim, urls[victim])
	t.Logf("node %d restarted, ready in %v", victim, time.Since(killed).Round(time.Millisecond))
	eventually(t, 30*time.Second, "restarted node catches up", func() error {
		st, err := getStatus(urls[victim])
		if err != nil {
			return err
		}
		for _, d := range st.Shards {
			if d.Error != "" {
				return fmt.Errorf("shard %d: %s", d.Shard, d.Error)
			}
			if d.Applied < target[d.Shard] {
				return fmt.Errorf("shard %d at applied index %d, survivors were at %d", d.Shard, d.Applied, target[d.Shard])
			}
		}
		if n := log.count(func(a ack) bool { return a.node == victim && a.started.After(restarted) }); n < 20 {
			return fmt.Errorf("%d acknowledged through the restarted node", n)
		}
		return nil
	})
	t.Logf("leaders (replica@term as nodes 0, 1, 2 see them): %s", leaders(urls))
	w.stop()
	t.Logf("%s writer stopped: %s; first acknowledgement per shard of writes sent after the kill: %s",
		time.Now().Format("15:04:05.000"), log.summary(), log.firstPerShard(killed, shards))

	waitAllRead(t, log, urls, 30*time.Second)
	waitConverged(t, urls, 30*time.Second)
	waitSameReads(t, urls, 20*time.Second)

	for i, p := range procs {
		require.NoError(t, p.terminate(15*time.Second), "node %d: SIGTERM", i)
		require.Contains(t, p.tail(3), "msg=stopped", "node %d did not log msg=stopped:\n%s", i, p.tail(10))
	}
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}
