package main

// Helpers shared by the multi-process test (process_test.go) and the Docker test
// (docker_test.go): building ds-node, an HTTP client of its API, a writer that records every
// acknowledged message, and the checks run against every node at the end.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

var (
	buildDir   string
	buildDirMu sync.Mutex
	builds     = map[string]string{} // variant → binary
	buildErrs  = map[string]error{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildNode builds ds-node once per test binary and variant ("" or "static": CGO_ENABLED=0)
// with the go command of the running toolchain, and returns the binary's path.
func buildNode(t *testing.T, variant string) string {
	t.Helper()
	buildDirMu.Lock()
	defer buildDirMu.Unlock()
	if bin, ok := builds[variant]; ok {
		return bin
	}
	require.NoError(t, buildErrs[variant], "an earlier build of this variant failed")
	if buildDir == "" {
		d, err := os.MkdirTemp("", "ds-node-test-")
		require.NoError(t, err)
		buildDir = d
	}
	bin := filepath.Join(buildDir, "ds-node")
	if variant != "" {
		bin += "-" + variant
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "go" // fails below with a clear error
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".")
	cmd.Env = os.Environ()
	if variant == "static" {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErrs[variant] = fmt.Errorf("go build ds-node (%s): %v\n%s", variant, err, out)
	}
	require.NoError(t, buildErrs[variant])
	t.Logf("built %s in %v", bin, time.Since(start).Round(time.Millisecond))
	builds[variant] = bin
	return bin
}

// eventually polls cond every 100ms until it returns nil, and fails the test with its last
// error once timeout passed. A cond returning a fatalError fails at once.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		var fe fatalError
		require.False(t, errors.As(err, &fe), "%s: %v", what, err)
		require.False(t, time.Now().After(deadline), "%s: not within %v: %v", what, timeout, err)
		time.Sleep(100 * time.Millisecond)
	}
}

// fatalError is a condition that waiting will not fix.
type fatalError struct{ error }

func fatalf(format string, args ...any) error { return fatalError{fmt.Errorf(format, args...)} }

// apiClient talks to ds-node's HTTP API, with testAPIToken, the API token the tests give the
// nodes.
var apiClient = &http.Client{Timeout: 30 * time.Second}

const testAPIToken = "test-api-token-7f3c"

// storeResult is the outcome of one POST /store.
type storeResult struct {
	status int
	refs   []refJSON
	err    errorResponse // when status != 200
}

func postStore(ctx context.Context, base string, msgs []storeMessage) (storeResult, error) {
	var body []byte
	if len(msgs) == 1 {
		body, _ = json.Marshal(msgs[0])
	} else {
		body, _ = json.Marshal(msgs)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/store", bytes.NewReader(body))
	if err != nil {
		return storeResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testAPIToken)
	resp, err := apiClient.Do(req)
	if err != nil {
		return storeResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return storeResult{}, err
	}
	res := storeResult{status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		var sr storeResponse
		if err := json.Unmarshal(b, &sr); err != nil {
			return res, fmt.Errorf("decode %q: %w", b, err)
		}
		if len(sr.Refs) != len(msgs) {
			return res, fmt.Errorf("%d refs for %d messages", len(sr.Refs), len(msgs))
		}
		res.refs = sr.Refs
		return res, nil
	}
	if err := json.Unmarshal(b, &res.err); err != nil {
		return res, fmt.Errorf("status %d, body %q: %w", resp.StatusCode, b, err)
	}
	return res, nil
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+testAPIToken)
	resp, err := apiClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, v)
}

func getStatus(base string) (statusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st statusResponse
	err := getJSON(ctx, base+"/status", &st)
	return st, err
}

func getRead(base string) ([]readMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var msgs []readMessage
	err := getJSON(ctx, base+"/read?filter=%23", &msgs)
	return msgs, err
}

// shardLeaders counts the shard groups whose leader is this node's replica.
func shardLeaders(st statusResponse) int {
	n := 0
	for _, g := range st.Groups {
		if !g.Meta && g.LeaderHere {
			n++
		}
	}
	return n
}

