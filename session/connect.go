package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/strata-mq/strata/ds"
)

// Connect opens the session of clientID for a new connection: a resumed one (present) if it
// exists and opts.CleanStart is not set, else a new one. A session open elsewhere — in this
// Store, another Store over the same DB, another site — is taken over: its holder is fenced
// off (ErrTakenOver) and writes nothing more.
func (st *Store) Connect(ctx context.Context, clientID string, opts ConnectOptions) (s *Session, present bool, err error) {
	if err := validClientID(clientID); err != nil {
		return nil, false, err
	}
	if opts.Expiry < 0 || opts.Expiry > maxExpiry || opts.ReceiveMaximum < 0 || opts.ReceiveMaximum > maxReceive {
		return nil, false, fmt.Errorf("%w: connect options %+v", ErrInvalidArgument, opts)
	}
	opts.Expiry = opts.Expiry.Truncate(time.Second)
	if opts.ReceiveMaximum == 0 {
		opts.ReceiveMaximum = maxReceive
	}
	st.mu.Lock()
	closed, old := st.mu.closed, st.mu.local[clientID]
	if !closed {
		// Expire must not take the record this Connect writes for one left behind.
		st.mu.connecting[clientID]++
	}
	st.mu.Unlock()
	if closed {
		return nil, false, ErrSessionClosed
	}
	defer func() {
		st.mu.Lock()
		if st.mu.connecting[clientID]--; st.mu.connecting[clientID] <= 0 {
			delete(st.mu.connecting, clientID)
		}
		st.mu.Unlock()
	}()
	if old != nil {
		old.end(ErrTakenOver)
		st.metrics.fenced.Add(1)
	}
	db := st.db
	s = &Session{st: st, id: clientID, shard: ds.ShardOf(clientID, db.NShards()), key: sessionKey(clientID),
		receive: opts.ReceiveMaximum, expiry: opts.Expiry, window: map[uint16]*inflight{}, completed: map[restoredKey]struct{}{},
		room: make(chan struct{}, 1), notify: make(chan struct{}, 1), turn: make(chan struct{}, 1), done: make(chan struct{})}
	for {
		value, version, err := db.Record(ctx, s.shard, s.key)
		if err != nil {
			return nil, false, err
		}
		var prev *state
		if version != 0 {
			if prev, err = decodeState(value); err != nil {
				return nil, false, fmt.Errorf("session %q: %w", clientID, err)
			}
		}
		next := &state{Expiry: opts.Expiry, Owner: st.opts.Owner, NextSeq: 1}
		txn := &ds.Txn{Conds: []ds.Cond{{Key: s.key, Version: version}}}
		if prev != nil {
			next.Epoch = prev.Epoch + 1
		} else {
			next.Epoch = 1
		}
		present = prev != nil && !opts.CleanStart
		if present {
			next.NextSeq, next.Subs, next.Window, next.Done = prev.NextSeq, prev.Subs, prev.Window, prev.Done
		} else {
			dels, err := st.inboundDeletes(ctx, s.shard, clientID)
			if err != nil {
				return nil, false, err
			}
			txn.Writes = dels
		}
		txn.Writes = append(txn.Writes, ds.RecordWrite{Key: s.key, Value: appendState(nil, next)})
		res, err := db.Update(ctx, s.shard, txn)
		if errors.Is(err, ds.ErrConditionFailed) {
			continue // written meanwhile (another connection, an expiry): read again
		}
		if err != nil {
			return nil, false, err
		}
		st.metrics.stateWrites.Add(1)
		s.epoch, s.version, s.nextSeq = next.Epoch, res.Versions[len(res.Versions)-1], next.NextSeq
		if err := s.resume(prev, next, present); err != nil {
			s.end(ErrSessionClosed)
			return nil, false, err
		}
		break
	}
	st.mu.Lock()
	if st.mu.closed {
		st.mu.Unlock()
		s.end(ErrSessionClosed)
		return nil, false, ErrSessionClosed
	}
	var loser *Session
	if o := st.mu.local[clientID]; o != nil && o != old {
		// Two Connects of one client raced: the later write (the higher epoch) won.
		o.mu.Lock()
		newer := o.epoch > s.epoch
		o.mu.Unlock()
		if newer {
			st.mu.Unlock()
			s.end(ErrTakenOver)
			return nil, false, ErrTakenOver
		}
		loser = o
	}
	st.mu.local[clientID] = s
	st.mu.Unlock()
	if loser != nil {
		loser.end(ErrTakenOver) // not under st.mu: ending takes it
	}
	return s, present, nil
}

// resume opens the subscriptions of the state written and restores its QoS 2 deliveries.
func (s *Session) resume(prev, next *state, present bool) error {
	var tail ds.Position
	if present {
		var err error
		if tail, err = s.st.db.TailPosition(); err != nil {
			return err
		}
	}
	for _, ss := range next.Subs {
		sb := &sub{Subscription: Subscription{Filter: ss.Filter, SubscribeOptions: SubscribeOptions{
			QoS: ss.QoS, NoLocal: ss.NoLocal, RetainAsPublished: ss.RetainAsPub, SubscriptionID: ss.SubscriptionID}},
			dupBefore: ss.Sent, retired: ss.Retired, until: ss.Until}
		if !prev.Clean && prev.Disconnected == 0 {
			// It was connected when its broker stopped: anything stored until now may have
			// been sent since the last checkpoint.
			sb.dupBefore = tail
		}
		if err := s.open(sb, ss.Position); err != nil {
			return err
		}
	}
	s.restored = map[restoredKey]*inflight{}
	for _, d := range next.Done {
		// Its subscription reads it again: skip it (s.subs are opened in the order of
		// next.Subs).
		k := restoredKey{s.subs[d.Sub-1], d.Ref}
		s.restored[k] = nil
		s.completed[k] = struct{}{}
	}
	for _, e := range next.Window {
		in := &inflight{seq: e.Seq, pid: pidOf(e.Seq), ref: e.Ref, qos: 2, received: e.Received, msg: e.Msg}
		s.window[in.pid] = in
		if e.Sub > 0 {
			// Its subscription delivers the message again (from its Position): that copy is
			// this one.
			in.sub = s.subs[e.Sub-1]
			s.restored[restoredKey{in.sub, e.Ref}] = in
		}
		if e.Received {
			s.pending = append(s.pending, Delivery{Release: true, PacketID: in.pid, QoS: 2})
			continue
		}
		if e.Msg == nil {
			continue // not kept: resent when its subscription reads it again (takeLocked)
		}
		d := Delivery{Message: *e.Msg, QoS: 2, PacketID: in.pid, Dup: true}
		if e.Sub > 0 {
			sb := next.Subs[e.Sub-1]
			d.Filter, d.Retain = sb.Filter, sb.RetainAsPub && e.Msg.Retain
			if sb.SubscriptionID != 0 {
				d.SubIDs = []uint32{sb.SubscriptionID}
			}
		}
		s.pending = append(s.pending, d)
	}
	return nil
}

// pidOf derives a packet ID from a delivery's sequence number (1…65535, cyclic).
func pidOf(seq uint64) uint16 { return uint16((seq-1)%65535 + 1) }
