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
	// retired: unsubscribed while deliveries of it were in flight; it takes no new messages
	// (until: it delivers, after a resume, only those before it) and leaves the record once
	// they are acknowledged.
	retired bool
	until   ds.Position
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

// ClientID returns the session's client ID.
func (s *Session) ClientID() string { return s.id }

// Subscriptions returns the session's subscriptions.
func (s *Session) Subscriptions() []Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Subscription, 0, len(s.subs))
	for _, sb := range s.subs {
		if sb.retired {
			continue
		}
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
		if sb.Filter == filter && !sb.retired {
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
	if s.activeLocked() >= s.st.opts.MaxSubscriptions {
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
	// A Next waiting now polled the subscriptions it had: the new one signals only once it
	// was polled (it joins its shards' tails then), so wake Next to poll it.
	s.signalNotify()
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
	i := slices.IndexFunc(s.subs, func(sb *sub) bool { return sb.Filter == filter && !sb.retired })
	if i < 0 {
		s.mu.Unlock()
		return false, nil
	}
	sb := s.subs[i]
	if s.inflightOfLocked(sb) {
		// MQTT 5 §3.10.4: deliveries it started are completed, after a crash too. It stops
		// taking messages but stays in the record (retired), with everything it sent until
		// now, until those are acknowledged.
		sb.retired, sb.until = true, sb.sentLocked()
		sb.ds.Close()
		if s.carrySub == sb {
			s.carry, s.carrySub = nil, nil
		}
	} else {
		s.closeSubLocked(sb)
	}
	s.mu.Unlock()
	return true, s.writeLocked(ctx, nil)
}

// activeLocked counts the subscriptions that are not retired.
func (s *Session) activeLocked() int {
	n := 0
	for _, sb := range s.subs {
		if !sb.retired {
			n++
		}
	}
	return n
}

// inflightOfLocked reports whether sb has deliveries awaiting acknowledgement.
func (s *Session) inflightOfLocked(sb *sub) bool {
	for _, e := range s.window {
		if e.sub == sb {
			return true
		}
	}
	return false
}

// sentLocked returns the position before which everything of sb was sent (maybe before this
// connection): the record's Sent.
func (sb *sub) sentLocked() ds.Position {
	pos := sb.ds.Position()
	sent := make([]uint64, pos.NShards())
	for j := range sent {
		sent[j] = max64(pos.Shard(ds.ShardID(j)), sb.sent[ds.ShardID(j)])
		if j < sb.dupBefore.NShards() {
			sent[j] = max64(sent[j], sb.dupBefore.Shard(ds.ShardID(j)))
		}
	}
	return ds.NewPosition(sent...)
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
