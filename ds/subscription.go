package ds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
)

// SubscribeOptions configure a subscription. Zero fields mean their defaults.
type SubscribeOptions struct {
	// MaxUnacked is how many delivered messages may wait for Ack before Next parks the
	// subscription (flow control). Default 1000.
	MaxUnacked int
	// Buffer is how many messages the tail may hand a subscription that does not take them
	// (a parked or slow one) before it stops feeding it; the subscription then reads them
	// from the storage when it takes messages again, so a slow subscription costs memory up
	// to Buffer and never delays others. Default 2×MaxUnacked.
	Buffer int
	// ReadBuffer is how many messages a subscription behind the tail reads ahead in a shard,
	// spread over the streams its filter spans in the shard (at least 16 and at most 1024 per
	// stream and read). More means fewer, larger storage reads: with ~240 streams per shard,
	// 16 per read ran catch-up at 0.67× a replay of the same data, 64 at 0.81×. Default
	// 16384 (about 16 MiB of 1 KiB messages for each shard being read).
	ReadBuffer int
	// Notify, if not nil, is signalled (a send that never blocks: give it capacity 1)
	// whenever Next could return something it could not before: messages arrived, an Ack
	// made room, a shard fell behind. One channel may serve many subscriptions, which a
	// reader then takes from with Poll: one goroutine for all of them.
	Notify chan struct{}
}

func (o *SubscribeOptions) withDefaults() (SubscribeOptions, error) {
	var c SubscribeOptions
	if o != nil {
		c = *o
	}
	if c.MaxUnacked < 0 || c.Buffer < 0 || c.ReadBuffer < 0 {
		return c, fmt.Errorf("%w: negative SubscribeOptions field: %+v", ErrInvalidOptions, c)
	}
	if c.MaxUnacked == 0 {
		c.MaxUnacked = 1000
	}
	if c.Buffer == 0 {
		c.Buffer = 2 * c.MaxUnacked
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 16384
	}
	return c, nil
}

// ErrSubscriptionClosed: the subscription was closed (by Close, or because the DB closed).
var ErrSubscriptionClosed = errors.New("strata: subscription closed")

// ErrNotDelivered: Ack of a message that this subscription has not delivered or that was
// acknowledged already. Nothing changed.
var ErrNotDelivered = errors.New("strata: message not delivered or already acknowledged")

// ErrMessagesLost: a subscription fell behind retention, and messages it had not read were
// dropped with their generation. The error is a *LossError that says where; the subscription
// goes on after the gap.
var ErrMessagesLost = errors.New("strata: messages dropped by retention before they were read")

// LossError reports messages a subscription can no longer deliver: its shard's generations
// covering [From, Until) were dropped by retention before it read them.
type LossError struct {
	Shard ShardID
	// Generation is the newest dropped generation in the range (0 if not known).
	Generation  GenerationID
	From, Until uint64 // µs timestamps
	// Messages is how many messages the dropped generation held, of every topic — an upper
	// bound of those the subscription lost — when the process saw the drop; 0 if unknown.
	Messages uint64
}

func (e *LossError) Error() string {
	return fmt.Sprintf("%v: shard %d, generation %d, timestamps [%d, %d), %d messages in the generation",
		ErrMessagesLost, e.Shard, e.Generation, e.From, e.Until, e.Messages)
}

func (e *LossError) Unwrap() error { return ErrMessagesLost }

