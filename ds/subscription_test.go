package ds_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// collect calls Next until it has n messages (checking per-shard timestamp order and that no
// message comes twice), acknowledging each batch when ack is set.
func collect(t testing.TB, s *ds.Subscription, n int, ack bool) []ds.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out []ds.Message
	last := map[uint16]uint64{}
	for len(out) < n {
		batch, err := s.Next(ctx, n-len(out))
		require.NoError(t, err, "after %d of %d messages", len(out), n)
		require.NotEmpty(t, batch)
		for _, m := range batch {
			require.Greater(t, m.Timestamp, last[m.Shard], "shard %d out of order", m.Shard)
			last[m.Shard] = m.Timestamp
		}
		if ack {
			refs := make([]ds.Ref, len(batch))
			for i, m := range batch {
				refs[i] = ds.RefOf(m)
			}
			require.NoError(t, s.Ack(refs...))
		}
		out = append(out, batch...)
	}
	return out
}

// requireNothing checks that Next has nothing right now (it waits briefly, for a message
// that should not come).
func requireNothing(t testing.TB, s *ds.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	msgs, err := s.Next(ctx, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded, "got %d messages", len(msgs))
}

func TestSubscriptionTailDeliversMatchingInOrder(t *testing.T) {
	d := openTestDB(t, fastOptions())
	_, err := d.TailPosition()
	require.NoError(t, err)
	// Stored before the subscription's position: never delivered.
	d.store(msg("c0", "room/1/temp", 0))
	pos, err := d.TailPosition()
	require.NoError(t, err)
	s, err := d.Subscribe("room/+/temp", pos, nil)
	require.NoError(t, err)
	defer s.Close()
	requireNothing(t, s)

	// A Next parked at the tail is woken by a Store.
	got := make(chan []ds.Message, 1)
	go func() {
		msgs, err := s.Next(context.Background(), 100)
		if err != nil {
			t.Error(err)
		}
		got <- msgs
	}()
	refs := d.store(msg("c1", "room/2/temp", 1))
	first := <-got
	require.Len(t, first, 1)
	require.Equal(t, refs[0], ds.RefOf(first[0]))
	require.NoError(t, s.Ack(refs[0]))

	var want []ds.Ref
	for i := 0; i < 300; i++ {
		client := fmt.Sprintf("c%d", i%7)
		r := d.store(msg(client, fmt.Sprintf("room/%d/temp", i%13), i), msg(client, fmt.Sprintf("room/%d/hum", i%13), i))
		want = append(want, r[0])
	}
	msgs := collect(t, s, len(want), true)
	require.ElementsMatch(t, want, refsOf(msgs))
	requireNothing(t, s)
	require.ErrorIs(t, s.Ack(refs[0]), ds.ErrNotDelivered)

	m, err := d.Metrics()
	require.NoError(t, err)
	require.EqualValues(t, 1, m.Subscriptions.Subscriptions)
	require.EqualValues(t, 1, m.Subscriptions.Tail)
	require.EqualValues(t, 301, m.Subscriptions.Delivered)
}