// leaders says, for every group, which replica leads it in which term as each node sees it,
// e.g. "meta 1@2 1@2 1@2, shard 0: 2@3 2@3 2@3"; "-" for a node that does not answer.
func leaders(urls map[int]string) string {
	var rows []string
	sts := map[int]statusResponse{}
	for _, i := range sortedKeys(urls) {
		if st, err := getStatus(urls[i]); err == nil {
			sts[i] = st
		}
	}
	for g := 0; ; g++ {
		var row []string
		name := ""
		for _, i := range sortedKeys(urls) {
			st, ok := sts[i]
			if !ok || g >= len(st.Groups) {
				row = append(row, "-")
				continue
			}
			gr := st.Groups[g]
			name = fmt.Sprintf("shard %d", gr.Shard)
			if gr.Meta {
				name = "meta"
			}
			row = append(row, fmt.Sprintf("%d@%d", gr.Leader, gr.Term))
		}
		if name == "" {
			break
		}
		rows = append(rows, name+": "+strings.Join(row, " "))
	}
	return strings.Join(rows, ", ")
}

// targets is the set of nodes the writer sends to: index → base URL.
type targets struct {
	mu   sync.Mutex
	urls map[int]string
}

// startProcessCluster builds ds-node and starts nodes processes on 127.0.0.1 that bootstrap one
// cluster (shards shards, replication factor rf, a 5s proposal timeout, the test's API token,
// then extra flags), and waits until each serves its HTTP API. What still runs when the test
// ends is killed (with the nodes' log tails if it failed). DSNODE_TEST_KEEP keeps the nodes'
// directories and logs for a post-mortem; DSNODE_TEST_LOG_LEVEL sets -log-level (debug: with
// dragonboat's logs).
func startProcessCluster(t *testing.T, nodes, shards, rf int, extra ...string) (procs []*proc, urls map[int]string, ts *targets) {
	t.Helper()
	start := time.Now()
	bin := buildNode(t, "")
	root := t.TempDir()
	if os.Getenv("DSNODE_TEST_KEEP") != "" {
		var err error
		root, err = os.MkdirTemp("", "ds-node-process-")
		require.NoError(t, err)
		t.Logf("DSNODE_TEST_KEEP: nodes' directories and logs are kept in %s", root)
	}
	var raft []string
	for range nodes {
		raft = append(raft, freePort(t))
	}
	procs = make([]*proc, nodes)
	for i := range procs {
		args := []string{
			"-dir", filepath.Join(root, fmt.Sprintf("node-%d", i)),
			"-raft-addr", raft[i], "-http-addr", "127.0.0.1:0",
			"-initial", strings.Join(raft, ","),
			"-shards", fmt.Sprint(shards), "-rf", fmt.Sprint(rf),
			"-proposal-timeout", "5s", "-open-timeout", "60s", "-api-token", testAPIToken,
		}
		args = append(args, extra...)
		if l := os.Getenv("DSNODE_TEST_LOG_LEVEL"); l != "" {
			args = append(args, "-log-level", l)
		}
		procs[i] = &proc{t: t, idx: i, bin: bin, args: args, logPath: filepath.Join(root, fmt.Sprintf("node-%d.log", i))}
	}
	t.Cleanup(func() {
		for _, p := range procs {
			if p.running() {
				p.kill()
			}
		}
		if t.Failed() {
			for _, p := range procs {
				t.Log(p.tail(60))
			}
		}
	})
	for _, p := range procs {
		p.start()
	}
	ts = newTargets()
	urls = map[int]string{}
	for i, p := range procs {
		urls[i] = p.waitReady(60 * time.Second)
		ts.set(i, urls[i])
	}
	t.Logf("%d nodes ready after %v: %v", nodes, time.Since(start).Round(time.Millisecond), urls)
	return procs, urls, ts
}

func newTargets() *targets { return &targets{urls: map[int]string{}} }

func (ts *targets) set(i int, url string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.urls[i] = url
}

func (ts *targets) remove(i int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.urls, i)
}

// pick returns the n-th target in index order (round-robin).
func (ts *targets) pick(n int) (int, string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.urls) == 0 {
		return 0, "", false
	}
	idx := make([]int, 0, len(ts.urls))
	for i := range ts.urls {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	i := idx[n%len(idx)]
	return i, ts.urls[i], true
}

// ack is one acknowledged message: a 200 of POST /store.
type ack struct {
	msg     storeMessage
	ref     refJSON
	node    int
	started time.Time // when the request was sent
	done    time.Time // when the 200 came
}

