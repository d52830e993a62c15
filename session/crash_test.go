package session_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// Crash tests of durable sessions. A subscriber session ("sub", subscribed to a/# at QoS 2
// and b/# at QoS 1) takes deliveries and acknowledges some, while a publisher stores messages
// (QoS 1 and 2, to a/, b/ and the unmatched c/) and inbound QoS 2 PUBLISHes (StoreQoS2).
// The DB crashes at a random moment; on the surviving files, the session is resumed and must:
//
//   - deliver again every stored message (Store returned) that matched a subscription at QoS
//     1 or 2 and whose acknowledgement (PUBACK, PUBCOMP) the session had not been given;
//   - resend each QoS 2 delivery that Next returned with its packet ID: as DUP with the same
//     message if no PUBREC was taken, as PUBREL if Received returned;
//   - not deliver a QoS 2 message twice (once resent or released, it does not come again);
//   - answer an inbound QoS 2 re-send of a packet ID stored before the crash as a duplicate,
//     and hold every inbound QoS 2 message exactly once.
//
// The oracle is fed by the test's goroutines (a) or a child process's stdout (b). Every
// acknowledgement is recorded before it is made (an attempted ack may have been checkpointed:
// its message is not required again) and every completed step (Store, Next, Received,
// StoreQoS2) after it returned (only those bind the resumed session).

const crashClient = "sub"

var crashSubs = map[string]byte{"a": 2, "b": 1} // topic root → subscription QoS

// granted is the QoS a message on topic is delivered at (0: not delivered).
func granted(topic string, qos byte) byte {
	root, _, _ := strings.Cut(topic, "/")
	return min(qos, crashSubs[root])
}

type storedMsg struct {
	topic string
	qos   byte
}

// crashOracle records what happened before the crash.
type crashOracle struct {
	mu        sync.Mutex
	cond      *sync.Cond
	stored    map[ds.Ref]storedMsg        // Store returned
	delivered map[ds.Ref]session.Delivery // Next returned it (QoS 1 and 2)
	ackTried  map[ds.Ref]bool             // Ack (QoS 1) or Complete (QoS 2) called
	recvTried map[uint16]bool             // Received called for the packet ID
	recvDone  map[uint16]bool             // Received returned nil
	inTried   map[uint16]bool             // StoreQoS2 called for the inbound packet ID
	inDone    map[uint16]bool             // StoreQoS2 returned stored
	lines     int
}

func newCrashOracle() *crashOracle {
	o := &crashOracle{stored: map[ds.Ref]storedMsg{}, delivered: map[ds.Ref]session.Delivery{}, ackTried: map[ds.Ref]bool{},
		recvTried: map[uint16]bool{}, recvDone: map[uint16]bool{}, inTried: map[uint16]bool{}, inDone: map[uint16]bool{}}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *crashOracle) update(f func()) {
	o.mu.Lock()
	f()
	o.lines++
	o.cond.Broadcast()
	o.mu.Unlock()
}

// waitStored waits until n stores were recorded.
func (o *crashOracle) waitStored(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(o.stored) < n {
		o.cond.Wait()
	}
}

// cloneLocked copies the oracle; the caller holds o.mu.
func (o *crashOracle) cloneLocked() *crashOracle {
	c := &crashOracle{stored: maps.Clone(o.stored), delivered: maps.Clone(o.delivered), ackTried: maps.Clone(o.ackTried),
		recvTried: maps.Clone(o.recvTried), recvDone: maps.Clone(o.recvDone), inTried: maps.Clone(o.inTried), inDone: maps.Clone(o.inDone)}
	return c
}

func inboundMessage(pid uint16) ds.Message {
	return ds.Message{ClientID: "pub2", Topic: fmt.Sprintf("in/%d", pid), QoS: 2, Payload: fmt.Appendf(nil, "inbound %d", pid)}
}

// crashWorkload runs the publisher and the subscriber until ctx ends. emit, if not nil, is
// called for every step (the child process prints it).
type crashWorkload struct {
	db *ds.DB
	st *session.Store
	s  *session.Session
	o  *crashOracle
}

