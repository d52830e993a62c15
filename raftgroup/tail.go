package raftgroup

import (
	"crypto/rand"
	"encoding/binary"
	"sync"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// The tail feed of a site without a replica of a shard (PlacementVoters).
//
// A site that holds a replica keeps its last durable steps of the shard (the Durables its
// replica reported: messages, streams touched, record writes) in a bounded ring per shard. A
// site that holds none long-polls one holder's ring (the service's Tail call, forward.go's
// watch) and reports each step to its own DB as the holder's replica reported it, so that its
// tail subscriptions, watchers and record watchers (a session store's) are fed from memory as
// on a holder, instead of every step making each of them read the storage again through
// forwarded calls (a Reset).
//
// Positions: a ring numbers its steps (seq, from 0, never reused) under an epoch drawn when
// the site opened. A caller asks for the steps from (epoch, seq) on; an epoch of another ring
// (another holder, or this one after a restart), or a seq the ring no longer has (evicted,
// or cleared because the replica was reopened or recovered from a snapshot), gets a Reset: the
// holder's read limit and the seq to go on from. A Reset costs the caller's readers one look
// at the storage, as every step did before the feed existed.
//
// # Invariants
//
//  1. The steps of a ring follow each other as the replica applied them: step i+1's From is
//     step i's Until (a replica reopened or recovered clears the ring first).
//  2. A caller that got the steps up to seq n-1 of one ring and asks for n gets step n
//     next, or a Reset: it never misses a step silently.

// tailRingBytes and tailRingSteps bound what a ring keeps per shard: message bytes, steps.
const (
	tailRingBytes = 4 << 20
	tailRingSteps = 4096
)

// tailLog holds the rings of the shards this site holds replicas of.
type tailLog struct {
	epoch uint64
	mu    sync.Mutex
	rings map[stream.ShardID]*tailRing
}

type tailRing struct {
	next  uint64     // seq of the next step
	steps []tailStep // seqs next-len(steps) .. next-1
	bytes int
	until uint64 // Until of the last step added (or of the Reset that cleared the ring); 0: none yet
}

type tailStep struct {
	d     shard.Durable
	bytes int
	enc   *wire.TailStep // encoded on first demand, shared by every caller
}

func newTailLog() *tailLog {
	var b [8]byte
	rand.Read(b[:])
	return &tailLog{epoch: binary.BigEndian.Uint64(b[:]) | 1, rings: map[stream.ShardID]*tailRing{}}
}

func (l *tailLog) ring(id stream.ShardID) *tailRing {
	r, ok := l.rings[id]
	if !ok {
		r = &tailRing{}
		l.rings[id] = r
	}
	return r
}

// add records a step of the shard's replica here. A Reset, or a step that does not follow the
// last one (invariant 1), clears the ring: callers positioned in it get a Reset.
func (l *tailLog) add(d shard.Durable) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.ring(d.Shard)
	if d.Reset || (r.until != 0 && d.From != r.until) {
		r.clear()
		if d.Reset {
			r.until = d.Until
			return
		}
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
	r.until = d.Until
	drop := 0
	for len(r.steps)-drop > 1 && (r.bytes > tailRingBytes || len(r.steps)-drop > tailRingSteps) {
		r.bytes -= r.steps[drop].bytes
		r.steps[drop] = tailStep{}
		drop++
	}
	if drop > 0 {
		r.steps = append(r.steps[:0], r.steps[drop:]...)
	}
}

// reset clears the shard's ring: its replica here was (re)opened, and what it reports next
// does not follow what the ring holds.
func (l *tailLog) reset(id stream.ShardID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.ring(id)
	r.clear()
	r.until = 0
}

// clear forgets the steps, and skips a seq: a caller positioned at the end of the ring gets
// a Reset too, as what comes next does not follow what it saw.
func (r *tailRing) clear() {
	r.steps, r.bytes = nil, 0
	r.next++
}

// read fills reply with the steps of the shard from a.Seq on (at most a.MaxBytes of messages
// and records, at least one step), or with a Reset carrying limit (the replica's read limit,
// used when the ring has not seen a step yet). It reports false when the caller is up to date
// (nothing to send yet).
func (l *tailLog) read(a *wire.Tail, limit uint64, reply *wire.TailReply) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.ring(a.Shard)
	reply.Epoch = l.epoch
	first := r.next - uint64(len(r.steps))
	if a.Epoch != l.epoch || a.Seq < first || a.Seq > r.next {
		reply.Reset, reply.Next, reply.Limit = true, r.next, limit
		if r.until != 0 {
			// The steps from r.next on follow r.until (invariant 1); the replica's read limit
			// may already include a step not added yet.
			reply.Limit = r.until
		}
		return true
	}
	if a.Seq == r.next {
		return false
	}
	size := 0
	i := int(a.Seq - first)
	if st := r.steps[i]; st.bytes > maxReadReplyBytes {
		// Too large for one reply: the caller's readers read it from the storage.
		reply.Reset, reply.Next, reply.Limit = true, a.Seq+1, st.d.Until
		return true
	}
	for ; i < len(r.steps) && (size == 0 || size+r.steps[i].bytes <= a.MaxBytes); i++ {
		st := &r.steps[i]
		if st.enc == nil {
			st.enc = encodeTailStep(st.d)
		}
		reply.Steps = append(reply.Steps, *st.enc)
		size += st.bytes
	}
	reply.Next = first + uint64(i)
	return true
}

func encodeTailStep(d shard.Durable) *wire.TailStep {
	s := &wire.TailStep{From: d.From, Until: d.Until, Streams: d.Streams, Records: d.Records}
	if len(d.Messages) > 0 {
		s.TS = make([]uint64, len(d.Messages))
		for i, m := range d.Messages {
			s.TS[i] = m.Timestamp
		}
		s.Msgs = (&shard.Command{Messages: d.Messages}).AppendBinary(nil)
	}
	return s
}

// decodeTailStep returns the Durable a step of shard id stands for, its messages owned by the
// caller.
func decodeTailStep(id stream.ShardID, s *wire.TailStep) (shard.Durable, bool) {
	d := shard.Durable{Shard: id, From: s.From, Until: s.Until, Streams: s.Streams, Records: s.Records, Owned: true}
	if len(s.Msgs) == 0 {
		return d, len(s.TS) == 0 && s.From <= s.Until
	}
	cmd, err := shard.DecodeCommand(s.Msgs)
	if err != nil || len(cmd.Messages) != len(s.TS) || len(cmd.Txns) != 0 {
		return d, false
	}
	for i, m := range cmd.Messages {
		if s.TS[i] < s.From || s.TS[i] >= s.Until || i > 0 && s.TS[i] <= s.TS[i-1] {
			return d, false
		}
		m.Timestamp, m.Shard = s.TS[i], uint16(id)
	}
	d.Messages = cmd.Messages
	return d, true
}