// ackLog collects the outcome of every store attempt of a test.
type ackLog struct {
	mu    sync.Mutex
	acked []ack // in acknowledgement order; per writer worker in send order
	// notStored: payloads of single-message stores answered with a 503 that said nothing was
	// stored; they must never be read.
	notStored []string
	failures  map[string]int // error class → count, for the log
}

func newAckLog() *ackLog { return &ackLog{failures: map[string]int{}} }

func (l *ackLog) count(keep func(ack) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.acked {
		if keep == nil || keep(a) {
			n++
		}
	}
	return n
}

func (l *ackLog) snapshot() ([]ack, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acked), slices.Clone(l.notStored)
}

// everyShardAcked returns nil once every shard has at least n acknowledged messages of
// requests sent after t.
func (l *ackLog) everyShardAcked(t time.Time, shards, n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	count := make([]int, shards)
	for _, a := range l.acked {
		if a.started.After(t) && int(a.ref.Shard) < shards {
			count[a.ref.Shard]++
		}
	}
	for sh, c := range count {
		if c < n {
			return fmt.Errorf("shard %d: %d acknowledged of writes sent since %s (per shard: %v)", sh, c, t.Format("15:04:05.000"), count)
		}
	}
	return nil
}

// everyNodeAcked reports an error unless, through each of the nodes 0..nodes-1, at least n
// writes sent after t were acknowledged.
func (l *ackLog) everyNodeAcked(t time.Time, nodes, n int) error {
	for i := range nodes {
		if c := l.count(func(a ack) bool { return a.node == i && a.started.After(t) }); c < n {
			return fmt.Errorf("node %d: %d acknowledged of writes sent since %s; %s", i, c, t.Format("15:04:05.000"), l.summary())
		}
	}
	return nil
}

// firstPerShard says, per shard, how long after t the first write sent after t was
// acknowledged.
func (l *ackLog) firstPerShard(t time.Time, shards int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	first := make([]time.Duration, shards)
	for _, a := range l.acked {
		if a.started.After(t) && int(a.ref.Shard) < shards {
			if d := a.done.Sub(t); first[a.ref.Shard] == 0 || d < first[a.ref.Shard] {
				first[a.ref.Shard] = d
			}
		}
	}
	var parts []string
	for i, d := range first {
		if d == 0 {
			parts = append(parts, fmt.Sprintf("%d: none", i))
		} else {
			parts = append(parts, fmt.Sprintf("%d: %v", i, d.Round(time.Millisecond)))
		}
	}
	return strings.Join(parts, ", ")
}

func (l *ackLog) failure(class string) {
	l.mu.Lock()
	l.failures[class]++
	l.mu.Unlock()
}

func (l *ackLog) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.failures))
	for k := range l.failures {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	var slowest time.Duration
	for _, a := range l.acked {
		slowest = max(slowest, a.done.Sub(a.started))
	}
	fmt.Fprintf(&b, "%d acknowledged (slowest in %v), %d answered 'nothing stored'", len(l.acked), slowest.Round(time.Millisecond), len(l.notStored))
	for _, k := range keys {
		fmt.Fprintf(&b, ", %s: %d", k, l.failures[k])
	}
	return b.String()
}

// writer stores unique messages through the targets and records the outcomes in its ackLog.
// Each worker sends one request at a time, round-robin over the targets; a message is never
// sent twice: a failed attempt is followed by a new message. Two workers per shard send single
// messages of publishers of that shard only (so a shard that stalls holds up only its own
// workers, and per-shard timings mean something); one more sends batches of three messages of
// publishers spread over the shards (one Store call over several shards).
type writer struct {
	log     *ackLog
	targets *targets
	prefix  string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func startWriter(log *ackLog, ts *targets, prefix string, shards int) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{log: log, targets: ts, prefix: prefix, cancel: cancel}
	for i := range 2*shards + 1 {
		// The worker's publishers: three client IDs, of shard i%shards or (the batch worker)
		// of any.
		var clients []string
		for j := 0; len(clients) < 3; j++ {
			c := fmt.Sprintf("%s-w%d-c%d", prefix, i, j)
			if i == 2*shards || int(ds.ShardOf(c, shards)) == i%shards {
				clients = append(clients, c)
			}
		}
		batch := 1
		if i == 2*shards {
			batch = 3
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.run(ctx, i, clients, batch)
		}()
	}
	return w
}

func (w *writer) stop() {
	w.cancel()
	w.wg.Wait()
}

