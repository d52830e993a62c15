package ds

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/topic"
	"github.com/strata-mq/strata/shard"
)

// feed serves the subscriptions waiting at the tail of one shard (EMQX calls this a
// beamformer). Each durable commit of the shard reaches the feed once (Backend.WatchDurable);
// the feed matches its messages against the tail subscriptions' filters, grouped by filter,
// and hands every group its messages. Subscriptions at the tail thus share one pass over each
// commit, taken from memory as it becomes durable: no storage read at all, however many
// subscriptions wait. Subscriptions behind the tail read the storage on their own (catchUp)
// and join the feed once they reach it.
//
// # Invariants
//
//  1. pos is the Until of the last commit seen: every message below pos was offered to the
//     subscriptions that were at the tail when its commit arrived.
//  2. A subscription joins at the feed's pos (join): every message it wants is below the
//     position where its reading stopped, or in its gap between there and pos (which it
//     reads from the storage before the fed messages), or in a commit the feed has not seen
//     yet. Messages below its position that the feed still has queued are skipped by offer.
//  3. The feed never waits for a subscription: one whose buffer is full is demoted to read
//     the storage from where its buffer ends (offer), and so is every tail subscription when
//     a commit does not follow the previous one (a replica recovered from a snapshot).
//  4. delivered <= pos, and every message below delivered was handed to the subscriptions
//     that were at the tail when its commit arrived (or matched none). A tail subscription
//     with nothing pending or unacknowledged thus stands at delivered (Position).
//  5. Commits are matched in the committing goroutine (the shard's syncer or a replica's
//     apply), which only looks up the filter index and copies matched messages, and
//     delivered to subscriptions by the feed's own goroutine, in commit order.
type feed struct {
	shard ShardID
	stats *subStats

	mu struct {
		sync.Mutex
		pos     uint64
		busy    bool // run is handing out a queue it took
		index   topic.Index[*tailGroup]
		groups  map[string]*tailGroup
		queue   []feedEvent
		closed  bool
		matched []*tailGroup // scratch of onDurable
	}
	delivered atomic.Uint64 // invariant 4
	wake      chan struct{} // capacity 1: the queue is not empty
	done      chan struct{} // closed by close
	wg        sync.WaitGroup
}

// tailGroup is the tail subscriptions of one filter. subs is copied on write, so an event can
// keep the slice it was matched against.
type tailGroup struct {
	filter string
	subs   []*subShard
}

// feedEvent is one commit, as the feed's goroutine delivers it.
type feedEvent struct {
	until      uint64
	deliveries []groupDelivery
	demote     []*subShard // a gap: every tail subscription reads the storage again
}

type groupDelivery struct {
	group *tailGroup
	subs  []*subShard // group.subs when the commit was matched
	msgs  []*message.Message
}

func newFeed(id ShardID, pos uint64, stats *subStats) *feed {
	f := &feed{shard: id, stats: stats, wake: make(chan struct{}, 1), done: make(chan struct{})}
	f.mu.pos = pos
	f.delivered.Store(pos)
	f.mu.groups = map[string]*tailGroup{}
	f.wg.Add(1)
	go f.run()
	return f
}