func (w *crashWorkload) publish(ctx context.Context, seed uint64, emit func(string)) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := 0; ctx.Err() == nil && i < 5000; i++ {
		if rng.IntN(5) == 0 {
			pid := uint16(i + 1)
			w.o.update(func() { w.o.inTried[pid] = true })
			emit(fmt.Sprintf("INTRY %d", pid))
			stored, err := w.st.StoreQoS2(context.Background(), inboundMessage(pid), pid)
			if err != nil {
				return err
			}
			if !stored {
				return fmt.Errorf("inbound %d: first send not stored", pid)
			}
			w.o.update(func() { w.o.inDone[pid] = true })
			emit(fmt.Sprintf("IN %d", pid))
			continue
		}
		topic := fmt.Sprintf("%s/%d", []string{"a", "b", "c"}[rng.IntN(3)], rng.IntN(5))
		qos := byte(1 + rng.IntN(2))
		refs, err := w.db.Store(context.Background(), ds.Message{ClientID: fmt.Sprintf("pub%d", rng.IntN(3)), Topic: topic, QoS: qos,
			Payload: fmt.Appendf(nil, "%s #%d", topic, i)})
		if err != nil {
			return err
		}
		w.o.update(func() { w.o.stored[refs[0]] = storedMsg{topic, qos} })
		emit(fmt.Sprintf("STORED %d %d %s %d", refs[0].Shard, refs[0].Timestamp, topic, qos))
	}
	return nil
}

func (w *crashWorkload) subscribe(ctx context.Context, seed uint64, emit func(string)) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	var received []uint16 // PUBREC taken, PUBCOMP not yet
	for ctx.Err() == nil {
		ds_, err := w.s.Next(ctx, 1+rng.IntN(8))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, d := range ds_ {
			if d.QoS == 0 || d.Release {
				return fmt.Errorf("unexpected delivery %+v", d)
			}
			ref := ds.RefOf(d.Message)
			w.o.update(func() { w.o.delivered[ref] = d })
			emit(fmt.Sprintf("DELIVER %d %d %d %d %q", ref.Shard, ref.Timestamp, d.QoS, d.PacketID, d.Message.Payload))
			switch {
			case d.QoS == 1 && rng.IntN(2) == 0:
				w.o.update(func() { w.o.ackTried[ref] = true })
				emit(fmt.Sprintf("ACK %d %d", ref.Shard, ref.Timestamp))
				if err := w.s.Ack(d.PacketID); err != nil {
					return err
				}
			case d.QoS == 2 && rng.IntN(3) > 0:
				w.o.update(func() { w.o.recvTried[d.PacketID] = true })
				emit(fmt.Sprintf("RECVTRY %d", d.PacketID))
				if err := w.s.Received(context.Background(), d.PacketID); err != nil {
					return err
				}
				w.o.update(func() { w.o.recvDone[d.PacketID] = true })
				emit(fmt.Sprintf("RECV %d", d.PacketID))
				received = append(received, d.PacketID)
			}
		}
		// Complete some of the received ones, not necessarily in order.
		for len(received) > 0 && rng.IntN(3) == 0 {
			i := rng.IntN(len(received))
			pid := received[i]
			received = append(received[:i], received[i+1:]...)
			ref := ds.Ref{}
			w.o.mu.Lock()
			for r, d := range w.o.delivered {
				if d.PacketID == pid && d.QoS == 2 {
					ref = r
				}
			}
			w.o.mu.Unlock()
			w.o.update(func() { w.o.ackTried[ref] = true })
			emit(fmt.Sprintf("COMP %d %d %d", ref.Shard, ref.Timestamp, pid))
			if err := w.s.Complete(pid); err != nil {
				return err
			}
		}
	}
	return nil
}