func (w *writer) run(ctx context.Context, worker int, clients []string, batch int) {
	for k, attempt := 0, 0; ctx.Err() == nil; attempt++ {
		node, url, ok := w.targets.pick(worker + attempt)
		if !ok {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		msgs := make([]storeMessage, batch)
		for j := range msgs {
			msgs[j] = storeMessage{
				ClientID:   clients[k%len(clients)],
				Topic:      fmt.Sprintf("t/%s/w%d/%d", w.prefix, worker, k%5),
				PayloadB64: base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-w%d-%d", w.prefix, worker, k)),
			}
			k++
		}
		started := time.Now()
		res, err := postStore(ctx, url, msgs)
		done := time.Now()
		switch {
		case ctx.Err() != nil:
			// Stopped: the outcome is unknown, the messages are not acknowledged.
		case err != nil:
			w.log.failure("transport error")
			time.Sleep(20 * time.Millisecond) // a dead node refuses at once: do not spin
		case res.status == http.StatusOK:
			w.log.mu.Lock()
			for j, m := range msgs {
				w.log.acked = append(w.log.acked, ack{msg: m, ref: res.refs[j], node: node, started: started, done: done})
			}
			w.log.mu.Unlock()
		default:
			w.log.failure(fmt.Sprintf("status %d", res.status))
			if res.status == http.StatusServiceUnavailable && batch == 1 && strings.Contains(res.err.Error, "nothing stored") {
				w.log.mu.Lock()
				w.log.notStored = append(w.log.notStored, msgs[0].PayloadB64)
				w.log.mu.Unlock()
			}
		}
	}
}

// checkRead checks what a node reads against the acknowledged messages: every acknowledged
// message present exactly once with the shard and timestamp it was acknowledged with, no
// message (acknowledged or not: every attempt sends a new payload) twice, timestamps strictly
// increasing within a shard, the acknowledged messages of each publisher in the order they
// were acknowledged, and nothing of what was answered "nothing stored". Missing messages are
// a plain error (the node may lag: poll); the rest are fatalErrors.
func checkRead(read []readMessage, acked []ack, notStored []string) error {
	type pos struct {
		i   int
		msg readMessage
	}
	byPayload := make(map[string]pos, len(read))
	lastTS := map[ds.ShardID]uint64{}
	for i, m := range read {
		if prev, ok := byPayload[m.PayloadB64]; ok {
			return fatalf("message %s read twice: %+v and %+v", decode(m.PayloadB64), prev.msg, m)
		}
		byPayload[m.PayloadB64] = pos{i, m}
		if ts, ok := lastTS[m.Shard]; ok && m.TS <= ts {
			return fatalf("shard %d: timestamp %d after %d (message %s)", m.Shard, m.TS, ts, decode(m.PayloadB64))
		}
		lastTS[m.Shard] = m.TS
	}
	for _, p := range notStored {
		if m, ok := byPayload[p]; ok {
			return fatalf("message %s was answered 'nothing stored' but is stored: %+v", decode(p), m.msg)
		}
	}
	missing := 0
	var firstMissing string
	lastOfClient := map[string]uint64{}
	for _, a := range acked {
		m, ok := byPayload[a.msg.PayloadB64]
		if !ok {
			if missing == 0 {
				firstMissing = decode(a.msg.PayloadB64)
			}
			missing++
			continue
		}
		if m.msg.Shard != a.ref.Shard || m.msg.TS != a.ref.TS || m.msg.ClientID != a.msg.ClientID || m.msg.Topic != a.msg.Topic {
			return fatalf("message %s acknowledged as %+v/%+v, read as %+v", decode(a.msg.PayloadB64), a.msg, a.ref, m.msg)
		}
		if ts, ok := lastOfClient[a.msg.ClientID]; ok && a.ref.TS <= ts {
			return fatalf("client %s: message %s acknowledged after one with timestamp %d, has %d", a.msg.ClientID, decode(a.msg.PayloadB64), ts, a.ref.TS)
		}
		lastOfClient[a.msg.ClientID] = a.ref.TS
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d acknowledged messages missing (first: %s); %d read", missing, len(acked), firstMissing, len(read))
	}
	return nil
}

func decode(b64 string) string {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return b64
	}
	return string(b)
}

