package raftgroup

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

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
	ok := l.read(&wire.Tail{Epoch: epoch, Seq: seq, MaxBytes: maxBytes}, stepPos{ts: 99}, &reply)
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

	// Old steps are evicted past the bounds: a caller that fell behind them gets a Reset, one
	// at the oldest step kept gets it.
	l.add(step(30, 31))
	for ts := uint64(31); ts < 31+tailRingSteps; ts++ {
		l.add(step(ts, ts+1))
	}
	ring := l.ring(0)
	kept := uint64(len(ring.steps))
	require.Less(t, kept, uint64(tailRingSteps), "nothing evicted")
	first := ring.next - kept
	r7, _ := tailRead(l, e, first-1, 1<<20)
	require.True(t, r7.Reset)
	r8, _ := tailRead(l, e, first, 1<<20)
	require.False(t, r8.Reset, "the oldest step kept")
	require.Equal(t, 31+tailRingSteps-kept, r8.Steps[0].From)

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

// TestReportOrder: report passes a holder's steps to the DB once each and in order, whatever
// order and grouping they come in (another holder's steps, a holder that lags, records-only
// steps that leave the read limit alone), and turns what does not follow into a Reset.
func TestReportOrder(t *testing.T) {
	s := &Site{tails: newTailLog()}
	var got []shard.Durable
	f := func(d shard.Durable) { got = append(got, d) }
	s.onDurable.Store(&f)
	at := func(from, fromV, until, untilV uint64) shard.Durable {
		return shard.Durable{From: from, Until: until, FromVersion: fromV, UntilVersion: untilV}
	}
	reset := func(ts, v uint64) shard.Durable {
		return shard.Durable{From: ts, Until: ts, FromVersion: v, UntilVersion: v, Reset: true}
	}
	report := func(d shard.Durable) bool { _, ok := s.report(d, false); return ok }

	// The first answer (a Reset) is passed on; the steps that follow it too.
	require.True(t, report(reset(10, 3)))
	require.True(t, report(at(10, 3, 12, 3)))
	require.True(t, report(at(12, 3, 12, 4))) // records only
	require.True(t, report(at(12, 4, 12, 5))) // records only
	// Another holder that lags: its Reset and its steps up to where the DB stands are
	// dropped, grouped differently or not.
	require.False(t, report(reset(12, 4)))
	require.False(t, report(at(12, 4, 12, 5)))
	require.False(t, report(at(10, 3, 12, 5)))
	// Its next step follows: passed on.
	require.True(t, report(at(12, 5, 14, 5)))
	// A step that straddles where the DB stands (a records-only write inside a larger step
	// of another holder): a Reset, never the step's writes again.
	require.True(t, report(at(13, 5, 15, 6)))
	require.True(t, got[len(got)-1].Reset)
	require.Equal(t, uint64(15), got[len(got)-1].Until)
	// A gap (a step evicted): a Reset; a holder ahead (a Reset past the DB): a Reset.
	require.True(t, report(at(16, 6, 17, 6)))
	require.True(t, got[len(got)-1].Reset)
	require.True(t, report(reset(17, 9)))
	require.True(t, got[len(got)-1].Reset)
	require.True(t, report(at(17, 9, 18, 9)))
	require.False(t, got[len(got)-1].Reset)

	// The records-only steps were passed on once each, in order; no step without a Reset
	// before it started elsewhere than where the last one ended.
	for i := 1; i < len(got); i++ {
		if !got[i].Reset {
			require.Equal(t, endOf(got[i-1]), startOf(got[i]), "step %d", i)
		}
	}
	n := 0
	for _, d := range got {
		if !d.Reset && d.From == 12 && d.Until == 12 {
			n++
		}
	}
	require.Equal(t, 2, n)
}

// TestDeadlineConn: a write to a peer that reads slowly but steadily goes through, however
// long the whole takes, as each chunk has its own deadline; a write to a peer that stopped
// reading fails after one deadline and closes the connection (net/rpc's server would
// otherwise go on reading requests it can no longer answer).
func TestDeadlineConn(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := deadlineConn{Conn: a, d: time.Second}
	go func() {
		buf := make([]byte, deadlineChunk)
		for {
			time.Sleep(100 * time.Millisecond) // a slow reader: 16 chunks take 1.6 s
			if _, err := io.ReadFull(b, buf); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	n, err := c.Write(make([]byte, 16*deadlineChunk))
	require.NoError(t, err)
	require.Equal(t, 16*deadlineChunk, n)
	require.Greater(t, time.Since(start), time.Second, "the whole write outlasted one deadline")

	x, y := net.Pipe()
	defer y.Close()
	stuck := deadlineConn{Conn: x, d: 50 * time.Millisecond}
	_, err = stuck.Write(make([]byte, 10))
	require.Error(t, err, "nobody reads")
	_, err = x.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.ErrClosedPipe, "the connection was left open")
}
