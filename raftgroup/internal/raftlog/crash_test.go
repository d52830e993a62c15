package raftlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
	"github.com/stretchr/testify/require"
)

// The crash test: a child process (this test binary, running TestCrashChild) writes Raft-like
// updates to a log until the parent kills it with SIGKILL; the parent then opens the log and
// checks that everything the child was told is durable is there. Before each call the child
// prints an intent line describing it, after the call returns a done line: the parent's model
// is built from the done calls only, and the one call in flight when the child died may or may
// not have landed (all or nothing).
//
// RAFTLOG_CRASH_SEED=<n> replays a run's op sequences and kill counts (the exact kill point
// still depends on timing).
const (
	crashChildEnv = "RAFTLOG_CRASH_CHILD" // "<seed>:<dir>" in the child
	crashSeedEnv  = "RAFTLOG_CRASH_SEED"
	crashSegBytes = 64 << 10
)

// crashKeys are the replicas the child writes for.
var crashKeys = []nodeKey{{1, 1}, {1, 2}, {7, 3}}

// crashLine is one line of the child's stdout: an intent (the call about to be made) or done.
type crashLine struct {
	Seq   int        `json:"seq"`
	Done  bool       `json:"done,omitempty"`
	Op    string     `json:"op,omitempty"` // save, snap, rm, boot, rmnode, import
	R     int        `json:"r,omitempty"`  // the replica (index in crashKeys) of rm, boot, rmnode, import
	Ups   []crashUpd `json:"ups,omitempty"`
	Index uint64     `json:"index,omitempty"` // rm: removed to; import: the snapshot's index
	Term  uint64     `json:"term,omitempty"`  // import: the snapshot's term
	Join  bool       `json:"join,omitempty"`  // boot
	Rot   bool       `json:"rot,omitempty"`   // the call starts a new segment first
}

// crashUpd is one pb.Update of a save (SaveRaftState) or snap (SaveSnapshots).
type crashUpd struct {
	R       int      `json:"r"`
	St      bool     `json:"st,omitempty"` // a state: Term, Vote, Commit
	Term    uint64   `json:"t,omitempty"`
	Vote    uint64   `json:"v,omitempty"`
	Commit  uint64   `json:"c,omitempty"`
	SsIndex uint64   `json:"ssi,omitempty"` // a snapshot: received (save) or taken (snap)
	SsTerm  uint64   `json:"sst,omitempty"`
	First   uint64   `json:"first,omitempty"` // entries First, First+1, ... of term ETerm
	ETerm   uint64   `json:"et,omitempty"`
	Hashes  []uint64 `json:"h,omitempty"` // fnv-1a of each entry's Cmd
}

func cmdHash(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// TestCrashChild is the child process of TestCrash; without its environment variable it does
// nothing.
func TestCrashChild(t *testing.T) {
	v := os.Getenv(crashChildEnv)
	if v == "" {
		return
	}
	seedText, dir, ok := strings.Cut(v, ":")
	seed, err := strconv.ParseUint(seedText, 10, 64)
	if !ok || err != nil {
		crashDie("bad %s=%q", crashChildEnv, v)
	}
	runCrashChild(dir, seed) // does not return: killed by the parent
}

func crashDie(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "crash child: "+format+"\n", args...)
	os.Exit(3)
}

// crashView is what the child knows of a replica, recovered from the log at start.
type crashView struct {
	exists             bool // bootstrapped or imported
	term, vote, commit uint64
	last               uint64 // the last index of the log
	ss                 uint64 // the snapshot's index
}

type crashChild struct {
	l     *Log
	rng   *rand.Rand
	views []crashView
	seq   int
}

