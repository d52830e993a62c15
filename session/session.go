package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
)

// ConnectOptions are what a CONNECT says about the session.
type ConnectOptions struct {
	// CleanStart discards an existing session (MQTT 5 clean start; 3.1.1 clean session).
	CleanStart bool
	// Expiry is how long the session outlives its disconnect (MQTT 5 session expiry
	// interval, whole seconds; 3.1.1 clean session = false: the broker's choice). 0 ends
	// the session at Disconnect.
	Expiry time.Duration
	// ReceiveMaximum bounds the QoS 1 and 2 deliveries awaiting acknowledgement (MQTT 5
	// receive maximum). Default and maximum 65535.
	ReceiveMaximum int
}

// SubscribeOptions are a subscription's MQTT 5 options.
type SubscribeOptions struct {
	QoS               byte // the maximum QoS granted
	NoLocal           bool // do not deliver the session's own messages
	RetainAsPublished bool // keep the RETAIN flag of deliveries as published
	SubscriptionID    uint32
}

// Subscription is one of a session's subscriptions.
type Subscription struct {
	Filter string
	SubscribeOptions
}

// Delivery is one packet for the broker to send to the client.
type Delivery struct {
	// Release: send PUBREL for PacketID (a QoS 2 delivery whose PUBREC was received before
	// the session was resumed); Message is empty.
	Release bool
	// Message is the message, with its QoS as published; send it at QoS.
	Message  ds.Message
	QoS      byte // granted: min(published, subscribed)
	PacketID uint16
	Dup      bool
	Retain   bool     // the RETAIN flag to send (retain-as-published)
	SubIDs   []uint32 // the subscription identifier, if the subscription has one
	Filter   string   // the subscription that matched
}

// Session is a durable session while a connection owns it. Its methods are safe for
// concurrent use (a broker typically calls Next from its write loop and the
// acknowledgements from its read loop).
//
// Overlapping subscriptions: each subscription delivers its own copy of a message that
// matches several (MQTT 5 §3.3.4 allows one copy per matching subscription, each at that
// subscription's QoS and with its identifier); each subscription delivers the messages of
// a publisher in the order they were published.
type Session struct {
	st      *Store
	id      string
	shard   ds.ShardID
	key     []byte
	receive int

	writeMu sync.Mutex // serialises record writes; held before mu
	// writing is the record value the session writes (or wrote) last, with what the Store
	// keeps of it: the Store's record watch recognises the session's own writes by it.
	writing atomic.Pointer[ownWrite]
	mu      sync.Mutex
	// Guarded by mu:
	epoch, version uint64
	expiry         time.Duration
	nextSeq        uint64
	subs           []*sub
	window         map[uint16]*inflight      // by packet ID
	pending        []Delivery                // resends of a resumed session, before anything else
	restored       map[restoredKey]*inflight // QoS 2 entries of a resumed session, by subscription and message (nil: completed)
	completed      map[restoredKey]struct{}  // completed QoS 2 deliveries, until their subscription's position passes them
	carry          []ds.Message              // taken from a subscription, beyond the window
	carrySub       *sub
	isDirty        bool
	deleting       bool  // Disconnect deletes the record (expiry 0)
	err            error // ErrTakenOver or ErrSessionClosed once the session ended
	room           chan struct{}
	notify         chan struct{} // capacity 1: a subscription may have messages (ds.SubscribeOptions.Notify)
	turn           chan struct{} // capacity 1: held by the Next in progress (they take turns)
	unsaved        bool          // pending holds QoS 2 deliveries whose write failed: write before handing them out
	rr             int           // the subscription Next polls first
	pollErr        error         // set by poll for Next to return
	done           chan struct{}
	wg             sync.WaitGroup
}

type sub struct {
	Subscription
	ds        *ds.Subscription
	sent      map[ds.ShardID]uint64 // per shard: everything below was sent
	dupBefore ds.Position           // a resumed message below this was (maybe) sent before
	closed    bool
}

