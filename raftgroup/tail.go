package raftgroup

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// The tail feed of a site without a replica of a shard (PlacementVoters).
//
// A site that holds a replica keeps its last durable steps of the shard (the Durables its
// replica reported: messages, streams touched, record writes) in a bounded ring per shard,
// once another site asked for them. A site that holds none long-polls one holder's ring (the
// service's Tail call, forward.go's watch) and reports each step to its own DB as its own
// replicas' steps are reported, so that its tail subscriptions, watchers and record watchers
// (a session store's) are fed from memory as on a holder, instead of every step making each of
// them read the storage again through forwarded calls (a Reset).
//
// Ring positions: a ring numbers its steps (seq, never reused) under an epoch drawn when the
// site opened. A caller asks for the steps from (epoch, seq) on; an epoch of another ring
// (another holder, or this one after a restart), or a seq the ring no longer has (evicted, or
// cleared because the replica was reopened), gets a Reset at the ring's position.
//
// Step positions: a step goes from (From, FromVersion) to (Until, UntilVersion), the read
// limit and the last record version before and after it. Both are assigned in apply, the same
// on every replica, so they place a step among any replica's steps, records-only steps (which
// leave the read limit alone) included, however replicas group entries into steps. Every
// step reaches this site's DB through report, which keeps the position the DB stands at and
// passes a step on only if it starts there; a step already covered is dropped, any other
// becomes a Reset (readers look again). So a shard's DB is told of each step once and in order
// whatever the source: the local replica (once it serves) or a holder's ring, including
// across a change of holder or of source.
//
// # Invariants
//
//  1. The steps of a ring follow each other as the replica applied them: step i+1 starts where
//     step i ends (a replica reopened or recovered clears the ring first).
//  2. A caller that got the steps up to seq n-1 of one ring and asks for n gets step n next,
//     or a Reset: it never misses a step silently.
//  3. report passes on a step whose start is where the DB stands, drops one whose end is
//     covered by it, and turns any other into a Reset: no record write reaches a record
//     watcher twice or out of order, and none is skipped without a Reset.

// tailRingBytes and tailRingSteps bound what a ring keeps per shard: message and record
// bytes (encoded copies included), steps. A caller polls again as soon as it has an answer,
// so a ring needs to cover little more than a round trip. tailIdle: a ring nobody asked for
// that long keeps no steps (most shards of most sites are never asked: every site of a
// 3-site RF 3 cluster holds every shard).
const (
	tailRingBytes = 2 << 20
	tailRingSteps = 2048
	tailIdle      = time.Minute
)

// stepPos is a position among a shard's steps: a read limit and a record version.
type stepPos struct{ ts, ver uint64 }

// covers reports whether p is at or past q in both.
func (p stepPos) covers(q stepPos) bool { return q.ts <= p.ts && q.ver <= p.ver }

func (p stepPos) join(q stepPos) stepPos { return stepPos{max(p.ts, q.ts), max(p.ver, q.ver)} }

func startOf(d shard.Durable) stepPos { return stepPos{d.From, d.FromVersion} }
func endOf(d shard.Durable) stepPos   { return stepPos{d.Until, d.UntilVersion} }

// tailLog holds, per shard of this site, its ring and report's gate.
type tailLog struct {
	epoch  atomic.Uint64 // fixed at open (tests change it to stand for a restart)
	mu     sync.Mutex    // guards shards; each ring and gate has its own lock
	shards map[stream.ShardID]*tailShard
}

type tailShard struct {
	ring tailRing
	gate feedGate
}

type tailRing struct {
	mu    sync.Mutex
	next  uint64     // seq of the next step
	steps []tailStep // seqs next-len(steps) .. next-1
	bytes int
	end   stepPos   // where the last step added ended (or the Reset that cleared the ring)
	ended bool      // end is set
	asked time.Time // the last Tail call for the shard
}