func runCrashChild(dir string, seed uint64) {
	l, err := Open(dir, Options{SegmentBytes: crashSegBytes})
	if err != nil {
		crashDie("open: %v", err)
	}
	c := &crashChild{l: l, rng: rand.New(rand.NewPCG(seed, 0xc4a5)), views: make([]crashView, len(crashKeys))}
	for i, k := range crashKeys {
		v := &c.views[i]
		_, err := l.GetBootstrapInfo(k.shard, k.replica)
		if err != nil && !errors.Is(err, raftio.ErrNoBootstrapInfo) {
			crashDie("bootstrap %v: %v", k, err)
		}
		v.exists = err == nil
		ss, err := l.GetSnapshot(k.shard, k.replica)
		if err != nil {
			crashDie("snapshot %v: %v", k, err)
		}
		v.ss, v.last = ss.Index, ss.Index
		rs, err := l.ReadRaftState(k.shard, k.replica, ss.Index)
		if errors.Is(err, raftio.ErrNoSavedLog) {
			continue
		}
		if err != nil {
			crashDie("raft state %v: %v", k, err)
		}
		v.term, v.vote, v.commit = rs.State.Term, rs.State.Vote, rs.State.Commit
		if rs.EntryCount > 0 {
			v.last = rs.FirstIndex + rs.EntryCount - 1
		}
	}
	for {
		c.step()
	}
}

func (c *crashChild) emit(line crashLine) {
	b, err := json.Marshal(line)
	if err != nil {
		crashDie("marshal: %v", err)
	}
	if _, err := os.Stdout.Write(append(b, '\n')); err != nil {
		os.Exit(4) // the parent is gone
	}
}

// call prints line as an intent, runs f, and prints done once f returned.
func (c *crashChild) call(line crashLine, f func() error) {
	line.Seq = c.seq
	c.seq++
	line.Rot = c.l.segs[len(c.l.segs)-1].size >= c.l.opts.SegmentBytes // single-threaded: no lock
	c.emit(line)
	if err := f(); err != nil {
		crashDie("%s: %v", line.Op, err)
	}
	c.emit(crashLine{Seq: line.Seq, Done: true})
}

func crashCmdSize(rng *rand.Rand) int {
	switch r := rng.IntN(100); {
	case r < 60:
		return rng.IntN(128)
	case r < 95:
		return rng.IntN(2 << 10)
	default:
		return 2<<10 + rng.IntN(4<<10)
	}
}

func (c *crashChild) step() {
	rng := c.rng
	switch r := rng.IntN(1000); {
	case r < 3: // a replica restarted from an imported snapshot
		i := rng.IntN(len(crashKeys))
		c.importSnapshot(i)
		return
	case r < 6: // a replica removed
		i := rng.IntN(len(crashKeys))
		if !c.views[i].exists {
			break
		}
		k := crashKeys[i]
		c.call(crashLine{Op: "rmnode", R: i}, func() error { return c.l.RemoveNodeData(k.shard, k.replica) })
		c.views[i] = crashView{}
		return
	case r < 120: // snapshots taken, then entries removed up to a little below them
		var ups []crashUpd
		var pbUps []pb.Update
		for i, v := range c.views {
			if !v.exists || v.commit <= v.ss || rng.IntN(2) == 0 {
				continue
			}
			ss := pb.Snapshot{Index: v.ss + 1 + rng.Uint64N(v.commit-v.ss), Term: max(v.term, 1), Type: pb.OnDiskStateMachine}
			ups = append(ups, crashUpd{R: i, SsIndex: ss.Index, SsTerm: ss.Term})
			pbUps = append(pbUps, pb.Update{ShardID: crashKeys[i].shard, ReplicaID: crashKeys[i].replica, Snapshot: ss})
		}
		if len(ups) == 0 {
			break
		}
		c.call(crashLine{Op: "snap", Ups: ups}, func() error { return c.l.SaveSnapshots(pbUps) })
		for _, u := range ups {
			c.views[u.R].ss = u.SsIndex
			to := u.SsIndex - min(u.SsIndex, rng.Uint64N(8))
			if to == 0 {
				continue
			}
			k := crashKeys[u.R]
			c.call(crashLine{Op: "rm", R: u.R, Index: to}, func() error { return c.l.RemoveEntriesTo(k.shard, k.replica, to) })
		}
		return
	}
	// A round of SaveRaftState for one to all replicas.
	chosen := rng.Perm(len(crashKeys))[:1+rng.IntN(len(crashKeys))]
	for _, i := range chosen {
		if !c.views[i].exists {
			if rng.IntN(4) == 0 {
				c.importSnapshot(i)
				return
			}
			k := crashKeys[i]
			join := rng.IntN(2) == 0
			bs := pb.Bootstrap{Addresses: crashAddresses(k), Join: join, Type: pb.OnDiskStateMachine}
			c.call(crashLine{Op: "boot", R: i, Join: join}, func() error { return c.l.SaveBootstrapInfo(k.shard, k.replica, bs) })
			c.views[i] = crashView{exists: true}
			return
		}
	}
	var ups []crashUpd
	var pbUps []pb.Update
	for _, i := range chosen {
		u, pu := c.update(i)
		ups, pbUps = append(ups, u), append(pbUps, pu)
	}
	c.call(crashLine{Op: "save", Ups: ups}, func() error { return c.l.SaveRaftState(pbUps, 1) })
}