// connectSubscriber connects the subscriber session; a new one subscribes.
func connectSubscriber(t testing.TB, st *session.Store) *session.Session {
	ctx := context.Background()
	s, present, err := st.Connect(ctx, crashClient, session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	if !present {
		for root, qos := range crashSubs {
			require.NoError(t, s.Subscribe(ctx, root+"/#", session.SubscribeOptions{QoS: qos}))
		}
	}
	return s
}

// verifyResume resumes the session on db (the crashed DB reopened) and checks o's properties.
func verifyResume(t *testing.T, db *ds.DB, o *crashOracle) {
	ctx := context.Background()
	st, err := session.Open(ctx, db, &session.Options{CheckpointInterval: time.Hour, ExpiryInterval: time.Hour})
	require.NoError(t, err)
	defer st.Close()
	s, present, err := st.Connect(ctx, crashClient, session.ConnectOptions{Expiry: time.Hour})
	require.NoError(t, err)
	require.True(t, present, "the session did not survive the crash")
	require.Len(t, s.Subscriptions(), len(crashSubs))

	reqMsg := map[ds.Ref]bool{}       // to be delivered (any packet ID)
	reqResend := map[uint16]ds.Ref{}  // QoS 2 resent as DUP with this packet ID
	reqRelease := map[uint16]ds.Ref{} // PUBREL for this packet ID
	reqEither := map[uint16]ds.Ref{}  // a resend or a PUBREL (PUBREC in progress at the crash)
	for ref, d := range o.delivered {
		if d.QoS != 2 || o.ackTried[ref] {
			continue
		}
		switch {
		case o.recvDone[d.PacketID]:
			reqRelease[d.PacketID] = ref
		case o.recvTried[d.PacketID]:
			reqEither[d.PacketID] = ref
		default:
			reqResend[d.PacketID] = ref
		}
	}
	for ref, m := range o.stored {
		g := granted(m.topic, m.qos)
		if g == 0 || o.ackTried[ref] {
			continue
		}
		if d, ok := o.delivered[ref]; ok && d.QoS == 2 {
			continue // bound by its packet ID above
		}
		reqMsg[ref] = true
	}
	t.Logf("%d stored, %d delivered, %d acks tried, %d inbound QoS 2; required after resume: %d messages, %d QoS 2 resends, %d PUBRELs, %d either",
		len(o.stored), len(o.delivered), len(o.ackTried), len(o.inTried), len(reqMsg), len(reqResend), len(reqRelease), len(reqEither))

	got := map[ds.Ref][]session.Delivery{}
	releases := map[uint16]bool{}
	byPID := map[uint16][]session.Delivery{}
	missing := func() []string {
		var out []string
		for ref := range reqMsg {
			if len(got[ref]) == 0 {
				out = append(out, fmt.Sprintf("message %v (%+v)", ref, o.stored[ref]))
			}
		}
		for pid, ref := range reqResend {
			if len(byPID[pid]) == 0 {
				out = append(out, fmt.Sprintf("QoS 2 resend of %v as %d", ref, pid))
			}
		}
		for pid, ref := range reqRelease {
			if !releases[pid] {
				out = append(out, fmt.Sprintf("PUBREL %d (of %v)", pid, ref))
			}
		}
		for pid, ref := range reqEither {
			if !releases[pid] && len(byPID[pid]) == 0 {
				out = append(out, fmt.Sprintf("PUBREL or resend %d (of %v)", pid, ref))
			}
		}
		return out
	}
	// A marker per subscription and shard, stored now: once every marker came, everything
	// stored before it on its shard came too (a subscription delivers a shard's messages in
	// order, after the resends).
	markers := map[string]bool{}
	for root := range crashSubs {
		for sh := range db.NShards() {
			for i := 0; ; i++ {
				client := fmt.Sprintf("marker%d", i)
				if ds.ShardOf(client, db.NShards()) != ds.ShardID(sh) {
					continue
				}
				topic := fmt.Sprintf("%s/marker/%d", root, sh)
				_, err := db.Store(ctx, ds.Message{ClientID: client, Topic: topic, QoS: 1})
				require.NoError(t, err)
				markers[topic] = true
				break
			}
		}
	}
	nctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	for len(markers) > 0 {
		batch, err := s.Next(nctx, 64)
		if err != nil {
			m := missing()
			require.NoError(t, err, "markers missing %v; missing %d: %v", markers, len(m), m[:min(len(m), 10)])
		}
		for _, d := range batch {
			if markers[d.Message.Topic] {
				delete(markers, d.Message.Topic)
				continue
			}
			if d.Release {
				require.False(t, releases[d.PacketID], "PUBREL %d twice", d.PacketID)
				releases[d.PacketID] = true
				continue
			}
			ref := ds.RefOf(d.Message)
			got[ref] = append(got[ref], d)
			if d.QoS == 2 {
				byPID[d.PacketID] = append(byPID[d.PacketID], d)
			}
		}
	}
	m := missing()
	require.Empty(t, m, "missing %d after the resume: %v", len(m), m[:min(len(m), 10)])
	// Resends keep their packet IDs and messages, marked DUP.
	for pid, ref := range reqResend {
		d := byPID[pid][0]
		require.Equal(t, ref, ds.RefOf(d.Message), "packet ID %d resent with another message", pid)
		require.True(t, d.Dup, "QoS 2 resend %d not marked DUP", pid)
		require.Equal(t, o.delivered[ref].Message.Payload, d.Message.Payload)
		require.False(t, releases[pid], "packet ID %d both resent and released", pid)
	}
	for pid := range reqRelease {
		require.Empty(t, byPID[pid], "packet ID %d released and resent", pid)
	}
	for ref, ds_ := range got {
		if _, before := o.delivered[ref]; before {
			for _, d := range ds_ {
				require.True(t, d.Dup, "%v delivered before the crash, again without DUP", ref)
			}
		}
		// A QoS 2 message comes once: resent, or new, not both; never after its PUBREC.
		n2 := 0
		for _, d := range ds_ {
			if d.QoS == 2 {
				n2++
			}
		}
		require.LessOrEqual(t, n2, 1, "QoS 2 message %v delivered %d times after the resume", ref, n2)
		if d, ok := o.delivered[ref]; ok && d.QoS == 2 && o.recvDone[d.PacketID] {
			require.Zero(t, n2, "QoS 2 message %v delivered again after its PUBREC (PUBCOMP tried: %v): %+v", ref, o.ackTried[ref], ds_)
		}
	}

	// Inbound QoS 2: a re-send after the crash is recognised; each message is stored once.
	for pid := range o.inTried {
		stored, err := st.StoreQoS2(ctx, inboundMessage(pid), pid)
		require.NoError(t, err)
		if o.inDone[pid] {
			require.False(t, stored, "inbound %d stored again after the crash", pid)
		}
	}
	msgs, err := db.Messages("in/#", time.Time{}, 0)
	require.NoError(t, err)
	count := map[string]int{}
	for _, m := range msgs {
		count[string(m.Payload)]++
	}
	for pid := range o.inTried {
		require.Equal(t, 1, count[string(inboundMessage(pid).Payload)], "inbound %d stored %d times", pid, count[string(inboundMessage(pid).Payload)])
	}
	require.NoError(t, s.Disconnect(ctx))
}

func crashDBOptions(fs vfs.FS) *ds.Options {
	return &ds.Options{NShards: 2, Durability: ds.Sync, Retention: ds.RetainForever,
		Expert: ds.ExpertOptions{FS: fs, MemTableBytes: 4 << 20, CacheBytes: 1 << 20}}
}

// TestCrashResume (a): the DB on Pebble's crashable in-memory filesystem is cloned, as a
// crash would leave it (with a random share of unsynced data), at random moments of the
// workload; each clone is reopened and the session resumed.
func TestCrashResume(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for run := range 3 {
		fs := vfs.NewCrashableMem()
		db, err := ds.Open("/db", crashDBOptions(fs))
		require.NoError(t, err)
		st, err := session.Open(context.Background(), db, &session.Options{
			CheckpointInterval: time.Duration(2+rng.IntN(30)) * time.Millisecond, ExpiryInterval: time.Hour})
		require.NoError(t, err)
		o := newCrashOracle()
		w := &crashWorkload{db: db, st: st, s: connectSubscriber(t, st), o: o}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 2)
		noEmit := func(string) {}
		pubSeed, subSeed := rng.Uint64(), rng.Uint64()
		go func() { errc <- w.publish(ctx, pubSeed, noEmit) }()
		go func() { errc <- w.subscribe(ctx, subSeed, noEmit) }()

		type clone struct {
			fs  *vfs.MemFS
			o   *crashOracle
			pct int
		}
		var clones []clone
		target := 0
		for range 2 {
			target += 20 + rng.IntN(150)
			o.waitStored(target)
			pct := []int{0, 50, 100}[rng.IntN(3)]
			// The oracle is held still while the clone is taken: what it records happened
			// before.
			o.mu.Lock()
			c := clone{fs: fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng}), pct: pct}
			c.o = o.cloneLocked()
			o.mu.Unlock()
			clones = append(clones, c)
		}
		cancel()
		for range 2 {
			require.NoError(t, <-errc)
		}
		require.NoError(t, st.Close())
		require.NoError(t, db.Close())
		for i, c := range clones {
			t.Run(fmt.Sprintf("run%d/clone%d/unsynced%d", run, i, c.pct), func(t *testing.T) {
				db, err := ds.Open("/db", crashDBOptions(c.fs))
				require.NoError(t, err)
				defer db.Close()
				verifyResume(t, db, c.o)
			})
		}
	}
}