type inflight struct {
	seq      uint64
	pid      uint16
	ref      ds.Ref
	qos      byte
	sub      *sub // nil once unsubscribed, or for a restored entry not seen again yet
	dsAck    bool // the delivery holds an unacknowledged message of sub.ds
	received bool
	msg      *ds.Message // QoS 2, until received
}

// restoredKey names a restored QoS 2 delivery: overlapping subscriptions deliver the same
// message each, so the message alone does not.
type restoredKey struct {
	sub *sub
	ref ds.Ref
}

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
			dupBefore: ss.Sent}
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

// ClientID returns the session's client ID.
func (s *Session) ClientID() string { return s.id }

// Subscriptions returns the session's subscriptions.
func (s *Session) Subscriptions() []Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Subscription, 0, len(s.subs))
	for _, sb := range s.subs {
		out = append(out, sb.Subscription)
	}
	return out
}

// Subscribe adds a subscription (or replaces the options of the one with the same filter)
// and returns once it is durable. It receives the messages stored from now on: none stored
// before it existed.
func (s *Session) Subscribe(ctx context.Context, filter string, o SubscribeOptions) error {
	if err := topic.ValidateFilter(filter); err != nil {
		return err
	}
	if o.QoS > 2 || o.SubscriptionID > maxSubscriptionID {
		return fmt.Errorf("%w: subscribe options %+v", ErrInvalidArgument, o)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.err != nil {
		defer s.mu.Unlock()
		return s.err
	}
	for _, sb := range s.subs {
		if sb.Filter == filter {
			prev := sb.SubscribeOptions
			sb.SubscribeOptions = o
			s.mu.Unlock()
			if err := s.writeLocked(ctx, nil); err != nil {
				s.mu.Lock()
				sb.SubscribeOptions = prev
				s.mu.Unlock()
				return err
			}
			return nil
		}
	}
	if len(s.subs) >= s.st.opts.MaxSubscriptions {
		s.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrTooManySubscriptions, s.st.opts.MaxSubscriptions)
	}
	s.mu.Unlock()
	pos, err := s.st.db.TailPosition()
	if err != nil {
		return err
	}
	sb := &sub{Subscription: Subscription{Filter: filter, SubscribeOptions: o}, dupBefore: pos}
	s.mu.Lock()
	err = s.open(sb, pos)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.writeLocked(ctx, nil); err != nil {
		s.mu.Lock()
		s.closeSubLocked(sb)
		s.mu.Unlock()
		return err
	}
	return nil
}

// Unsubscribe removes the subscription to filter and returns whether it existed. Its
// deliveries in flight are still acknowledged as usual.
func (s *Session) Unsubscribe(ctx context.Context, filter string) (bool, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.err != nil {
		defer s.mu.Unlock()
		return false, s.err
	}
	i := slices.IndexFunc(s.subs, func(sb *sub) bool { return sb.Filter == filter })
	if i < 0 {
		s.mu.Unlock()
		return false, nil
	}
	s.closeSubLocked(s.subs[i])
	s.mu.Unlock()
	return true, s.writeLocked(ctx, nil)
}