func crashAddresses(k nodeKey) map[uint64]string {
	return map[uint64]string{k.replica: fmt.Sprintf("site-%d-%d:7000", k.shard, k.replica)}
}

func (c *crashChild) importSnapshot(i int) {
	v := &c.views[i]
	k := crashKeys[i]
	ss := pb.Snapshot{ShardID: k.shard, Index: max(v.last, v.ss) + 1 + c.rng.Uint64N(50), Term: max(v.term, 1), Type: pb.OnDiskStateMachine}
	c.call(crashLine{Op: "import", R: i, Index: ss.Index, Term: ss.Term}, func() error { return c.l.ImportSnapshot(ss, k.replica) })
	*v = crashView{exists: true, term: ss.Term, commit: ss.Index, last: ss.Index, ss: ss.Index}
}

// update builds replica i's part of a SaveRaftState: entries appended (or a suffix above the
// commit index overwritten by a new term's leader), maybe after a snapshot received, and the
// state.
func (c *crashChild) update(i int) (crashUpd, pb.Update) {
	rng, v, k := c.rng, &c.views[i], crashKeys[i]
	v.term = max(v.term, 1)
	pu := pb.Update{ShardID: k.shard, ReplicaID: k.replica}
	u := crashUpd{R: i}
	from := uint64(0) // no entries
	switch r := rng.IntN(100); {
	case r < 4: // a snapshot received from the leader, maybe entries after it
		if rng.IntN(2) == 0 {
			v.term, v.vote = v.term+1, uint64(rng.IntN(4))
		}
		ss := pb.Snapshot{Index: max(v.last, v.ss) + 1 + rng.Uint64N(20), Term: v.term, Type: pb.OnDiskStateMachine}
		pu.Snapshot = ss
		u.SsIndex, u.SsTerm = ss.Index, ss.Term
		v.ss, v.last, v.commit = ss.Index, ss.Index, ss.Index
		if rng.IntN(2) == 0 {
			from = v.last + 1
		}
	case r < 12: // the state only: a vote, or the commit index moving
		if rng.IntN(3) == 0 {
			v.term, v.vote = v.term+1, uint64(rng.IntN(4))
		}
	case r < 27 && v.last > v.commit: // a new leader overwrites the uncommitted suffix
		v.term, v.vote = v.term+1, uint64(rng.IntN(4))
		from = v.commit + 1 + rng.Uint64N(v.last-v.commit)
	default:
		if rng.IntN(30) == 0 {
			v.term, v.vote = v.term+1, uint64(rng.IntN(4))
		}
		from = v.last + 1
	}
	if from > 0 {
		n := 1 + rng.IntN(8)
		u.First, u.ETerm = from, v.term
		for j := range n {
			cmd := make([]byte, crashCmdSize(rng))
			for b := range cmd {
				cmd[b] = byte(rng.Uint32())
			}
			pu.EntriesToSave = append(pu.EntriesToSave, pb.Entry{Index: from + uint64(j), Term: v.term, Cmd: cmd})
			u.Hashes = append(u.Hashes, cmdHash(cmd))
		}
		v.last = from + uint64(n) - 1
	}
	v.commit += rng.Uint64N(v.last - v.commit + 1)
	pu.State = pb.State{Term: v.term, Vote: v.vote, Commit: v.commit}
	u.St, u.Term, u.Vote, u.Commit = true, v.term, v.vote, v.commit
	return u, pu
}