// onDurable takes one commit of the shard. It runs in the committing goroutine.
func (f *feed) onDurable(d shard.Durable) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return
	}
	gap := d.Reset || d.From != f.mu.pos
	// Not max: after a gap (a replica's state replaced) the shard's read limit is d.Until,
	// and a subscription must be able to join at it.
	f.mu.pos = d.Until
	defer func() {
		// Nothing of this commit is queued for the tail: unless run still hands out earlier
		// commits (it moves delivered when it is done), everything below pos is delivered.
		if len(f.mu.queue) == 0 && !f.mu.busy {
			f.delivered.Store(f.mu.pos)
		}
	}()
	if len(f.mu.groups) == 0 {
		return
	}
	ev := feedEvent{until: d.Until}
	if gap {
		for _, g := range f.mu.groups {
			ev.demote = append(ev.demote, g.subs...)
		}
	} else {
		var at map[*tailGroup]int // group → index in ev.deliveries, once there are many
		find := func(g *tailGroup) int {
			if at != nil {
				if i, ok := at[g]; ok {
					return i
				}
				return -1
			}
			for i := range ev.deliveries {
				if ev.deliveries[i].group == g {
					return i
				}
			}
			return -1
		}
		for _, m := range d.Messages {
			f.mu.matched = f.mu.index.Match(m.Topic, f.mu.matched[:0])
			if len(f.mu.matched) == 0 {
				continue
			}
			if !d.Owned {
				m = message.Clone(m)
			}
			for _, g := range f.mu.matched {
				i := find(g)
				if i < 0 {
					i = len(ev.deliveries)
					ev.deliveries = append(ev.deliveries, groupDelivery{group: g, subs: g.subs})
					if at != nil {
						at[g] = i
					} else if i >= 8 {
						at = make(map[*tailGroup]int, 2*i)
						for j := range ev.deliveries {
							at[ev.deliveries[j].group] = j
						}
					}
				}
				ev.deliveries[i].msgs = append(ev.deliveries[i].msgs, m)
			}
		}
		if len(ev.deliveries) == 0 {
			return
		}
	}
	f.mu.queue = append(f.mu.queue, ev)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run delivers queued commits until close.
func (f *feed) run() {
	defer f.wg.Done()
	for {
		select {
		case <-f.wake:
		case <-f.done:
			return
		}
		f.mu.Lock()
		queue := f.mu.queue
		f.mu.queue, f.mu.busy = nil, true
		f.mu.Unlock()
		f.deliver(queue)
		f.mu.Lock()
		f.mu.busy = false
		if len(f.mu.queue) == 0 && !f.mu.closed {
			// Not after close: it dropped the queue, whose commits were never handed out.
			f.delivered.Store(f.mu.pos)
		}
		f.mu.Unlock()
	}
}

// deliver hands queued commits to their subscriptions, in order.
func (f *feed) deliver(queue []feedEvent) {
	for _, ev := range queue {
		for _, d := range ev.deliveries {
			for _, s := range d.subs {
				if s.offer(d.msgs) {
					f.leave(s)
				}
			}
			f.stats.fed.Add(uint64(len(d.msgs)))
		}
		for _, s := range ev.demote {
			if s.demote() {
				f.leave(s)
			}
		}
	}
}

// join adds s to the tail, where its reading stopped at pos, and marks it as fed. Commits
// that reached the feed after pos (pos < feed.pos) become s's gap, which s reads from the
// storage before the messages fed from now on (invariant 2). It reports whether s joined
// (not if the feed or the subscription is closed).
func (f *feed) join(s *subShard, pos uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return false
	}
	// Under f.mu, so that Close, which takes the subscription off the feed (leave, under
	// f.mu) once it is closed, finds it at the tail, or join finds it closed.
	s.sub.mu.Lock()
	if s.sub.mu.closed {
		s.sub.mu.Unlock()
		return false
	}
	s.tail = true
	if pos < f.mu.pos {
		s.gapFrom, s.gapUntil = pos, f.mu.pos
	}
	s.next = max(s.next, pos, f.mu.pos)
	s.sub.mu.Unlock()
	filter := s.sub.filter
	g := f.mu.groups[filter]
	if g == nil {
		g = &tailGroup{filter: filter}
		f.mu.groups[filter] = g
		f.mu.index.Set(filter, g)
	}
	// In place: a queued event holds the slice with its own length and never reads past it
	// (leave, which removes, copies).
	g.subs = append(g.subs, s)
	return true
}

// leave removes s from the tail (it was demoted, or its subscription closed).
func (f *feed) leave(s *subShard) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.mu.groups[s.sub.filter]
	if g == nil {
		return
	}
	i := slices.Index(g.subs, s)
	if i < 0 {
		return
	}
	subs := make([]*subShard, 0, len(g.subs)-1)
	subs = append(append(subs, g.subs[:i]...), g.subs[i+1:]...)
	g.subs = subs
	if len(subs) == 0 {
		delete(f.mu.groups, g.filter)
		f.mu.index.Delete(g.filter)
	}
}

// close stops the feed's goroutine. Subscriptions are closed by the DB.
func (f *feed) close() {
	f.mu.Lock()
	f.mu.closed = true
	f.mu.queue = nil
	f.mu.Unlock()
	close(f.done)
	f.wg.Wait()
}
