package raftgroup

import (
	"fmt"
	"testing"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/stretchr/testify/require"
)

// step returns a Durable of shard 0 over [from, until) with one message per timestamp.
func step(from, until uint64) shard.Durable {
	d := shard.Durable{From: from, Until: until, Owned: true}
	for ts := from; ts < until; ts++ {
		d.Messages = append(d.Messages, &message.Message{Topic: "a/b", Payload: []byte(fmt.Sprint(ts)), Timestamp: ts})
	}
	if until > from {
		d.Streams = []shard.StreamTouch{{Generation: 1, Key: 7, Last: until - 1}}
	}
	return d
}

// tailRead asks l for shard 0's steps from (epoch, seq).
func tailRead(l *tailLog, epoch, seq uint64, maxBytes int) (wire.TailReply, bool) {
	var reply wire.TailReply
	ok := l.read(&wire.Tail{Epoch: epoch, Seq: seq, MaxBytes: maxBytes}, 99, &reply)
	return reply, ok
}

func TestTailLog(t *testing.T) {
	l := newTailLog()
	// Nothing seen yet: a Reset at the replica's read limit.
	r, ok := tailRead(l, 0, 0, 1<<20)
	require.True(t, ok)
	require.True(t, r.Reset)
	require.Equal(t, uint64(99), r.Limit)
	e, next := r.Epoch, r.Next

	l.add(step(1, 3))
	records := shard.Durable{From: 4, Until: 4, Records: []shard.RecordWrite{{Key: []byte("k"), Value: []byte("v"), Version: 5}}}
	l.add(step(3, 4))
	l.add(records)
	r, ok = tailRead(l, e, next, 1<<20)
	require.True(t, ok)
	require.False(t, r.Reset)
	require.Len(t, r.Steps, 3)
	require.Equal(t, next+3, r.Next)
	for i, want := range []shard.Durable{step(1, 3), step(3, 4), records} {
		d, ok := decodeTailStep(0, &r.Steps[i])
		require.True(t, ok, "step %d", i)
		require.Equal(t, want.From, d.From)
		require.Equal(t, want.Until, d.Until)
		require.Equal(t, want.Streams, d.Streams)
		require.Equal(t, want.Records, d.Records)
		require.Len(t, d.Messages, len(want.Messages))
		for k, m := range d.Messages {
			require.Equal(t, want.Messages[k].Timestamp, m.Timestamp)
			require.Equal(t, want.Messages[k].Payload, m.Payload)
			require.Equal(t, "a/b", m.Topic)
		}
	}
	// Up to date: nothing to send. From the middle: the rest. A small byte budget: one step
	// per reply.
	_, ok = tailRead(l, e, r.Next, 1<<20)
	require.False(t, ok)
	r2, ok := tailRead(l, e, next+1, 1<<20)
	require.True(t, ok)
	require.Len(t, r2.Steps, 2)
	r2, _ = tailRead(l, e, next, 1)
	require.Len(t, r2.Steps, 1)
	require.Equal(t, next+1, r2.Next)

	// Another epoch (another holder, or a restart), or a seq from the future: a Reset at the
	// end of the last step.
	for _, pos := range [][2]uint64{{e + 2, next}, {e, r.Next + 1}} {
		r2, ok := tailRead(l, pos[0], pos[1], 1<<20)
		require.True(t, ok)
		require.True(t, r2.Reset, "%v", pos)
		require.Equal(t, uint64(4), r2.Limit)
		require.Equal(t, r.Next, r2.Next)
	}

	// A step that does not follow the last one clears the ring: callers anywhere in it, at
	// its end included, get a Reset, then the steps from where the Reset puts them.
	l.add(step(10, 12))
	for _, seq := range []uint64{next, r.Next} {
		r2, ok := tailRead(l, e, seq, 1<<20)
		require.True(t, ok)
		require.True(t, r2.Reset, "seq %d", seq)
		require.Equal(t, uint64(12), r2.Limit)
	}
	// The replica reopened: the same.
	r2, _ = tailRead(l, e, 0, 1<<20)
	l.reset(0)
	r3, ok := tailRead(l, e, r2.Next, 1<<20)
	require.True(t, ok)
	require.True(t, r3.Reset)
	require.Equal(t, uint64(99), r3.Limit, "no step since the reopening: the replica's read limit")
	// A Reset step: the same, at its limit.
	l.add(step(20, 21))
	r4, _ := tailRead(l, e, 0, 1<<20)
	l.add(shard.Durable{From: 30, Until: 30, Reset: true})
	r5, _ := tailRead(l, e, r4.Next, 1<<20)
	require.True(t, r5.Reset)
	require.Equal(t, uint64(30), r5.Limit)

	// Old steps are evicted past the bounds: a caller that fell behind them gets a Reset.
	l.add(step(30, 31))
	r6, _ := tailRead(l, e, 0, 1<<20)
	start := r6.Next - 1
	for ts := uint64(31); ts < 31+tailRingSteps; ts++ {
		l.add(step(ts, ts+1))
	}
	r7, _ := tailRead(l, e, start, 1<<20)
	require.True(t, r7.Reset)
	r8, _ := tailRead(l, e, start+1, 1<<20)
	require.False(t, r8.Reset, "the oldest step kept")
	require.Equal(t, uint64(31), r8.Steps[0].From)

	// A step too large for a reply: a Reset past it.
	big := step(31+tailRingSteps, 32+tailRingSteps)
	big.Messages[0].Payload = make([]byte, maxReadReplyBytes+1)
	r9, _ := tailRead(l, e, 0, 1<<20)
	l.add(big)
	r10, _ := tailRead(l, e, r9.Next, 1<<20)
	require.True(t, r10.Reset)
	require.Equal(t, big.Until, r10.Limit)
	require.Equal(t, r9.Next+1, r10.Next)
}