// TestSubscriptionCatchUpMergesStreamsAndGenerations reads history that spans several streams
// and generations of each shard: every matching message, in publisher order.
func TestSubscriptionCatchUpMergesStreamsAndGenerations(t *testing.T) {
	d := openTestDB(t, fastOptions(func(o *ds.Options) { o.WildcardThresholds = []int{3, 2} }))
	var want []ds.Ref
	perClient := map[string][]ds.Ref{}
	for i := 0; i < 2000; i++ {
		client := fmt.Sprintf("pub-%d", i%5)
		top := fmt.Sprintf("site/%d/dev/%d/%s", i%4, i%9, []string{"temp", "hum", "co2"}[i%3])
		r := d.store(msg(client, top, i))
		if i%3 != 2 {
			want = append(want, r[0])
			perClient[client] = append(perClient[client], r[0])
		}
		if i%500 == 499 {
			require.NoError(t, d.AddGeneration(context.Background()))
		}
	}
	s, err := d.Subscribe("site/+/dev/+/temp", d.StartPosition(time.Time{}), &ds.SubscribeOptions{ReadBuffer: 7})
	require.NoError(t, err)
	defer s.Close()
	s2, err := d.Subscribe("site/#", d.StartPosition(time.Time{}), &ds.SubscribeOptions{ReadBuffer: 7})
	require.NoError(t, err)
	defer s2.Close()
	hum, err := d.Subscribe("site/+/dev/+/hum", d.StartPosition(time.Time{}), nil)
	require.NoError(t, err)
	defer hum.Close()

	temps := collect(t, s, 667, true)
	all := collect(t, s2, 2000, true)
	hums := collect(t, hum, 667, true)
	got := append(refsOf(temps), refsOf(hums)...)
	require.ElementsMatch(t, want, got)
	// Publisher order: each client's messages in the order stored.
	seen := map[string][]ds.Ref{}
	for _, m := range all {
		if m.Topic[len(m.Topic)-3:] != "co2" {
			seen[m.ClientID] = append(seen[m.ClientID], ds.RefOf(m))
		}
	}
	require.Equal(t, perClient, seen)
	requireNothing(t, s)
	requireNothing(t, s2)
	requireNothing(t, hum)

	m, err := d.Metrics()
	require.NoError(t, err)
	require.Positive(t, m.Subscriptions.Reads)
	require.EqualValues(t, 3, m.Subscriptions.Tail, "caught up: every subscription joined the tails")
}

// TestSubscriptionFlowControl: a subscription parks at MaxUnacked until an Ack, and a slow
// one never delays a fast one: the fast one gets every message while the slow one is parked
// and its buffer overflows, and the slow one still gets everything, in order, once it acks.
func TestSubscriptionFlowControl(t *testing.T) {
	d := openTestDB(t, fastOptions())
	pos, err := d.TailPosition()
	require.NoError(t, err)
	slow, err := d.Subscribe("a/#", pos, &ds.SubscribeOptions{MaxUnacked: 5, Buffer: 20})
	require.NoError(t, err)
	defer slow.Close()
	fast, err := d.Subscribe("a/#", pos, nil)
	require.NoError(t, err)
	defer fast.Close()
	requireNothing(t, slow) // both wait at the tail
	requireNothing(t, fast)

	var want []ds.Ref
	for i := 0; i < 10; i++ {
		want = append(want, d.store(msg("p", "a/b", i))[0])
	}
	first := collect(t, slow, 5, false)
	require.Equal(t, want[:5], refsOf(first))
	requireNothing(t, slow) // parked: 5 unacknowledged

	for i := 10; i < 1000; i++ {
		want = append(want, d.store(msg("p", "a/b", i))[0])
	}
	require.Equal(t, want, refsOf(collect(t, fast, 1000, true)))
	m, err := d.Metrics()
	require.NoError(t, err)
	require.Positive(t, m.Subscriptions.Demoted, "the slow subscription's buffer overflowed")

	// Acknowledge out of order: the window opens by one per Ack, the position waits for the
	// oldest.
	require.NoError(t, slow.Ack(want[3]))
	p := slow.Position()
	require.Equal(t, want[0].Timestamp, p.Shard(want[0].Shard))
	require.NoError(t, slow.Ack(want[0], want[1], want[2], want[4]))
	rest := collect(t, slow, 995, true)
	require.Equal(t, want[5:], refsOf(rest))
}