const crashChildEnv = "STRATA_SESSION_CRASH_CHILD"

func crashDiskOptions() *ds.Options {
	return &ds.Options{NShards: 2, Durability: ds.Sync, Retention: ds.RetainForever,
		Expert: ds.ExpertOptions{MemTableBytes: 4 << 20, CacheBytes: 1 << 20}}
}

// crashChild is the child process of TestCrashKillSubprocess: it runs the workload on the DB
// in dir and prints every step to stdout until it is killed.
func crashChild(dir string, seed uint64) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	time.AfterFunc(60*time.Second, func() { fail(errors.New("not killed")) })
	db, err := ds.Open(dir, crashDiskOptions())
	if err != nil {
		fail(err)
	}
	st, err := session.Open(context.Background(), db, &session.Options{CheckpointInterval: 3 * time.Millisecond, ExpiryInterval: time.Hour})
	if err != nil {
		fail(err)
	}
	s, _, err := st.Connect(context.Background(), crashClient, session.ConnectOptions{Expiry: time.Hour})
	if err != nil {
		fail(err)
	}
	for root, qos := range crashSubs {
		if err := s.Subscribe(context.Background(), root+"/#", session.SubscribeOptions{QoS: qos}); err != nil {
			fail(err)
		}
	}
	var mu sync.Mutex
	emit := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := os.Stdout.WriteString(line + "\n"); err != nil {
			os.Exit(4)
		}
	}
	emit("READY")
	w := &crashWorkload{db: db, st: st, s: s, o: newCrashOracle()}
	errc := make(chan error, 2)
	go func() { errc <- w.publish(context.Background(), seed, emit) }()
	go func() { errc <- w.subscribe(context.Background(), seed+1, emit) }()
	for {
		if err := <-errc; err != nil {
			fail(err)
		}
	}
}