// Subscription delivers the messages matching one topic filter, from a Position on, in
// timestamp order per shard — so each publisher's messages in the order it stored them —
// merged across the shard's streams and generations, which it discovers by itself. Shards
// are independent: their messages interleave in no particular order.
//
// Next waits for messages (no polling: a Store wakes the subscriptions it concerns once the
// messages are durable — on a replicated site, once its replica applied them); Ack
// acknowledges them; at most MaxUnacked delivered messages wait for Ack, beyond that Next
// parks until an Ack. Position says where to resume after a restart without missing a
// message that was not acknowledged.
//
// A subscription at the tail is fed from each commit in memory, together with every other
// tail subscription of the shard; one behind the tail reads the storage on its own until it
// catches up. The methods are safe for concurrent use; concurrent Next calls take turns.
type Subscription struct {
	db     *DB
	filter string
	levels []string
	opts   SubscribeOptions
	shards []*subShard
	done   chan struct{} // closed by Close
	wake   chan struct{} // capacity 1: something for a waiting Next (messages, an Ack)

	// readMu (capacity 1) is held by Next: one reader at a time, owner of the catchUp states.
	// A channel, so that a Next waiting for another one still watches its ctx.
	readMu   chan struct{}
	readFrom int // REQUIRES: readMu; where readBehind starts

	mu struct {
		sync.Mutex
		outstanding int // delivered, not acknowledged
		rr          int // shard to take from first, for fairness
		closed      bool
	}
}

// subShard is a subscription's state in one shard.
type subShard struct {
	sub *Subscription
	id  ShardID
	cu  catchUp // REQUIRES: sub.readMu

	// Guarded by sub.mu:
	next    uint64             // every matching message below next was delivered or is in pending
	pending []*message.Message // ready to deliver, in timestamp order, all below next
	tail    bool               // fed by the shard's feed
	unacked []uint64           // timestamps delivered and not acknowledged, in order
	// loss is a LossError not reported yet: Next reports it once the messages before it
	// (pending) are delivered, and Position stays at its From until then.
	loss *LossError
	// gapFrom < gapUntil: the shard joined the tail at gapUntil while its reading stood at
	// gapFrom; the messages between are read from the storage before pending (fed, all at or
	// after gapUntil) is delivered.
	gapFrom, gapUntil uint64
}

// gap reports whether the shard has messages to read before its pending ones.
// REQUIRES: sub.mu held.
func (sh *subShard) gap() bool { return sh.gapFrom < sh.gapUntil }