// TestSubscriptionResumeFromPosition: after a reopen, a subscription resumed from Position
// gets every message it had not acknowledged, and nothing it had acknowledged before the
// first unacknowledged one.
func TestSubscriptionResumeFromPosition(t *testing.T) {
	d := openTestDB(t, fastOptions())
	s, err := d.Subscribe("#", d.StartPosition(time.Time{}), nil)
	require.NoError(t, err)
	var want []ds.Ref
	for i := 0; i < 100; i++ {
		want = append(want, d.store(msg(fmt.Sprintf("c%d", i%3), fmt.Sprintf("t/%d", i%4), i))[0])
	}
	got := collect(t, s, 60, false)
	acked := got[:40]
	require.NoError(t, s.Ack(refsOf(acked)...))
	saved, err := s.Position().MarshalBinary()
	require.NoError(t, err)
	s.Close()

	d = d.reopen(nil)
	pos, err := ds.UnmarshalPosition(saved)
	require.NoError(t, err)
	s, err = d.Subscribe("#", pos, nil)
	require.NoError(t, err)
	defer s.Close()
	for i := 100; i < 120; i++ {
		want = append(want, d.store(msg(fmt.Sprintf("c%d", i%3), fmt.Sprintf("t/%d", i%4), i))[0])
	}
	ackedSet := map[ds.Ref]bool{}
	for _, m := range acked {
		ackedSet[ds.RefOf(m)] = true
	}
	var expect []ds.Ref
	for _, r := range want {
		// Per shard, everything from the first unacknowledged message on comes again.
		if !ackedSet[r] || r.Timestamp >= pos.Shard(r.Shard) {
			expect = append(expect, r)
		}
	}
	again := collect(t, s, len(expect), true)
	require.ElementsMatch(t, expect, refsOf(again))
	requireNothing(t, s)
}

// TestSubscriptionLossByRetention: a subscription whose unread generation is dropped is told,
// with the range, and then goes on with the next generation.
func TestSubscriptionLossByRetention(t *testing.T) {
	d := openTestDB(t, fastOptions(func(o *ds.Options) { o.NShards = 1 }))
	start := d.StartPosition(time.Time{})
	for i := 0; i < 10; i++ {
		d.store(msg("c", "x/y", i))
	}
	require.NoError(t, d.AddGeneration(context.Background()))
	var later []ds.Ref
	for i := 10; i < 15; i++ {
		later = append(later, d.store(msg("c", "x/y", i))[0])
	}
	s, err := d.Subscribe("x/#", start, &ds.SubscribeOptions{ReadBuffer: 2})
	require.NoError(t, err)
	defer s.Close()
	first := collect(t, s, 2, true)
	require.Len(t, first, 2)
	require.NoError(t, d.DropGeneration(context.Background(), 0, 1))

	var loss *ds.LossError
	var rest []ds.Message
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for len(rest) < len(later) {
		msgs, err := s.Next(ctx, 100)
		if errors.As(err, &loss) {
			require.ErrorIs(t, err, ds.ErrMessagesLost)
			continue
		}
		require.NoError(t, err)
		for _, m := range msgs {
			if m.Timestamp >= later[0].Timestamp {
				rest = append(rest, m)
			}
		}
		require.NoError(t, s.Ack(refsOf(msgs)...))
	}
	require.NotNil(t, loss, "the drop was reported")
	require.Equal(t, ds.GenerationID(1), loss.Generation)
	require.EqualValues(t, 10, loss.Messages)
	require.LessOrEqual(t, loss.Until, later[0].Timestamp)
	require.Equal(t, later, refsOf(rest))
	m, err := d.Metrics()
	require.NoError(t, err)
	require.EqualValues(t, 1, m.Subscriptions.Losses)
}

func TestSubscriptionBadInput(t *testing.T) {
	d := openTestDB(t, fastOptions())
	_, err := d.Subscribe("a/#/b", d.StartPosition(time.Time{}), nil)
	require.ErrorIs(t, err, ds.ErrInvalidFilter)
	_, err = d.Subscribe("a", ds.NewPosition(1, 2), nil)
	require.ErrorIs(t, err, ds.ErrInvalidPosition)
	_, err = d.Subscribe("a", d.StartPosition(time.Time{}), &ds.SubscribeOptions{MaxUnacked: -1})
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
	s, err := d.Subscribe("a", d.StartPosition(time.Time{}), nil)
	require.NoError(t, err)
	_, err = s.Next(context.Background(), 0)
	require.ErrorIs(t, err, ds.ErrInvalidOptions)
	require.ErrorIs(t, s.Ack(ds.Ref{Shard: 1, Timestamp: 5}), ds.ErrNotDelivered)
	require.ErrorIs(t, s.Ack(ds.Ref{Shard: 99, Timestamp: 5}), ds.ErrNotDelivered)

	// Closing the DB ends a waiting Next.
	done := make(chan error, 1)
	go func() {
		_, err := s.Next(context.Background(), 1)
		done <- err
	}()
	require.NoError(t, d.Close())
	require.ErrorIs(t, <-done, ds.ErrSubscriptionClosed)
	_, err = d.Subscribe("a", ds.NewPosition(1, 2, 3, 4), nil)
	require.ErrorIs(t, err, ds.ErrClosed)
}