// waitAllRead polls every node's /read until it holds every acknowledged message (see
// checkRead).
func waitAllRead(t *testing.T, log *ackLog, urls map[int]string, timeout time.Duration) {
	t.Helper()
	waitAllReadVia(t, log, urls, timeout, getRead)
}

// waitAllReadVia is waitAllRead with get reading a node (getRead: /read; getAdminRead: the
// admin handler's /v1/messages).
func waitAllReadVia(t *testing.T, log *ackLog, urls map[int]string, timeout time.Duration, get func(url string) ([]readMessage, error)) {
	t.Helper()
	acked, notStored := log.snapshot()
	for _, i := range sortedKeys(urls) {
		var n int
		eventually(t, timeout, fmt.Sprintf("node %d reads every acknowledged message", i), func() error {
			read, err := get(urls[i])
			if err != nil {
				return err
			}
			n = len(read)
			return checkRead(read, acked, notStored)
		})
		t.Logf("node %d: %d messages read, all %d acknowledged present exactly once, in order", i, n, len(acked))
	}
}

// waitConverged polls every node's /status until, for every shard, all replicas are at the same
// applied index with the same digest. Two replicas at the same index with different digests
// fail the test at once.
func waitConverged(t *testing.T, urls map[int]string, timeout time.Duration) {
	t.Helper()
	var last []digestJSON
	eventually(t, timeout, "replicas converge", func() error {
		var all []statusResponse
		for _, i := range sortedKeys(urls) {
			st, err := getStatus(urls[i])
			if err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
			all = append(all, st)
		}
		var lagging error
		for sh := range all[0].Shards {
			type seen struct {
				node int
				d    digestJSON
			}
			var first *seen
			byIndex := map[uint64]seen{}
			for n, st := range all {
				if sh >= len(st.Shards) {
					return fatalf("node %d reports %d shards, node 0 %d", n, len(st.Shards), len(all[0].Shards))
				}
				d := st.Shards[sh]
				if d.Error != "" {
					lagging = fmt.Errorf("node %d shard %d: %s", n, sh, d.Error)
					continue
				}
				if o, ok := byIndex[d.Applied]; ok && o.d.Sum != d.Sum {
					return fatalf("shard %d at applied index %d: node %d digest %s, node %d digest %s", sh, d.Applied, o.node, o.d.Sum, n, d.Sum)
				}
				byIndex[d.Applied] = seen{n, d}
				if first == nil {
					first = &seen{n, d}
				} else if d.Applied != first.d.Applied && lagging == nil {
					lagging = fmt.Errorf("shard %d: node %d at applied index %d, node %d at %d", sh, n, d.Applied, first.node, first.d.Applied)
				}
			}
		}
		if lagging == nil {
			last = all[0].Shards
		}
		return lagging
	})
	for _, d := range last {
		t.Logf("shard %d: all nodes at applied index %d, %d keys, digest %.16s", d.Shard, d.Applied, d.Keys, d.Sum)
	}
}

// waitSameReads polls every node's /read until all return the same messages in the same order.
func waitSameReads(t *testing.T, urls map[int]string, timeout time.Duration) {
	t.Helper()
	waitSameReadsVia(t, urls, timeout, getRead)
}

// waitSameReadsVia is waitSameReads with get reading a node (see waitAllReadVia).
func waitSameReadsVia(t *testing.T, urls map[int]string, timeout time.Duration, get func(url string) ([]readMessage, error)) {
	t.Helper()
	var n int
	eventually(t, timeout, "every node reads the same", func() error {
		var first []readMessage
		keys := sortedKeys(urls)
		for _, i := range keys {
			read, err := get(urls[i])
			if err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
			if i == keys[0] {
				first = read
				continue
			}
			if !slices.Equal(read, first) {
				return fmt.Errorf("node %d reads %d messages, node %d %d, not the same", i, len(read), keys[0], len(first))
			}
		}
		n = len(first)
		return nil
	})
	t.Logf("all %d nodes read the same %d messages", len(urls), n)
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// probeStores sends one single-message store per client ID through base, in parallel, and
// returns their results and durations.
func probeStores(base, prefix string, n int) ([]storeResult, []error, []time.Duration) {
	res := make([]storeResult, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := storeMessage{ClientID: fmt.Sprintf("%s-c%d", prefix, i), Topic: "probe/" + prefix,
				PayloadB64: base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%d", prefix, i))}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			res[i], errs[i] = postStore(ctx, base, []storeMessage{m})
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return res, errs, took
}