type tailStep struct {
	d     shard.Durable
	bytes int
	enc   *wire.TailStep // encoded on first demand, shared by every caller
}

// feedGate is where a shard's DB stands (invariant 3).
type feedGate struct {
	mu  sync.Mutex
	pos stepPos
	set bool
}

func newTailLog() *tailLog {
	var b [8]byte
	rand.Read(b[:])
	l := &tailLog{shards: map[stream.ShardID]*tailShard{}}
	l.epoch.Store(binary.BigEndian.Uint64(b[:]) | 1)
	return l
}

func (l *tailLog) shard(id stream.ShardID) *tailShard {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.shards[id]
	if !ok {
		t = &tailShard{}
		l.shards[id] = t
	}
	return t
}

func (l *tailLog) ring(id stream.ShardID) *tailRing { return &l.shard(id).ring }
func (l *tailLog) gate(id stream.ShardID) *feedGate { return &l.shard(id).gate }

// add records a step of the shard's replica here. A Reset, or a step that does not start
// where the last one ended (invariant 1), clears the ring: callers positioned in it get a
// Reset.
func (l *tailLog) add(d shard.Durable) {
	r := l.ring(d.Shard)
	r.mu.Lock()
	defer r.mu.Unlock()
	idle := time.Since(r.asked) > tailIdle
	if d.Reset || (r.ended && startOf(d) != r.end) || (idle && len(r.steps) > 0) {
		r.clear() // a Reset, a gap, or nobody follows this shard any more
	}
	if d.Reset || idle {
		// Nothing to keep (a caller that comes gets a Reset at the end of this step first).
		r.end, r.ended = endOf(d), true
		return
	}
	n := 0
	for _, m := range d.Messages {
		n += message.Size(m)
	}
	for _, w := range d.Records {
		n += len(w.Key) + len(w.Value)
	}
	r.steps = append(r.steps, tailStep{d: d, bytes: n})
	r.bytes += n
	r.next++
	r.end, r.ended = endOf(d), true
	if r.bytes > tailRingBytes || len(r.steps) > tailRingSteps {
		// Evict down to three quarters of the bounds at once: one copy per many steps.
		drop := 0
		for len(r.steps)-drop > 1 && (r.bytes > tailRingBytes*3/4 || len(r.steps)-drop > tailRingSteps*3/4) {
			r.bytes -= r.steps[drop].bytes
			drop++
		}
		r.steps = append(r.steps[:0:0], r.steps[drop:]...)
	}
}

// reset clears the shard's ring: its replica here was (re)opened or closed, and what it
// reports next does not follow what the ring holds.
func (l *tailLog) reset(id stream.ShardID) {
	r := l.ring(id)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clear()
	r.ended = false
}

// clear forgets the steps, and skips a seq: a caller positioned at the end of the ring gets
// a Reset too, as what comes next does not follow what it saw.
func (r *tailRing) clear() {
	r.steps, r.bytes = nil, 0
	r.next++
}

// read fills reply with the steps of the shard from a.Seq on (at most a.MaxBytes of messages
// and records, at least one step), or with a Reset at the ring's position (at replica, the
// replica's position, when the ring has seen no step since it opened). It reports false when
// the caller is up to date (nothing to send yet).
func (l *tailLog) read(a *wire.Tail, replica stepPos, reply *wire.TailReply) bool {
	r := l.ring(a.Shard)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = time.Now()
	reply.Epoch = l.epoch.Load()
	first := r.next - uint64(len(r.steps))
	if a.Epoch != reply.Epoch || a.Seq < first || a.Seq > r.next {
		at := replica
		if r.ended {
			// The steps from r.next on start at r.end (invariant 1); the replica may already
			// be past a step not added yet.
			at = r.end
		}
		reply.Reset, reply.Next, reply.Limit, reply.Version = true, r.next, at.ts, at.ver
		return true
	}
	if a.Seq == r.next {
		return false
	}
	size := 0
	i := int(a.Seq - first)
	if st := r.steps[i]; st.bytes > maxReadReplyBytes {
		// Too large for one reply: the caller's readers read it from the storage.
		end := endOf(st.d)
		reply.Reset, reply.Next, reply.Limit, reply.Version = true, a.Seq+1, end.ts, end.ver
		return true
	}
	for ; i < len(r.steps) && (size == 0 || size+r.steps[i].bytes <= a.MaxBytes); i++ {
		st := &r.steps[i]
		if st.enc == nil {
			st.enc = encodeTailStep(st.d)
			st.bytes += len(st.enc.Msgs)
			r.bytes += len(st.enc.Msgs)
		}
		reply.Steps = append(reply.Steps, *st.enc)
		size += st.bytes
	}
	reply.Next = first + uint64(i)
	return true
}