func TestPositionEncoding(t *testing.T) {
	p := ds.NewPosition(0, 1, 1<<40, 1<<63)
	b, err := p.MarshalBinary()
	require.NoError(t, err)
	q, err := ds.UnmarshalPosition(b)
	require.NoError(t, err)
	require.Equal(t, p.String(), q.String())
	for i := range b {
		bad := slices.Clone(b)
		bad[i] ^= 0x10
		_, err := ds.UnmarshalPosition(bad)
		require.ErrorIs(t, err, ds.ErrInvalidPosition, "byte %d flipped", i)
	}
	for i := range b {
		_, err := ds.UnmarshalPosition(b[:i])
		require.ErrorIs(t, err, ds.ErrInvalidPosition, "truncated to %d", i)
	}
	_, err = ds.Position{}.MarshalBinary()
	require.ErrorIs(t, err, ds.ErrInvalidPosition)
}

func FuzzUnmarshalPosition(f *testing.F) {
	b, _ := ds.NewPosition(1, 2, 3).MarshalBinary()
	f.Add(b)
	f.Add([]byte{'P', 1, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ds.UnmarshalPosition(b)
		if err != nil {
			require.ErrorIs(t, err, ds.ErrInvalidPosition)
			return
		}
		again, err := p.MarshalBinary()
		require.NoError(t, err)
		require.Equal(t, b, again, "canonical")
	})
}

// TestSubscriptionPositionAfterClose: messages the tail handed to a subscription that were
// never taken by Next are not skipped by the Position read after Close, and a tail
// subscription whose filter matched nothing for a while still moves its Position.
func TestSubscriptionPositionAfterClose(t *testing.T) {
	d := openTestDB(t, fastOptions(func(o *ds.Options) { o.NShards = 1 }))
	pos, err := d.TailPosition()
	require.NoError(t, err)
	s, err := d.Subscribe("x/#", pos, nil)
	require.NoError(t, err)
	requireNothing(t, s) // at the tail
	var other []ds.Ref
	for i := 0; i < 5; i++ {
		other = append(other, d.store(msg("c", "y/z", i))[0])
	}
	eventually(t, func() bool { return s.Position().Shard(0) > other[4].Timestamp },
		"the position moves past messages that do not match")
	want := d.store(msg("c", "x/1", 0), msg("c", "x/2", 1))
	eventually(t, func() bool {
		m, err := d.Metrics()
		return err == nil && m.Subscriptions.Fed >= 2
	}, "the tail hands the subscription its messages")
	require.NoError(t, s.Close())
	p := s.Position()
	require.Equal(t, want[0].Timestamp, p.Shard(0), "the undelivered messages are not skipped")
	s, err = d.Subscribe("x/#", p, nil)
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, want, refsOf(collect(t, s, 2, true)))
}

