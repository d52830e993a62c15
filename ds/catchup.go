package ds

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/strata-mq/strata/internal/message"
)

// catchUp reads one shard of a subscription that is behind the tail: one cursor per stream
// the filter can match, in every generation from the subscription's position on, merged by
// timestamp.
//
// # The merge bound
//
// A stream read up to `upto` holds no unread matching message below upto; a sealed stream
// read to its end holds none at all. listedAt is the shard's read limit loaded before the
// streams were listed, so every stream with a message below listedAt is among the cursors
// (a commit publishes its new streams before its read limit). Hence no message below
//
//	bound = min(listedAt, upto of every cursor not at its end)
//
// is missing from the cursors' buffers, and the buffered messages below bound can be
// delivered in timestamp order; the shard's position then moves to bound. Once the position
// reaches listedAt, the cursors are listed again under a new read limit, which finds new
// streams and generations; if the read limit did not move, the shard is caught up.
//
// Buffers persist between calls, so a stream read ahead of the others is not read twice.
type catchUp struct {
	cursors  []*cursor
	listedAt uint64    // 0: not listed yet
	reads    int       // storage reads (for the metrics)
	heap     []*cursor // the cursors with buffered messages, a min-heap (merge)
	dirty    bool      // heap must be rebuilt: cursors were removed
	gone     map[GenerationID]bool
}

// minRead and maxRead bound the messages read from one stream at a time: a shard's
// ReadBuffer is spread over its streams, so the messages buffered per shard stay near
// ReadBuffer however many streams the filter spans, and only the stream that limits the merge
// bound is read again.
const (
	minRead = 16
	maxRead = 1024
)

type cursor struct {
	it   Iterator
	buf  []message.Message
	upto uint64
	done bool // sealed and read to its end
}

func (c *catchUp) reset() { *c = catchUp{} }

// bound returns the merge bound (see the type's doc).
func (c *catchUp) bound() uint64 {
	b := c.listedAt
	for _, cu := range c.cursors {
		if !cu.done {
			b = min(b, cu.upto)
		}
	}
	return b
}

// fillResult is what one fill produced. The caller applies it even when fill also returns an
// error: the messages were taken from the cursors' buffers.
type fillResult struct {
	msgs     []*message.Message // in timestamp order, all below next
	next     uint64             // the shard's new position
	loss     *LossError
	caughtUp bool // nothing left to read below the read limit, which is next
}

// fill reads and merges until it has n messages, reaches until or the shard's read limit, or
// finds a loss, starting at position from.
func (c *catchUp) fill(sb ShardBackend, id ShardID, filter string, levels []string, from, until uint64, n, batch int) (fillResult, error) {
	res := fillResult{next: from}
	for len(res.msgs) < n {
		if res.next >= until {
			res.caughtUp = true
			return res, nil
		}
		if c.listedAt == 0 || c.bound() >= c.listedAt {
			if c.listedAt != 0 && until == math.MaxUint64 && res.next >= c.listedAt {
				// Read up to the listing's read limit. Commits that came meanwhile are the
				// tail's to deliver (catchUp joins with them as its gap): relisting for them
				// here could go on for as long as the shard takes commits.
				res.caughtUp = true
				return res, nil
			}
			limit, err := sb.ReadLimit()
			if err != nil {
				return res, err
			}
			if loss, err := c.list(sb, id, filter, levels, res.next, limit); err != nil || loss != nil {
				if loss != nil {
					res.next, res.loss = loss.Until, loss
				}
				return res, err
			}
		}
		per := min(maxRead, max(min(minRead, batch), batch/max(1, len(c.cursors))))
	read:
		for _, cu := range c.cursors {
			if cu.done || len(cu.buf) > 0 || cu.upto >= c.listedAt {
				continue
			}
			msgs, it, err := c.read(sb, cu.it, levels, per)
			switch {
			case errors.Is(err, ErrEndOfStream):
				cu.done = true
			case errors.Is(err, ErrGenerationNotFound):
				// Dropped under us. List again: the listing stops at the hole, and reports the
				// loss once the position reaches it (list).
				c.forget(cu.it.Stream.Generation)
				c.listedAt = 0
				break read // c.cursors changed under the loop
			case err != nil:
				return res, fmt.Errorf("shard %d: %w", id, err)
			}
			cu.buf, cu.it, cu.upto = msgs, it, it.Next
			if len(cu.buf) > 0 && !c.dirty {
				c.push(cu)
			}
		}
		if c.listedAt == 0 {
			continue
		}
		res.msgs, res.next = c.merge(min(c.bound(), until), n, res.msgs, res.next)
	}
	return res, nil
}