func (s *Session) closeSubLocked(sb *sub) {
	sb.closed = true
	sb.ds.Close()
	s.subs = slices.DeleteFunc(s.subs, func(x *sub) bool { return x == sb })
	for _, e := range s.window {
		if e.sub == sb {
			e.sub, e.dsAck = nil, false
		}
	}
	if s.carrySub == sb {
		s.carry, s.carrySub = nil, nil
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

func (s *Session) dirty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isDirty && s.err == nil
}

// checkpoint writes the session's acknowledgements.
func (s *Session) checkpoint(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.writeLocked(ctx, nil)
}

// Checkpoint writes the session's state now (the Store does so every CheckpointInterval).
func (s *Session) Checkpoint(ctx context.Context) error { return s.checkpoint(ctx) }

// stateLocked builds the record of the session's current state.
func (s *Session) stateLocked() *state {
	st := &state{Epoch: s.epoch, Expiry: s.expiry, NextSeq: s.nextSeq, Owner: s.st.opts.Owner}
	idx := map[*sub]int{}
	for i, sb := range s.subs {
		idx[sb] = i + 1
		ss := subState{Filter: sb.Filter, QoS: sb.QoS, NoLocal: sb.NoLocal, RetainAsPub: sb.RetainAsPublished,
			SubscriptionID: sb.SubscriptionID, Position: sb.ds.Position()}
		for k := range s.completed {
			if k.sub != sb {
				continue
			}
			if sh := k.ref.Shard; int(sh) < ss.Position.NShards() && k.ref.Timestamp < ss.Position.Shard(sh) {
				delete(s.completed, k) // the position passed it
				continue
			}
			st.Done = append(st.Done, doneEntry{Sub: i + 1, Ref: k.ref})
		}
		sent := make([]uint64, ss.Position.NShards())
		for j := range sent {
			// What was (maybe) sent before this connection stays so: a resumed session that
			// disconnects before resending it must still mark it DUP next time.
			sent[j] = max64(ss.Position.Shard(ds.ShardID(j)), sb.sent[ds.ShardID(j)])
			if j < sb.dupBefore.NShards() {
				sent[j] = max64(sent[j], sb.dupBefore.Shard(ds.ShardID(j)))
			}
		}
		ss.Sent = ds.NewPosition(sent...)
		st.Subs = append(st.Subs, ss)
	}
	for _, e := range s.window {
		if e.qos != 2 {
			continue
		}
		st.Window = append(st.Window, qos2Entry{Seq: e.seq, Ref: e.ref, Sub: idx[e.sub], Received: e.received, Msg: e.msg})
	}
	for k := range s.completed {
		if idx[k.sub] == 0 {
			delete(s.completed, k) // unsubscribed: never read again
		}
	}
	slices.SortFunc(st.Window, func(a, b qos2Entry) int { return cmpU64(a.Seq, b.Seq) })
	slices.SortFunc(st.Done, compareDone)
	// Keep the sent messages while they fit; beyond, their references only (state 3).
	kept := 0
	for i := range st.Window {
		if m := st.Window[i].Msg; m != nil {
			if size := message.Size(m); kept+size <= maxKeptBytes {
				kept += size
			} else {
				st.Window[i].Msg = nil
			}
		}
	}
	return st
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// writeLocked writes the session's state, fenced by its record version. edit, if not nil,
// changes the state before it is written. The caller holds writeMu.
func (s *Session) writeLocked(ctx context.Context, edit func(*state)) error {
	txn, err := s.prepareLocked(edit)
	if err != nil {
		return err
	}
	res, err := s.st.db.Update(ctx, s.shard, txn)
	return s.finishLocked(ctx, txn, res, err)
}

// prepareLocked builds the write of the session's current state (edited by edit, if not
// nil), conditional on the record version the session wrote last. The caller holds writeMu
// until finishLocked.
func (s *Session) prepareLocked(edit func(*state)) (*ds.Txn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	st := s.stateLocked()
	if edit != nil {
		edit(st)
	}
	s.isDirty = false
	value := appendState(nil, st)
	s.writing.Store(&ownWrite{value: value, k: *knownOf(st)})
	return &ds.Txn{Conds: []ds.Cond{{Key: s.key, Version: s.version}},
		Writes: []ds.RecordWrite{{Key: s.key, Value: value}}}, nil
}

// ownWrite is a record value a session writes, and the Store's summary of it.
type ownWrite struct {
	value []byte
	k     known
}

// finishLocked takes the outcome of txn (prepareLocked's). A condition that failed or an
// unknown outcome is resolved by reading the record: written by another connection (the
// session is fenced: ErrTakenOver), or by this one (the write is made again on top).
func (s *Session) finishLocked(ctx context.Context, txn *ds.Txn, res ds.TxnResult, err error) error {
	for attempt := 0; ; attempt++ {
		if err == nil {
			s.st.metrics.stateWrites.Add(1)
			s.mu.Lock()
			s.version = res.Versions[0]
			s.mu.Unlock()
			return nil
		}
		if !errors.Is(err, ds.ErrConditionFailed) && !errors.Is(err, ds.ErrOutcomeUnknown) || attempt > 0 {
			s.mu.Lock()
			s.isDirty = true
			s.mu.Unlock()
			return err
		}
		cur, v, rerr := s.st.db.Record(ctx, s.shard, s.key)
		if rerr != nil {
			return rerr
		}
		if v == 0 {
			s.end(ErrTakenOver)
			return ErrTakenOver
		}
		other, derr := decodeState(cur)
		if derr != nil {
			return derr
		}
		if other.Epoch != s.epoch {
			s.end(ErrTakenOver)
			return ErrTakenOver
		}
		s.mu.Lock()
		s.version = v
		s.mu.Unlock()
		txn.Conds[0].Version = v
		res, err = s.st.db.Update(ctx, s.shard, txn)
	}
}

// fenceIfNewer ends the session if the record now belongs to another connection: written
// (at version) after the session's own last write, by another epoch. A notification older
// than the session's own write (it comes late, from the record watch) changes nothing.
func (s *Session) fenceIfNewer(version, epoch uint64) {
	s.mu.Lock()
	other := version > s.version && epoch != s.epoch
	s.mu.Unlock()
	if other {
		s.st.metrics.fenced.Add(1)
		// Not in the caller's goroutine: it is a shard's committing one, which closing the
		// subscriptions must not wait on.
		go s.endAsync(ErrTakenOver)
	}
}

// fenceIfGone ends the session if its record was deleted (expired elsewhere, Delete). A
// delete carries no version, and the notification may be of one made before this session
// wrote its record (it comes late): look at the record, outside the committing goroutine.
func (s *Session) fenceIfGone() {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		value, v, err := s.st.db.Record(ctx, s.shard, s.key)
		if err != nil {
			return // closing; a later write finds out anyway
		}
		s.mu.Lock()
		gone := !s.deleting && s.err == nil
		if gone && v != 0 {
			cur, derr := decodeState(value)
			gone = derr == nil && cur.Epoch != s.epoch
		}
		s.mu.Unlock()
		if gone {
			s.st.metrics.fenced.Add(1)
			s.endAsync(ErrTakenOver)
		}
	}()
}

// Disconnect ends the connection's ownership: the session's state is written with its
// disconnect time, and it expires its Expiry later (at once for 0) unless resumed.
func (s *Session) Disconnect(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	now := uint64(max(s.st.opts.Now().UnixMicro(), 1))
	s.mu.Lock()
	expiry := s.expiry
	s.mu.Unlock()
	var err error
	if expiry == 0 {
		err = s.deleteLocked(ctx)
	} else {
		err = s.writeLocked(ctx, func(st *state) { st.Disconnected, st.Clean = now, true })
	}
	s.end(ErrSessionClosed)
	return err
}

// deleteLocked removes the session's record (a session with expiry 0 ends at disconnect).
func (s *Session) deleteLocked(ctx context.Context) error {
	s.mu.Lock()
	version, err := s.version, s.err
	s.deleting = err == nil
	s.mu.Unlock()
	if err != nil {
		return err
	}
	dels, err := s.st.inboundDeletes(ctx, s.shard, s.id)
	if err != nil {
		return err
	}
	_, err = s.st.db.Update(ctx, s.shard, &ds.Txn{Conds: []ds.Cond{{Key: s.key, Version: version}},
		Writes: append(dels, ds.RecordWrite{Key: s.key, Delete: true})})
	if errors.Is(err, ds.ErrConditionFailed) {
		return ErrTakenOver
	}
	return err
}

// end stops the session with err (ErrTakenOver, ErrSessionClosed) and waits for its pumps.
func (s *Session) end(err error) {
	if s.endAsync(err) {
		s.wg.Wait()
	}
}

// endAsync stops the session without waiting (it may run in a record watch callback); it
// reports whether this call ended it.
func (s *Session) endAsync(err error) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	s.err = err
	for _, sb := range s.subs {
		sb.closed = true
		sb.ds.Close()
	}
	close(s.done)
	s.mu.Unlock()
	s.st.mu.Lock()
	if s.st.mu.local[s.id] == s {
		delete(s.st.mu.local, s.id)
	}
	s.st.mu.Unlock()
	return true
}
