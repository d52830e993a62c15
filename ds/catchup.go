package ds

import (
	"errors"
	"fmt"
	"math"

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
	listedAt uint64 // 0: not listed yet
	reads    int    // storage reads (for the metrics)
}

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

// fillResult is what one fill produced.
type fillResult struct {
	msgs     []*message.Message // in timestamp order, all below next
	next     uint64             // the shard's new position
	loss     *LossError
	caughtUp bool // nothing to read below the read limit, which is next
}

// fill reads and merges until it has messages (at most n), reaches the shard's read limit,
// or finds a loss, starting at position from.
func (c *catchUp) fill(sb ShardBackend, id ShardID, filter string, levels []string, from uint64, n, batch int) (fillResult, error) {
	res := fillResult{next: from}
	for {
		if c.listedAt == 0 || c.bound() >= c.listedAt {
			limit, err := sb.ReadLimit()
			if err != nil {
				return res, err
			}
			if c.listedAt != 0 && limit == c.listedAt && res.next >= limit {
				res.caughtUp = true
				return res, nil
			}
			if loss, err := c.list(sb, id, filter, levels, res.next, limit); err != nil || loss != nil {
				if loss != nil {
					res.next, res.loss = loss.Until, loss
				}
				return res, err
			}
		}
		for _, cu := range c.cursors {
			if cu.done || len(cu.buf) > 0 || cu.upto >= c.listedAt {
				continue
			}
			msgs, it, err := c.read(sb, cu.it, levels, batch)
			switch {
			case errors.Is(err, ErrEndOfStream):
				cu.done = true
			case errors.Is(err, ErrGenerationNotFound):
				loss, err := c.dropped(sb, id, cu.it.Stream.Generation, res.next)
				if err != nil {
					return res, err
				}
				res.next, res.loss = loss.Until, loss
				return res, nil
			case err != nil:
				return res, fmt.Errorf("shard %d: %w", id, err)
			}
			cu.buf, cu.it, cu.upto = msgs, it, it.Next
		}
		bound := c.bound()
		res.msgs, res.next = c.merge(bound, n, res.next)
		if len(res.msgs) > 0 {
			return res, nil
		}
	}
}

// read is one storage read of one stream.
func (c *catchUp) read(sb ShardBackend, it Iterator, levels []string, n int) ([]message.Message, Iterator, error) {
	c.reads++
	msgs, next, err := sb.Read(it, levels, n, nil)
	it.Next = max(it.Next, next)
	return msgs, it, err
}

// list loads the streams of every generation from `from` on under read limit `limit`, adding
// cursors for the new ones. It reports a loss if generations between from and the oldest
// one left were dropped.
func (c *catchUp) list(sb ShardBackend, id ShardID, filter string, levels []string, from, limit uint64) (*LossError, error) {
	gens, err := sb.Generations()
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	if len(gens) > 0 && from < gens[0].Since && gens[0].ID > 1 {
		// Generations before the oldest were dropped, and from lies in them (a position that
		// waited longer than the retention).
		prev := gens[0].ID - 1
		n, _ := sb.DroppedMessages(prev)
		c.reset()
		return &LossError{Shard: id, Generation: prev, From: from, Until: gens[0].Since, Messages: n}, nil
	}
	streams, err := sb.Streams(levels, from)
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	have := make(map[[2]uint64]bool, len(c.cursors))
	for _, cu := range c.cursors {
		have[[2]uint64{uint64(cu.it.Stream.Generation), cu.it.Stream.Key}] = true
	}
	for _, st := range streams {
		if have[[2]uint64{uint64(st.Generation), st.Key}] {
			continue
		}
		// A stream not listed before holds no message below the previous listedAt (hence
		// none below from): reading it from from misses nothing.
		c.cursors = append(c.cursors, &cursor{it: Iterator{Stream: st, Filter: filter, Next: from}, upto: from})
	}
	c.listedAt = limit
	return nil, nil
}

// dropped handles a generation that was dropped under a cursor: the cursors of it and of
// older generations go, and the loss runs from the position to the next generation's start.
func (c *catchUp) dropped(sb ShardBackend, id ShardID, gen GenerationID, from uint64) (*LossError, error) {
	gens, err := sb.Generations()
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	until, err := sb.ReadLimit()
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", id, err)
	}
	for _, g := range gens {
		if g.ID > gen {
			until = g.Since
			break
		}
	}
	n, _ := sb.DroppedMessages(gen)
	c.reset()
	return &LossError{Shard: id, Generation: gen, From: from, Until: max(until, from), Messages: n}, nil
}

// merge takes from the buffers, in timestamp order, up to n messages below bound, and returns
// them with the new position: bound, or past the last message taken if n stopped it.
func (c *catchUp) merge(bound uint64, n int, pos uint64) ([]*message.Message, uint64) {
	var out []*message.Message
	for len(out) < n {
		var best *cursor
		bestTS := uint64(math.MaxUint64)
		for _, cu := range c.cursors {
			if len(cu.buf) > 0 && cu.buf[0].Timestamp < bestTS {
				best, bestTS = cu, cu.buf[0].Timestamp
			}
		}
		if best == nil || bestTS >= bound {
			break
		}
		out = append(out, &best.buf[0])
		best.buf = best.buf[1:]
	}
	if len(out) == n && n > 0 {
		pos = max(pos, out[len(out)-1].Timestamp+1)
	} else {
		pos = max(pos, bound)
	}
	// Cursors at their end with nothing buffered are finished.
	live := c.cursors[:0]
	for _, cu := range c.cursors {
		if !cu.done || len(cu.buf) > 0 {
			live = append(live, cu)
		}
	}
	clear(c.cursors[len(live):])
	c.cursors = live
	return out, pos
}

// catchUp reads the shard behind the tail into pending, or joins the tail once there is
// nothing left to read. It returns how many messages it added. REQUIRES: sub.readMu held,
// sh not at the tail.
func (sh *subShard) catchUp(n int) (int, error) {
	s := sh.sub
	db := s.db
	exit, err := db.enter() // the storage stays open while we read it
	if err != nil {
		return 0, ErrSubscriptionClosed
	}
	defer exit()
	s.mu.Lock()
	from := sh.next
	s.mu.Unlock()
	for {
		reads := sh.cu.reads
		res, err := sh.cu.fill(db.shards[sh.id], sh.id, s.filter, s.levels, from, n, s.opts.ReadBatch)
		db.subStats.reads.Add(uint64(sh.cu.reads - reads))
		if err != nil {
			return 0, err
		}
		s.mu.Lock()
		if s.mu.closed {
			s.mu.Unlock()
			return 0, ErrSubscriptionClosed
		}
		sh.pending = append(sh.pending, res.msgs...)
		sh.next = res.next
		if res.loss != nil {
			s.mu.losses = append(s.mu.losses, res.loss)
			db.subStats.losses.Add(1)
		}
		s.mu.Unlock()
		if len(res.msgs) > 0 || res.loss != nil {
			return len(res.msgs), nil
		}
		if db.feeds[sh.id].join(sh, res.next) {
			sh.cu.reset()
			return 0, nil
		}
		from = res.next // the feed moved on while we read: read the rest
	}
}