// read is one storage read of one stream.
func (c *catchUp) read(sb ShardBackend, it Iterator, levels []string, n int) ([]message.Message, Iterator, error) {
	c.reads++
	// A fresh array each time: the messages delivered point into it.
	msgs, next, err := sb.Read(it, levels, n, make([]message.Message, 0, n))
	it.Next = max(it.Next, next)
	return msgs, it, err
}

// list loads the streams of every generation from `from` on under read limit `limit`, adding
// cursors for the new ones.
//
// Generation IDs are consecutive, so a hole in the table is a dropped generation. If from lies
// in a hole, the messages from there to the next generation are lost: list reports it. A
// hole further on caps the listing at its start, so that the generations before it are read
// to their end before the loss is reported.
func (c *catchUp) list(sb ShardBackend, id ShardID, filter string, levels []string, from, limit uint64) (*LossError, error) {
	gens, err := sb.Generations()
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	listUntil, below := limit, GenerationID(math.MaxUint32) // cursors only for generations < below
	present := make(map[GenerationID]bool, len(gens))
	var prevID GenerationID
	var prevUntil uint64
	for _, g := range gens {
		if c.gone[g.ID] {
			continue // its drop is applied, not yet in the table readers see
		}
		if g.ID != prevID+1 && from < g.Since {
			if from >= prevUntil {
				n, _ := sb.DroppedMessages(g.ID - 1)
				c.forgetBelow(g.ID)
				c.listedAt = 0
				return &LossError{Shard: id, Generation: g.ID - 1, From: from, Until: g.Since, Messages: n}, nil
			}
			listUntil, below = min(limit, prevUntil), g.ID
			break
		}
		present[g.ID] = true
		prevID, prevUntil = g.ID, g.Until
	}
	// Cursors of generations gone from the table go; those beyond a hole wait behind the cap.
	c.filter(func(cu *cursor) bool { g := cu.it.Stream.Generation; return present[g] || g >= below })
	streams, err := sb.Streams(levels, from)
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	have := make(map[[2]uint64]bool, len(c.cursors))
	for _, cu := range c.cursors {
		have[[2]uint64{uint64(cu.it.Stream.Generation), cu.it.Stream.Key}] = true
	}
	for _, st := range streams {
		if st.Generation >= below || !present[st.Generation] || have[[2]uint64{uint64(st.Generation), st.Key}] {
			continue
		}
		// A stream not listed before holds no message below the previous listedAt (hence
		// none below from): reading it from from misses nothing.
		c.cursors = append(c.cursors, &cursor{it: Iterator{Stream: st, Filter: filter, Next: from}, upto: from})
	}
	c.listedAt = listUntil
	return nil, nil
}

// forget drops the cursors of a generation that was dropped, and remembers it as gone.
func (c *catchUp) forget(gen GenerationID) {
	if c.gone == nil {
		c.gone = map[GenerationID]bool{}
	}
	c.gone[gen] = true
	c.filter(func(cu *cursor) bool { return cu.it.Stream.Generation != gen })
}

// forgetBelow drops the cursors of generations before gen (a reported loss).
func (c *catchUp) forgetBelow(gen GenerationID) {
	c.filter(func(cu *cursor) bool { return cu.it.Stream.Generation >= gen })
}

func (c *catchUp) filter(keep func(*cursor) bool) {
	c.dirty = true
	live := c.cursors[:0]
	for _, cu := range c.cursors {
		if keep(cu) {
			live = append(live, cu)
		}
	}
	clear(c.cursors[len(live):])
	c.cursors = live
}

// merge appends to out, in timestamp order, buffered messages below bound until out holds n,
// and returns it with the new position: bound, or past the last message taken if n stopped
// it. The cursors with buffered messages form a min-heap on their first timestamp, kept
// between merges, so a message costs O(log cursors) however many streams the filter spans.
func (c *catchUp) merge(bound uint64, n int, out []*message.Message, pos uint64) ([]*message.Message, uint64) {
	if c.dirty {
		c.heap = c.heap[:0]
		for _, cu := range c.cursors {
			if len(cu.buf) > 0 {
				c.heap = append(c.heap, cu)
			}
		}
		for i := len(c.heap)/2 - 1; i >= 0; i-- {
			siftDown(c.heap, i)
		}
		c.dirty = false
	}
	h := c.heap
	for len(out) < n && len(h) > 0 && h[0].buf[0].Timestamp < bound {
		top := h[0]
		out = append(out, &top.buf[0])
		top.buf = top.buf[1:]
		if len(top.buf) == 0 {
			top.buf = nil
			h[0] = h[len(h)-1]
			h[len(h)-1] = nil
			h = h[:len(h)-1]
		}
		siftDown(h, 0)
	}
	c.heap = h
	if len(out) == n && n > 0 {
		pos = max(pos, out[len(out)-1].Timestamp+1)
	} else {
		pos = max(pos, bound)
	}
	// Cursors at their end with nothing buffered are finished.
	if c.finished() {
		c.filter(func(cu *cursor) bool { return !cu.done || len(cu.buf) > 0 })
	}
	return out, pos
}