// Subscribe starts a subscription to filter from position from (StartPosition,
// TailPosition, or an earlier Subscription.Position). opts may be nil for the defaults.
func (db *DB) Subscribe(filter string, from Position, opts *SubscribeOptions) (*Subscription, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	if from.NShards() != len(db.shards) {
		return nil, fmt.Errorf("%w: it covers %d shards, the DB has %d", ErrInvalidPosition, from.NShards(), len(db.shards))
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Subscription{
		db: db, filter: filter, levels: topic.Split(filter), opts: o,
		done: make(chan struct{}), wake: make(chan struct{}, 1), readMu: make(chan struct{}, 1),
	}
	for i := range db.shards {
		s.shards = append(s.shards, &subShard{sub: s, id: ShardID(i), next: from.next[i]})
	}
	db.subs.Lock()
	db.subs.all[s] = struct{}{}
	db.subs.Unlock()
	return s, nil
}

// Filter returns the subscription's topic filter.
func (s *Subscription) Filter() string { return s.filter }

// Next returns up to max messages, waiting until there is at least one, ctx ends (its error),
// or the subscription or DB closes (ErrSubscriptionClosed). Each message has Shard and
// Timestamp set: acknowledge it with Ack(RefOf(msg)) once the session is done with it.
//
// The messages of one shard come in timestamp order, each once (across Next calls; after a
// restart from Position, those not acknowledged come again). Next parks while MaxUnacked
// messages wait for Ack. A *LossError (ErrMessagesLost) reports messages dropped by
// retention before they were read; the next call goes on after them. ErrUnavailable (a
// replicated site without an open replica of a shard, for a while) is retryable: call again.
//
// Delivered messages share their payload with other subscriptions: do not modify them.
func (s *Subscription) Next(ctx context.Context, max int) ([]Message, error) {
	return s.next(ctx, max, true)
}

// Poll is Next without the wait: it returns what Next would, or nothing (and a nil error)
// where Next would wait — for messages, or for an Ack when MaxUnacked are outstanding. It
// reads the storage where the subscription is behind the tail. With
// SubscribeOptions.Notify, a reader polls its subscriptions each time the channel signals.
func (s *Subscription) Poll(max int) ([]Message, error) {
	return s.next(context.Background(), max, false)
}

func (s *Subscription) next(ctx context.Context, max int, block bool) ([]Message, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: Next with max %d", ErrInvalidOptions, max)
	}
	select {
	case s.readMu <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, ErrSubscriptionClosed
	}
	defer func() { <-s.readMu }()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.mu.Lock()
		if s.mu.closed {
			s.mu.Unlock()
			return nil, ErrSubscriptionClosed
		}
		// A loss is reported once the messages before it are delivered.
		for _, sh := range s.shards {
			if l := sh.loss; l != nil && len(sh.pending) == 0 {
				sh.loss = nil
				s.mu.Unlock()
				s.db.subStats.losses.Add(1)
				return nil, l
			}
		}
		room := s.opts.MaxUnacked - s.mu.outstanding
		if room > 0 {
			if out := s.takeLocked(min(max, room)); len(out) > 0 {
				s.mu.Unlock()
				s.db.subStats.delivered.Add(uint64(len(out)))
				return out, nil
			}
		}
		var behind []*subShard
		if room > 0 {
			for _, sh := range s.shards {
				if sh.loss == nil && (sh.gap() || !sh.tail && len(sh.pending) == 0) {
					behind = append(behind, sh)
				}
			}
		}
		s.mu.Unlock()
		if room <= 0 {
			if !block {
				return nil, nil
			}
			s.db.subStats.parked.Add(1)
			err := s.wait(ctx)
			s.db.subStats.parked.Add(-1)
			if err != nil {
				return nil, err
			}
			continue
		}
		read, errs := s.readBehind(behind, min(max, room))
		if read {
			continue
		}
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		if len(behind) > 0 {
			// A shard behind the tail that read nothing has joined it, or found a loss, or
			// still has to read (then it reads again), or finished its gap: then the messages
			// fed while it read the gap are deliverable now, and nothing else wakes Next for
			// them (their wake-up may have been taken by a Next parked on MaxUnacked).
			again := false
			s.mu.Lock()
			for _, sh := range behind {
				again = again || !sh.tail || sh.gap() || sh.loss != nil || len(sh.pending) > 0
			}
			s.mu.Unlock()
			if again {
				continue
			}
		}
		if !block {
			return nil, nil
		}
		if err := s.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// readBehind reads shards behind the tail into their pending messages until some yield
// messages, and reports whether any did. It starts with the shards read last: a shard is read
// until it catches up before the next one, so that its streams' blocks stay in the cache and
// one subscription's buffers stay within a few shards. Up to GOMAXPROCS shards are read at
// once, each by its own goroutine (their catchUp states are independent): a subscription
// catching up uses the cores as parallel replays do.
//
// REQUIRES: s.readMu held.
func (s *Subscription) readBehind(behind []*subShard, n int) (bool, []error) {
	par := min(len(behind), runtime.GOMAXPROCS(0), maxParallelReads)
	read := false
	var errs []error
	for start := 0; start < len(behind) && !read; start += par {
		group := make([]*subShard, 0, par)
		for k := start; k < len(behind) && len(group) < par; k++ {
			group = append(group, behind[(s.readFrom+k)%len(behind)])
		}
		counts := make([]int, len(group))
		gerrs := make([]error, len(group))
		if len(group) == 1 {
			counts[0], gerrs[0] = group[0].catchUp(n)
		} else {
			var wg sync.WaitGroup
			for i, sh := range group {
				wg.Go(func() { counts[i], gerrs[i] = sh.catchUp(n) })
			}
			wg.Wait()
		}
		for i := range group {
			if gerrs[i] != nil {
				errs = append(errs, gerrs[i])
			}
			if counts[i] > 0 && !read {
				s.readFrom = (s.readFrom + start + i) % len(behind)
				read = true
			}
		}
	}
	return read, errs
}

// maxParallelReads bounds the shards one subscription reads at once.
const maxParallelReads = 4

// wait waits for a wake-up, ctx, or Close.
func (s *Subscription) wait(ctx context.Context) error {
	select {
	case <-s.wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrSubscriptionClosed
	}
}

func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if s.opts.Notify != nil {
		select {
		case s.opts.Notify <- struct{}{}:
		default:
		}
	}
}