// resetTo moves the gate past end and returns the Reset that tells the DB so.
func (g *feedGate) resetTo(id stream.ShardID, end stepPos) shard.Durable {
	from := g.pos
	g.pos = g.pos.join(end)
	return shard.Durable{Shard: id, From: from.ts, Until: g.pos.ts, FromVersion: from.ver, UntilVersion: g.pos.ver, Reset: true}
}

// report passes d, a step of shard d.Shard, to this site's DB (notifyDurable) if it comes from
// the source that feeds the shard here now (fromReplica: the local replica, which feeds once
// it serves; else a holder's ring, through the watch), in order (invariant 3). It returns
// what it passed on, if anything.
func (s *Site) report(d shard.Durable, fromReplica bool) (shard.Durable, bool) {
	g := s.tails.gate(d.Shard)
	g.mu.Lock()
	defer g.mu.Unlock()
	if fromReplica != (s.servingSM(d.Shard) != nil) {
		return d, false // the other source feeds the shard here
	}
	start, end := startOf(d), endOf(d)
	if !g.set {
		// The first step since the site opened: the DB knows nothing of the shard in memory.
		// A replica's step is passed on as it is; a holder's first answer (a Reset) too.
		g.pos, g.set = start, true
		if d.Reset {
			g.pos = stepPos{}
		}
	}
	switch {
	case d.Reset && (fromReplica || !g.pos.covers(end)):
		// The replica here was replaced (always passed on), or a holder's ring says the
		// shard is past where the DB stands.
		d = g.resetTo(d.Shard, end)
	case d.Reset:
		return d, false // a holder that lags: its steps to come are dropped until they pass
	case start == g.pos:
		g.pos = end
	case g.pos.covers(end):
		return d, false // told already
	default:
		d = g.resetTo(d.Shard, end)
	}
	s.notifyDurable(d)
	return d, true
}

func encodeTailStep(d shard.Durable) *wire.TailStep {
	s := &wire.TailStep{From: d.From, Until: d.Until, FromVersion: d.FromVersion, UntilVersion: d.UntilVersion, Streams: d.Streams, Records: d.Records}
	s.Msgs, s.TS = wireMessages(d.Messages)
	return s
}

// decodeTailStep returns the Durable a step of shard id stands for, its messages owned by the
// caller.
func decodeTailStep(id stream.ShardID, s *wire.TailStep) (shard.Durable, bool) {
	d := shard.Durable{Shard: id, From: s.From, Until: s.Until, FromVersion: s.FromVersion, UntilVersion: s.UntilVersion,
		Streams: s.Streams, Records: s.Records, Owned: true}
	if s.From > s.Until || s.FromVersion > s.UntilVersion {
		return d, false
	}
	msgs, err := unwireMessages(id, s.Msgs, s.TS)
	if err != nil {
		return d, false
	}
	for i, m := range msgs {
		if m.Timestamp < s.From || m.Timestamp >= s.Until || i > 0 && m.Timestamp <= msgs[i-1].Timestamp {
			return d, false
		}
	}
	d.Messages = msgs
	return d, true
}