// parseCrashLine feeds one line of the child's output to the oracle.
func parseCrashLine(o *crashOracle, line string) error {
	f := strings.Fields(line)
	num := func(i int) uint64 {
		if i >= len(f) {
			return 0
		}
		v, _ := strconv.ParseUint(f[i], 10, 64)
		return v
	}
	ref := func() ds.Ref { return ds.Ref{Shard: ds.ShardID(num(1)), Timestamp: num(2)} }
	if len(f) == 0 {
		return fmt.Errorf("empty line")
	}
	o.update(func() {
		switch f[0] {
		case "READY":
		case "STORED":
			o.stored[ref()] = storedMsg{topic: f[3], qos: byte(num(4))}
		case "DELIVER":
			_, q, _ := strings.Cut(line, "\"")
			p, _ := strconv.Unquote("\"" + q)
			d := session.Delivery{QoS: byte(num(3)), PacketID: uint16(num(4))}
			d.Message.Payload = []byte(p)
			o.delivered[ref()] = d
		case "ACK", "COMP":
			o.ackTried[ref()] = true
		case "RECVTRY":
			o.recvTried[uint16(num(1))] = true
		case "RECV":
			o.recvDone[uint16(num(1))] = true
		case "INTRY":
			o.inTried[uint16(num(1))] = true
		case "IN":
			o.inDone[uint16(num(1))] = true
		}
	})
	switch f[0] {
	case "READY", "STORED", "DELIVER", "ACK", "COMP", "RECVTRY", "RECV", "INTRY", "IN":
		return nil
	}
	return fmt.Errorf("unknown line %q", line)
}

// TestCrashKillSubprocess (b): the test binary runs itself as a child that stores, delivers
// and acknowledges on a DB in a directory (Sync durability), printing each step; the parent
// kills it (SIGKILL) after a random number of lines, reopens the directory and resumes the
// session, with the properties of TestCrashResume.
func TestCrashKillSubprocess(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		seed, _ := strconv.ParseUint(os.Getenv(crashChildEnv+"_SEED"), 10, 64)
		crashChild(dir, seed)
		return
	}
	if testing.Short() {
		t.Skip("spawns a process")
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	kill := 50 + rng.IntN(400)
	t.Logf("seed %d, kill after %d lines", seed, kill)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKillSubprocess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_SEED=%d", crashChildEnv, seed))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	o := newCrashOracle()
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		require.NoError(t, parseCrashLine(o, sc.Text()))
		if lines++; lines == kill {
			require.NoError(t, cmd.Process.Kill())
			killed = true
		}
	}
	// Every line written before the kill was read (EOF).
	require.NoError(t, sc.Err())
	err = cmd.Wait()
	killed = true
	require.Error(t, err)
	require.GreaterOrEqual(t, lines, kill, "the child ended early: %v\n%s", err, stderr.String())
	t.Logf("%d lines read", lines)

	db, err := ds.Open(dir, crashDiskOptions())
	require.NoError(t, err)
	defer db.Close()
	verifyResume(t, db, o.cloneLocked())
}