// takeLocked moves up to n pending messages into the delivered set and returns copies,
// visiting the shards round-robin across calls.
//
// REQUIRES: s.mu held.
func (s *Subscription) takeLocked(n int) []Message {
	total := 0
	for _, sh := range s.shards {
		total += sh.deliverable()
	}
	if total == 0 {
		return nil
	}
	out := make([]Message, 0, min(n, total))
	for k := 0; k < len(s.shards) && len(out) < n; k++ {
		sh := s.shards[(s.mu.rr+k)%len(s.shards)]
		take := min(n-len(out), sh.deliverable())
		for _, m := range sh.pending[:take] {
			out = append(out, *m)
			sh.unacked = append(sh.unacked, m.Timestamp)
		}
		clear(sh.pending[:take])
		sh.pending = sh.pending[take:]
		if len(sh.pending) == 0 {
			sh.pending = nil
		}
	}
	s.mu.rr = (s.mu.rr + 1) % len(s.shards)
	s.mu.outstanding += len(out)
	return out
}

// Ack acknowledges delivered messages (by Message.Ref). Each must have been delivered by this
// subscription and not acknowledged yet (ErrNotDelivered; the others are still
// acknowledged). Acknowledged messages leave the MaxUnacked window, and Position moves past
// them once every earlier message of their shard is acknowledged too.
func (s *Subscription) Ack(refs ...Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	parked := s.mu.outstanding >= s.opts.MaxUnacked
	var errs []error
	for _, r := range refs {
		if int(r.Shard) >= len(s.shards) {
			errs = append(errs, fmt.Errorf("%w: shard %d", ErrNotDelivered, r.Shard))
			continue
		}
		if err := s.shards[r.Shard].ackLocked(r.Timestamp); err != nil {
			errs = append(errs, err)
			continue
		}
		s.mu.outstanding--
	}
	if parked && len(errs) < len(refs) {
		s.signal() // room for a Next waiting on MaxUnacked; otherwise nothing new to take
	}
	return errors.Join(errs...)
}

// ackLocked removes the delivery of ts from the unacknowledged ones. REQUIRES: sub.mu held.
func (sh *subShard) ackLocked(ts uint64) error {
	i, found := slices.BinarySearch(sh.unacked, ts)
	if !found {
		return fmt.Errorf("%w: shard %d timestamp %d", ErrNotDelivered, sh.id, ts)
	}
	sh.unacked = slices.Delete(sh.unacked, i, i+1)
	return nil
}

// RefOf returns where a delivered message is stored, for Ack.
func RefOf(m Message) Ref { return Ref{Shard: ShardID(m.Shard), Timestamp: m.Timestamp} }

// Position returns where to resume the subscription so that no message that was not
// acknowledged is missed: per shard, the oldest unacknowledged delivery, else the oldest
// message waiting to be delivered, else how far the shard was read. Messages acknowledged
// after an unacknowledged one of the same shard come again after a resume.
func (s *Subscription) Position() Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := Position{next: make([]uint64, len(s.shards))}
	for i, sh := range s.shards {
		p.next[i] = sh.positionLocked()
	}
	return p
}