// finished reports whether a cursor is at its end with nothing buffered.
func (c *catchUp) finished() bool {
	for _, cu := range c.cursors {
		if cu.done && len(cu.buf) == 0 {
			return true
		}
	}
	return false
}

// push adds a cursor whose buffer was refilled to the heap.
func (c *catchUp) push(cu *cursor) {
	c.heap = append(c.heap, cu)
	for i := len(c.heap) - 1; i > 0; {
		p := (i - 1) / 2
		if c.heap[p].buf[0].Timestamp <= c.heap[i].buf[0].Timestamp {
			break
		}
		c.heap[p], c.heap[i] = c.heap[i], c.heap[p]
		i = p
	}
}

// siftDown restores the heap order of h (by first buffered timestamp) below i.
func siftDown(h []*cursor, i int) {
	for {
		l, small := 2*i+1, i
		if l < len(h) && h[l].buf[0].Timestamp < h[small].buf[0].Timestamp {
			small = l
		}
		if r := l + 1; r < len(h) && h[r].buf[0].Timestamp < h[small].buf[0].Timestamp {
			small = r
		}
		if small == i {
			return
		}
		h[i], h[small] = h[small], h[i]
		i = small
	}
}

// catchUp reads the shard behind the tail into pending, and joins the tail once there is
// nothing left to read; or, for a shard that joined the tail with a gap, reads the gap into
// pending before the fed messages. It returns how many messages it added.
//
// Joining never fails for a commit that came meanwhile: the feed takes the shard at its own
// position and the gap is read here, so a shard behind a busy tail is not sent back to read
// again and again.
//
// REQUIRES: sub.readMu held; sh behind the tail or with a gap, and without an unreported loss.
func (sh *subShard) catchUp(n int) (int, error) {
	s := sh.sub
	db := s.db
	exit, err := db.enter() // the storage stays open while we read it
	if err != nil {
		return 0, ErrSubscriptionClosed
	}
	defer exit()
	s.mu.Lock()
	from, until, gap := sh.next, uint64(math.MaxUint64), sh.gap()
	if gap {
		from, until = sh.gapFrom, sh.gapUntil
	}
	s.mu.Unlock()
	reads := sh.cu.reads
	res, err := sh.cu.fill(db.shards[sh.id], sh.id, s.filter, s.levels, from, until, n, s.opts.ReadBuffer)
	db.subStats.reads.Add(uint64(sh.cu.reads - reads))
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return 0, ErrSubscriptionClosed
	}
	if res.loss != nil {
		sh.loss = res.loss
	}
	leave := false
	switch {
	case gap && sh.gap() && res.loss != nil:
		// A loss inside the gap: leave the tail (dropping the fed messages, none delivered),
		// deliver what came before the loss, report it, then read on after it.
		leave = true
		sh.leaveTailLocked()
		sh.pending = append(sh.pending, res.msgs...)
		sh.next = res.next
	case gap && sh.gap():
		// Still at the tail: the gap's messages come after those before it and before the
		// fed ones.
		sh.pending = slices.Insert(sh.pending, sh.beforeGap(), res.msgs...)
		sh.gapFrom = res.next
		if res.caughtUp || !sh.gap() {
			sh.gapFrom, sh.gapUntil = 0, 0
			sh.cu.reset()
		}
	case gap:
		// Demoted while we read: the fed messages went, next is the gap's start again.
		sh.pending = append(sh.pending, res.msgs...)
		sh.next = res.next
	default:
		sh.pending = append(sh.pending, res.msgs...)
		sh.next = res.next
	}
	s.mu.Unlock()
	if leave {
		db.feeds[sh.id].leave(sh)
	}
	if err != nil {
		if len(res.msgs) > 0 {
			return len(res.msgs), nil // the error comes back on the next read
		}
		return 0, err
	}
	if !gap && res.caughtUp && res.loss == nil && db.feeds[sh.id].join(sh, res.next) {
		s.mu.Lock()
		gap = sh.gap()
		s.mu.Unlock()
		if !gap {
			sh.cu.reset() // the cursors are needed no more; a gap reads on from them
		}
	}
	return len(res.msgs), nil
}