// crashReplica is the parent's model of one replica: what the acknowledged calls promise.
type crashReplica struct {
	boot     int // 0 none, 1 SaveBootstrapInfo, 2 ImportSnapshot
	join     bool
	hasState bool
	state    pb.State
	ss       pb.Snapshot // Index, Term and Type
	last     uint64      // the log's last index
	lo       uint64      // entries (lo, last] are retained
	ents     map[uint64]crashEnt
}

type crashEnt struct{ term, hash uint64 }

type crashModel []*crashReplica

func (m crashModel) clone() crashModel {
	out := make(crashModel, len(m))
	for i, r := range m {
		if r != nil {
			c := *r
			c.ents = make(map[uint64]crashEnt, len(r.ents))
			for k, v := range r.ents {
				c.ents[k] = v
			}
			out[i] = &c
		}
	}
	return out
}

func (m crashModel) get(i int) *crashReplica {
	if m[i] == nil {
		m[i] = &crashReplica{ents: map[uint64]crashEnt{}}
	}
	return m[i]
}

func (r *crashReplica) dropIf(drop func(uint64) bool) {
	for i := range r.ents {
		if drop(i) {
			delete(r.ents, i)
		}
	}
}

func (m crashModel) apply(l *crashLine) {
	switch l.Op {
	case "boot":
		r := m.get(l.R)
		r.boot, r.join = 1, l.Join
	case "save":
		for _, u := range l.Ups {
			r := m.get(u.R)
			if u.St {
				r.hasState, r.state = true, pb.State{Term: u.Term, Vote: u.Vote, Commit: u.Commit}
			}
			if u.SsIndex > r.ss.Index { // a snapshot received: the log ends there
				r.ss = pb.Snapshot{Index: u.SsIndex, Term: u.SsTerm, Type: pb.OnDiskStateMachine}
				r.last, r.lo = u.SsIndex, max(r.lo, u.SsIndex)
				r.dropIf(func(uint64) bool { return true })
			}
			if len(u.Hashes) > 0 {
				for j, h := range u.Hashes {
					r.ents[u.First+uint64(j)] = crashEnt{term: u.ETerm, hash: h}
				}
				r.last = u.First + uint64(len(u.Hashes)) - 1
				r.dropIf(func(i uint64) bool { return i > r.last })
			}
		}
	case "snap":
		for _, u := range l.Ups {
			if r := m.get(u.R); u.SsIndex > r.ss.Index {
				r.ss = pb.Snapshot{Index: u.SsIndex, Term: u.SsTerm, Type: pb.OnDiskStateMachine}
			}
		}
	case "rm":
		if r := m[l.R]; r != nil {
			r.lo = max(r.lo, l.Index)
			r.dropIf(func(i uint64) bool { return i <= l.Index })
		}
	case "rmnode":
		m[l.R] = nil
	case "import":
		m[l.R] = &crashReplica{
			boot: 2, join: true, hasState: true, state: pb.State{Term: l.Term, Commit: l.Index},
			ss:   pb.Snapshot{Index: l.Index, Term: l.Term, Type: pb.OnDiskStateMachine},
			last: l.Index, lo: l.Index, ents: map[uint64]crashEnt{},
		}
	default:
		panic("unknown op " + l.Op)
	}
}