func (sh *subShard) positionLocked() uint64 {
	p := sh.next
	if sh.tail && !sh.gap() {
		// Its next moves only when a commit matches; the feed knows how far every commit was
		// handed out (feed invariant 4).
		p = max(p, sh.sub.db.feeds[sh.id].delivered.Load())
	}
	if sh.gap() {
		p = min(p, sh.gapFrom)
	}
	if sh.loss != nil {
		p = min(p, sh.loss.From) // not reported yet: a resume reports it again
	}
	if len(sh.pending) > 0 {
		p = min(p, sh.pending[0].Timestamp)
	}
	if len(sh.unacked) > 0 {
		p = min(p, sh.unacked[0])
	}
	return p
}

// deliverable returns how many of the pending messages may be delivered: all of them, or with
// a gap still to read, those before it. REQUIRES: sub.mu held.
func (sh *subShard) deliverable() int {
	if !sh.gap() {
		return len(sh.pending)
	}
	return sh.beforeGap()
}

// beforeGap returns the number of pending messages below gapFrom (read before the gap, or
// from the gap already). REQUIRES: sub.mu held.
func (sh *subShard) beforeGap() int {
	i, _ := slices.BinarySearchFunc(sh.pending, sh.gapFrom, func(m *message.Message, ts uint64) int {
		return cmp.Compare(m.Timestamp, ts)
	})
	return i
}

// Close ends the subscription: a waiting Next returns ErrSubscriptionClosed. Its Position
// stays readable and still covers every message not acknowledged, delivered or not.
func (s *Subscription) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	close(s.done)
	var tails []*subShard
	for _, sh := range s.shards {
		if sh.tail {
			// Every matching message below delivered is in pending or below next (feed
			// invariant 4): keep how far the tail got for Position.
			sh.next = max(sh.next, s.db.feeds[sh.id].delivered.Load())
			sh.tail = false
			tails = append(tails, sh)
		}
	}
	s.mu.Unlock()
	for _, sh := range tails {
		s.db.feeds[sh.id].leave(sh)
	}
	s.db.subs.Lock()
	delete(s.db.subs.all, s)
	s.db.subs.Unlock()
	return nil
}

// offer hands sh messages of a commit, from the feed. It reports whether sh left the tail, in
// which case the feed must remove it (buffer full).
func (sh *subShard) offer(msgs []*message.Message) (left bool) {
	s := sh.sub
	s.mu.Lock()
	defer s.mu.Unlock()
	if !sh.tail {
		return false
	}
	i := 0
	for i < len(msgs) && msgs[i].Timestamp < sh.next {
		i++ // delivered before it joined (feed invariant 2)
	}
	msgs = msgs[i:]
	if len(msgs) == 0 {
		return false
	}
	if len(sh.pending)+len(msgs) > s.opts.Buffer {
		// Stop feeding it; it reads these from the storage, from next, when it takes messages
		// again.
		sh.leaveTailLocked()
		s.db.subStats.demoted.Add(1)
		s.signal() // a waiting Next reads them from the storage
		return true
	}
	sh.pending = append(sh.pending, msgs...)
	sh.next = max(sh.next, msgs[len(msgs)-1].Timestamp+1)
	s.signal()
	return false
}

// leaveTailLocked stops feeding sh. With a gap still to read, the fed messages after it are
// dropped (none was delivered) and sh reads on from the gap's start. REQUIRES: sub.mu held.
func (sh *subShard) leaveTailLocked() {
	sh.tail = false
	if sh.gap() {
		keep := sh.beforeGap()
		clear(sh.pending[keep:])
		sh.pending = sh.pending[:keep]
		sh.next = sh.gapFrom
		sh.gapFrom, sh.gapUntil = 0, 0
	}
}

// demote stops feeding sh (a gap in the shard's commits); it reads the storage from next. It
// reports whether sh was at the tail.
func (sh *subShard) demote() bool {
	sh.sub.mu.Lock()
	defer sh.sub.mu.Unlock()
	was := sh.tail
	sh.leaveTailLocked()
	if was {
		sh.sub.db.subStats.demoted.Add(1)
		sh.sub.signal()
	}
	return was
}