// TestDecodeTailStepRejects: a step whose timestamps do not fit its messages or its bounds is
// refused (the watch then reports a Reset).
func TestDecodeTailStepRejects(t *testing.T) {
	good := encodeTailStep(step(5, 8))
	_, ok := decodeTailStep(0, good)
	require.True(t, ok)
	for name, mutate := range map[string]func(s *wire.TailStep){
		"fewer timestamps":   func(s *wire.TailStep) { s.TS = s.TS[:2] },
		"below From":         func(s *wire.TailStep) { s.TS[0] = 4 },
		"at Until":           func(s *wire.TailStep) { s.TS[2] = 8 },
		"out of order":       func(s *wire.TailStep) { s.TS[0], s.TS[1] = s.TS[1], s.TS[0] },
		"damaged messages":   func(s *wire.TailStep) { s.Msgs = s.Msgs[:len(s.Msgs)-3] },
		"timestamps, no msg": func(s *wire.TailStep) { s.Msgs = nil },
		"Until before From":  func(s *wire.TailStep) { s.Msgs, s.TS, s.From, s.Until = nil, nil, 9, 8 },
	} {
		s := *good
		s.TS = append([]uint64(nil), good.TS...)
		mutate(&s)
		_, ok := decodeTailStep(0, &s)
		require.False(t, ok, name)
	}
}

func FuzzDecodeTailStep(f *testing.F) {
	good := encodeTailStep(step(5, 8))
	f.Add(good.Msgs, uint64(5), uint64(8), uint64(5), uint64(6), uint64(7))
	f.Fuzz(func(t *testing.T, msgs []byte, from, until, a, b, c uint64) {
		s := &wire.TailStep{From: from, Until: until, Msgs: msgs, TS: []uint64{a, b, c}}
		if d, ok := decodeTailStep(3, s); ok {
			for _, m := range d.Messages {
				require.True(t, m.Timestamp >= from && m.Timestamp < until)
				require.Equal(t, uint16(3), m.Shard)
			}
		}
	})
}