// check compares the log with the model; nil if every promise is kept.
func (m crashModel) check(l *Log) error {
	var wantNodes []raftio.NodeInfo
	for i, k := range crashKeys {
		r := m[i]
		if r == nil {
			r = &crashReplica{}
		}
		bs, err := l.GetBootstrapInfo(k.shard, k.replica)
		switch r.boot {
		case 0:
			if !errors.Is(err, raftio.ErrNoBootstrapInfo) {
				return fmt.Errorf("%v: bootstrap %+v, %v; want none", k, bs, err)
			}
		default:
			want := pb.Bootstrap{Join: true, Type: pb.OnDiskStateMachine}
			if r.boot == 1 {
				want = pb.Bootstrap{Addresses: crashAddresses(k), Join: r.join, Type: pb.OnDiskStateMachine}
			}
			if err != nil || bs.Join != want.Join || bs.Type != want.Type || !maps.Equal(bs.Addresses, want.Addresses) {
				return fmt.Errorf("%v: bootstrap %+v, %v; want %+v", k, bs, err, want)
			}
			wantNodes = append(wantNodes, raftio.GetNodeInfo(k.shard, k.replica))
		}
		ss, err := l.GetSnapshot(k.shard, k.replica)
		if err != nil || ss.Index != r.ss.Index || ss.Term != r.ss.Term || ss.Type != r.ss.Type {
			return fmt.Errorf("%v: snapshot %d/%d/%v, %v; want %d/%d/%v", k, ss.Index, ss.Term, ss.Type, err, r.ss.Index, r.ss.Term, r.ss.Type)
		}
		rs, err := l.ReadRaftState(k.shard, k.replica, r.ss.Index)
		if !r.hasState {
			if !errors.Is(err, raftio.ErrNoSavedLog) {
				return fmt.Errorf("%v: raft state %+v, %v; want none", k, rs, err)
			}
			continue
		}
		want := raftio.RaftState{State: r.state, FirstIndex: r.ss.Index}
		if r.last != r.ss.Index {
			want.FirstIndex = max(r.lo+1, r.ss.Index)
			want.EntryCount = r.last - want.FirstIndex + 1
		}
		if err != nil || rs != want {
			return fmt.Errorf("%v: raft state %+v, %v; want %+v", k, rs, err, want)
		}
		// Every retained entry, and none past the end of the log.
		ents, _, err := l.IterateEntries(nil, 0, k.shard, k.replica, r.lo+1, r.last+10, math.MaxUint64)
		if err != nil {
			return fmt.Errorf("%v: entries (%d, %d]: %v", k, r.lo, r.last, err)
		}
		if uint64(len(ents)) != r.last-r.lo {
			return fmt.Errorf("%v: %d entries from %d, want (%d, %d]", k, len(ents), r.lo+1, r.lo, r.last)
		}
		for j, e := range ents {
			idx := r.lo + 1 + uint64(j)
			w := r.ents[idx]
			if e.Index != idx || e.Term != w.term || cmdHash(e.Cmd) != w.hash {
				return fmt.Errorf("%v: entry %d: index %d term %d cmd %x (%d bytes); want term %d cmd %x",
					k, idx, e.Index, e.Term, cmdHash(e.Cmd), len(e.Cmd), w.term, w.hash)
			}
		}
	}
	nodes, err := l.ListNodeInfo()
	if err != nil || !slices.Equal(nodes, wantNodes) {
		return fmt.Errorf("nodes %v, %v; want %v", nodes, err, wantNodes)
	}
	return nil
}

// TestCrash kills a writing child process with SIGKILL, again and again in the same directory,
// and checks the log it leaves each time against what the child was promised.
func TestCrash(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
	}
	t.Logf("%s=%d", crashSeedEnv, seed)
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	model := make(crashModel, len(crashKeys))
	for round := range rounds {
		// 50 to 2000 calls acknowledged, as many short runs as long ones.
		kill := int(50 * math.Exp(rng.Float64()*math.Log(40)))
		model = crashRound(t, dir, seed*1000+uint64(round), kill, crashMode(rng.IntN(3)), model, round)
	}
}

// crashMode is when the parent kills the child once enough calls are acknowledged.
type crashMode int

const (
	crashOnDone     crashMode = iota // a call returned
	crashOnIntent                    // a call begun
	crashOnRotation                  // a call begun that starts a new segment
)

func (m crashMode) String() string { return [...]string{"on done", "on intent", "on rotation"}[m] }

