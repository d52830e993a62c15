package session

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/strata-mq/strata/ds"
)

// open starts delivering sb from pos. Its ds subscription signals s.notify, which Next
// waits on for all of the session's subscriptions: no goroutine per subscription.
func (s *Session) open(sb *sub, pos ds.Position) error {
	dsub, err := s.st.db.Subscribe(sb.Filter, pos, &ds.SubscribeOptions{MaxUnacked: s.receive,
		ReadBuffer: s.st.opts.ReadBuffer, Notify: s.notify})
	if err != nil {
		return err
	}
	sb.ds, sb.sent = dsub, map[ds.ShardID]uint64{}
	s.subs = append(s.subs, sb)
	return nil
}

// poll takes the messages ready in one of the subscriptions, starting after the one that
// gave the last ones (fairness), into carry. It reports whether it found any.
func (s *Session) poll() bool {
	s.mu.Lock()
	n, start := len(s.subs), s.rr
	s.mu.Unlock()
	for k := range n {
		s.mu.Lock()
		if len(s.subs) == 0 {
			s.mu.Unlock()
			return false
		}
		i := (start + k) % len(s.subs)
		sb := s.subs[i]
		s.mu.Unlock()
		msgs, err := sb.ds.Poll(256)
		var loss *ds.LossError
		switch {
		case errors.As(err, &loss):
			s.st.metrics.lost.Add(loss.Messages)
			s.st.opts.Logger.Warn("session lost messages to retention", "client", s.id, "filter", sb.Filter, "err", err)
			s.signalNotify() // Poll goes on after the loss next time
			continue
		case errors.Is(err, ds.ErrSubscriptionClosed) || err == nil && len(msgs) == 0:
			continue // closed by Unsubscribe meanwhile, or nothing
		case err != nil:
			s.mu.Lock()
			s.pollErr = err // ErrUnavailable (retryable), a storage error: Next returns it
			s.mu.Unlock()
			return false
		}
		s.mu.Lock()
		if !sb.closed {
			s.carry, s.carrySub = msgs, sb
		}
		s.rr = i + 1
		s.mu.Unlock()
		return true
	}
	return false
}

func (s *Session) signalNotify() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next returns the next deliveries, at most n (1…4096), waiting until there is one
// and the window (ConnectOptions.ReceiveMaximum) has room. A resumed session first returns
// what it had in flight: QoS 2 messages again (Dup) and PUBRELs. QoS 2 deliveries are
// durable before Next returns them, so their packet IDs survive a crash.
func (s *Session) Next(ctx context.Context, n int) ([]Delivery, error) {
	n = min(max(n, 1), 4096)
	select {
	case s.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		s.mu.Lock()
		defer s.mu.Unlock()
		return nil, s.err
	}
	defer func() { <-s.turn }()
	for {
		s.mu.Lock()
		if s.err != nil {
			defer s.mu.Unlock()
			return nil, s.err
		}
		if s.unsaved {
			s.mu.Unlock()
			s.writeMu.Lock()
			err := s.writeLocked(ctx, nil)
			s.writeMu.Unlock()
			if err != nil {
				return nil, err
			}
			s.mu.Lock()
			s.unsaved = false
			s.mu.Unlock()
			continue
		}
		if len(s.pending) > 0 {
			k := min(n, len(s.pending))
			out := slices.Clone(s.pending[:k])
			s.pending = s.pending[k:]
			s.mu.Unlock()
			return out, nil
		}
		if len(s.carry) > 0 {
			before := len(s.carry)
			out, qos2 := s.takeLocked(s.carrySub, n)
			progress := len(s.carry) < before
			s.mu.Unlock()
			if out, err := s.deliver(ctx, out, qos2); len(out) > 0 || err != nil {
				return out, err
			}
			if progress {
				continue
			}
			// The next carried message needs room in the window.
			select {
			case <-s.room:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-s.done:
			}
			continue
		}
		full := len(s.window) >= s.receive
		s.mu.Unlock()
		if full {
			select {
			case <-s.room:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-s.done:
			}
			continue
		}
		if s.poll() {
			continue
		}
		s.mu.Lock()
		perr := s.pollErr
		s.pollErr = nil
		s.mu.Unlock()
		if perr != nil {
			return nil, perr
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.done:
		}
	}
}