// TestSubscriptionJoinsBusyTail: a shard whose commits never stop (none matching) does not
// keep a subscription reading its many streams again and again before it may join the tail
// (it joins at once and reads the gap): messages of another shard, and then a matching one
// of the busy shard, are delivered while the writers go on.
func TestSubscriptionJoinsBusyTail(t *testing.T) {
	d := openTestDB(t, fastOptions(func(o *ds.Options) { o.NShards = 2; o.WildcardThresholds = []int{5000, 5000} }))
	clientFor := func(shard ds.ShardID) string {
		for i := 0; ; i++ {
			if c := fmt.Sprintf("c%d", i); ds.ShardOf(c, 2) == shard {
				return c
			}
		}
	}
	c0, c1 := clientFor(0), clientFor(1)
	for i := 0; i < 2000; i++ { // 2,000 streams the filter matches on shard 0
		d.store(msg(c0, fmt.Sprintf("idle/%d", i), i))
	}
	from, err := d.TailPosition()
	require.NoError(t, err)
	s, err := d.Subscribe("idle/+", from, nil)
	require.NoError(t, err)
	defer s.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := d.Store(context.Background(), msg(c0, "busy/x", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	want := d.store(msg(c1, "idle/0", 0))
	require.Equal(t, want, refsOf(collect(t, s, 1, true)))
	want = d.store(msg(c0, "idle/7", 1))
	require.Equal(t, want, refsOf(collect(t, s, 1, true)))
}

// TestSubscriptionConcurrentNextHonoursCtx: a Next waiting for another Next of the same
// subscription (they take turns) still ends with its ctx.
func TestSubscriptionConcurrentNextHonoursCtx(t *testing.T) {
	d := openTestDB(t, fastOptions())
	pos, err := d.TailPosition()
	require.NoError(t, err)
	s, err := d.Subscribe("a/#", pos, nil)
	require.NoError(t, err)
	first := make(chan error, 1)
	go func() { _, err := s.Next(context.Background(), 1); first <- err }()
	requireNothing(t, s) // the first Next may or may not hold the turn yet: either way this one ends
	require.NoError(t, s.Close())
	require.ErrorIs(t, <-first, ds.ErrSubscriptionClosed)
}

// TestSubscriptionGapReadReleasesFedMessages: a shard that joins the tail with a gap (commits
// came between its last listing and its join) holds the messages fed meanwhile until it has
// read the gap. When the gap's last read finds nothing more (the gap ends with commits
// nothing matched: a message of another topic, a rotation), it must hand over the fed
// messages at once: the read delivers nothing, and no commit or Ack comes to wake Next.
func TestSubscriptionGapReadReleasesFedMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		fill func(d *testDB) // after the gap's matching message: a commit nothing matches
	}{
		{"other topic", func(d *testDB) { d.store(msg("p", "x", 0)) }},
		{"rotation", func(d *testDB) { require.NoError(t, d.AddGeneration(context.Background())) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := openTestDB(t, fastOptions())
			pos, err := d.TailPosition()
			require.NoError(t, err)
			// MaxUnacked 1: each Next reads one message, so the gap's read stops after its
			// matching message and the rest of the gap is read by the next call.
			s, err := d.Subscribe("a/#", pos, &ds.SubscribeOptions{MaxUnacked: 1})
			require.NoError(t, err)
			defer s.Close()
			want := d.store(msg("p", "a/b", 1), msg("p", "a/b", 2))
			got := collect(t, s, 1, true) // behind the tail: lists the shard's streams
			got = append(got, collect(t, s, 1, false)...)
			require.Equal(t, want, refsOf(got))

			// Commits the shard's reading has not listed: it joins the tail with them as its
			// gap on the next Next, and reads the gap's first message.
			want = append(want, d.store(msg("p", "a/c", 3))[0])
			tc.fill(d)
			require.NoError(t, s.Ack(want[1]))
			got = append(got, collect(t, s, 1, false)...)
			require.Equal(t, want, refsOf(got))

			// A message fed while the gap's rest is unread waits behind it, and a Next parked
			// by MaxUnacked takes the wake-up its arrival sent.
			m, err := d.Metrics()
			require.NoError(t, err)
			fed := m.Subscriptions.Fed
			want = append(want, d.store(msg("p", "a/b", 4))[0])
			eventually(t, func() bool {
				m, err := d.Metrics()
				return err == nil && m.Subscriptions.Fed > fed
			}, "the feed hands the message over")
			requireNothing(t, s)

			// The Ack wakes a parked Next, which reads the gap's rest (nothing) and must then
			// deliver the fed message: nothing else comes to wake it.
			type result struct {
				msgs []ds.Message
				err  error
			}
			done := make(chan result, 1)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			go func() {
				msgs, err := s.Next(ctx, 1)
				done <- result{msgs, err}
			}()
			eventually(t, func() bool {
				m, err := d.Metrics()
				return err == nil && m.Subscriptions.Parked == 1
			}, "Next parks")
			require.NoError(t, s.Ack(want[2]))
			r := <-done
			require.NoError(t, r.err, "the fed message is not handed over")
			got = append(got, r.msgs...)
			require.Equal(t, want, refsOf(got))
		})
	}
}