// crashRound runs one child until kill calls are acknowledged (and, by mode, the next one
// begun), kills it, and checks the log against model and the calls acknowledged; it returns
// the model of what the log now holds.
func crashRound(t *testing.T, dir string, seed uint64, kill int, mode crashMode, model crashModel, round int) crashModel {
	start := time.Now()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d:%s", crashChildEnv, seed, dir))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	// Read every line the child printed, killing it once kill calls are done; the lines
	// printed before it died still count.
	var lines []crashLine
	done, killed := 0, false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l crashLine
		require.NoError(t, json.Unmarshal(sc.Bytes(), &l), "child line %q; stderr: %s", sc.Text(), &stderr)
		lines = append(lines, l)
		if l.Done {
			done++
		}
		// Killed after a call returned, or right after an intent, while the child is in
		// the call (a write, an fdatasync, a segment's removal), or in a call that starts a
		// new segment (the file's creation, its checkpoint, the directory's sync).
		if !killed && done >= kill && (mode == crashOnDone && l.Done || mode == crashOnIntent && !l.Done || mode == crashOnRotation && l.Rot) {
			require.NoError(t, cmd.Process.Kill())
			killed = true
		}
	}
	require.NoError(t, sc.Err())
	err = cmd.Wait()
	waited = true
	require.True(t, killed, "the child exited by itself after %d calls: %v; stderr: %s", done, err, &stderr)
	require.Error(t, err)
	require.Empty(t, stderr.String(), "child's stderr")

	// The model from the acknowledged calls; the call in flight, if any, apart.
	var inFlight *crashLine
	for i := range lines {
		l := &lines[i]
		if l.Done {
			require.NotNil(t, inFlight, "done line %d without an intent", l.Seq)
			require.Equal(t, inFlight.Seq, l.Seq)
			model.apply(inFlight)
			inFlight = nil
			continue
		}
		require.Nil(t, inFlight, "intent %d while %v in flight", l.Seq, inFlight)
		inFlight = l
	}

	tail := crashTail(t, dir)
	l, err := Open(dir, Options{SegmentBytes: crashSegBytes})
	require.NoError(t, err, "round %d (seed %d): open after the kill", round, seed)
	defer l.Close()
	landed := "none in flight"
	if inFlight == nil {
		require.NoError(t, model.check(l), "round %d (seed %d): after %d calls", round, seed, done)
	} else {
		after := model.clone()
		after.apply(inFlight)
		errAfter := after.check(l)
		switch errBefore := model.check(l); {
		case errAfter == nil && errBefore == nil:
			model, landed = after, "landed or changed nothing visible"
		case errAfter == nil:
			model, landed = after, "landed"
		case errBefore == nil:
			landed = "not landed"
		default:
			op, _ := json.Marshal(inFlight)
			t.Fatalf("round %d (seed %d): after %d calls, %s in flight:\nif it landed: %v\nif not: %v", round, seed, done, op, errAfter, errBefore)
		}
	}
	st := l.Stats()
	files := segmentFiles(t, dir)
	require.Equal(t, st.Segments, len(files))
	var inFlightOp string
	if inFlight != nil {
		inFlightOp = inFlight.Op
	}
	t.Logf("round %d: killed %v after %d calls acknowledged (kill at %d), %s %s; last segment %s; %d segments, %d entries retained; %v",
		round, mode, done, kill, inFlightOp, landed, tail, st.Segments, st.Entries, time.Since(start).Round(time.Millisecond))
	require.NoError(t, l.Close())
	return model
}

// crashTail describes the last segment as the kill left it: its whole frames and any torn
// bytes after them.
func crashTail(t *testing.T, dir string) string {
	t.Helper()
	files := segmentFiles(t, dir)
	require.NotEmpty(t, files)
	b, err := os.ReadFile(files[len(files)-1])
	require.NoError(t, err)
	frames, off := 0, 0
	for {
		n, ok := checkFrame(b[off:])
		if !ok {
			break
		}
		frames, off = frames+1, off+frameHeader+n
	}
	if off < len(b) {
		return fmt.Sprintf("%d frames + %d torn bytes", frames, len(b)-off)
	}
	return fmt.Sprintf("%d frames", frames)
}