// takeLocked turns carried messages into deliveries while the window has room.
func (s *Session) takeLocked(sb *sub, n int) (out []Delivery, qos2 bool) {
	for len(s.carry) > 0 && len(out) < n {
		m := s.carry[0]
		ref := ds.RefOf(m)
		qos := min(m.QoS, sb.QoS)
		e, restored := s.restored[restoredKey{sb, ref}]
		if !restored && qos > 0 && len(s.window) >= s.receive {
			break // a restored delivery is in the window already: it needs no room
		}
		s.carry = s.carry[1:]
		if restored {
			// A QoS 2 delivery restored from the record (resent from there already) or
			// completed before this subscription read it again.
			delete(s.restored, restoredKey{sb, ref})
			if e != nil && s.window[e.pid] == e {
				e.dsAck = true
				if !e.received && e.msg == nil {
					// Sent before, its message not kept in the record: resend it now.
					msg := m
					e.msg = &msg
					d := Delivery{Message: m, QoS: 2, PacketID: e.pid, Dup: true, Filter: sb.Filter,
						Retain: sb.RetainAsPublished && m.Retain}
					if sb.SubscriptionID != 0 {
						d.SubIDs = []uint32{sb.SubscriptionID}
					}
					out = append(out, d)
				}
			} else {
				sb.ds.Ack(ref)
				s.isDirty = true
			}
			continue
		}
		if sb.retired && (qos == 0 || int(m.Shard) >= sb.until.NShards() || m.Timestamp >= sb.until.Shard(ds.ShardID(m.Shard))) {
			// Not sent before it was unsubscribed, or QoS 0 (never in flight): not delivered.
			sb.ds.Ack(ref)
			s.isDirty = true
			continue
		}
		if sb.NoLocal && m.ClientID == s.id {
			sb.ds.Ack(ref)
			s.isDirty = true
			continue
		}
		d := Delivery{Message: m, QoS: qos, Retain: sb.RetainAsPublished && m.Retain, Filter: sb.Filter}
		if sb.SubscriptionID != 0 {
			d.SubIDs = []uint32{sb.SubscriptionID}
		}
		sh := ds.ShardID(m.Shard)
		sb.sent[sh] = max64(sb.sent[sh], m.Timestamp+1)
		if qos == 0 {
			sb.ds.Ack(ref)
			s.isDirty = true
		} else {
			e := &inflight{seq: s.nextSeq, ref: ref, qos: qos, sub: sb, dsAck: true}
			s.nextSeq++
			e.pid = pidOf(e.seq)
			for s.window[e.pid] != nil { // a packet ID still in flight from 65535 deliveries ago
				e.seq, s.nextSeq = s.nextSeq, s.nextSeq+1
				e.pid = pidOf(e.seq)
			}
			if qos == 2 {
				msg := m
				e.msg = &msg
				qos2 = true
			}
			s.window[e.pid] = e
			d.PacketID = e.pid
			d.Dup = int(sh) < sb.dupBefore.NShards() && m.Timestamp < sb.dupBefore.Shard(sh)
		}
		out = append(out, d)
	}
	if len(s.carry) == 0 {
		s.carry, s.carrySub = nil, nil
	}
	s.st.metrics.deliveries.Add(uint64(len(out)))
	return out, qos2
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// deliver makes new QoS 2 deliveries durable before they are handed out.
func (s *Session) deliver(ctx context.Context, out []Delivery, qos2 bool) ([]Delivery, error) {
	if !qos2 {
		return out, nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writeLocked(ctx, nil); err != nil {
		// Not handed out: the next Next writes them, then hands them out.
		s.mu.Lock()
		s.pending = append(s.pending, out...)
		s.unsaved = true
		s.mu.Unlock()
		return nil, err
	}
	return out, nil
}

// Ack takes the PUBACK of a QoS 1 delivery.
func (s *Session) Ack(pid uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.inflightLocked(pid)
	if err != nil {
		return err
	}
	if e.qos != 1 {
		return fmt.Errorf("%w: PUBACK for QoS %d delivery %d", ErrWrongAck, e.qos, pid)
	}
	s.completeLocked(e)
	return nil
}

// Received takes the PUBREC of a QoS 2 delivery and returns once that is durable: the
// broker then sends PUBREL, which a resumed session repeats until Complete. A repeated
// PUBREC is answered the same way (nil).
func (s *Session) Received(ctx context.Context, pid uint16) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	e, err := s.inflightLocked(pid)
	if err == nil && e.qos != 2 {
		err = fmt.Errorf("%w: PUBREC for QoS %d delivery %d", ErrWrongAck, e.qos, pid)
	}
	if err != nil || e.received {
		s.mu.Unlock()
		return err
	}
	e.received, e.msg = true, nil
	s.mu.Unlock()
	return s.writeLocked(ctx, nil)
}

// Complete takes the PUBCOMP of a QoS 2 delivery.
func (s *Session) Complete(pid uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.inflightLocked(pid)
	if err != nil {
		return err
	}
	if e.qos != 2 || !e.received {
		return fmt.Errorf("%w: PUBCOMP for delivery %d before its PUBREC", ErrWrongAck, pid)
	}
	s.completeLocked(e)
	return nil
}

func (s *Session) inflightLocked(pid uint16) (*inflight, error) {
	if s.err != nil {
		return nil, s.err
	}
	if pid == 0 {
		return nil, fmt.Errorf("%w: packet ID 0", ErrInvalidArgument)
	}
	e := s.window[pid]
	if e == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownPacketID, pid)
	}
	return e, nil
}

func (s *Session) completeLocked(e *inflight) {
	delete(s.window, e.pid)
	if e.dsAck && e.sub != nil && !e.sub.closed {
		e.sub.ds.Ack(e.ref)
	}
	if e.qos == 2 && e.sub != nil && !e.sub.closed {
		// Until its subscription's position passes it, a resume would read it again.
		s.completed[restoredKey{e.sub, e.ref}] = struct{}{}
	}
	s.isDirty = true
	select {
	case s.room <- struct{}{}:
	default:
	}
}
