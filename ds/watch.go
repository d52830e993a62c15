package ds

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/strata-mq/strata/shard"
)

// ErrWatcherClosed: the watcher was closed (by Close, or because the DB closed).
var ErrWatcherClosed = errors.New("strata: watcher closed")

// Change is what a shard made readable since a Watcher's previous Next.
type Change struct {
	Shard ShardID
	// Until is the shard's read limit: every message below it is durable and readable.
	Until uint64
	// Streams are the streams that received messages, each with the timestamp of the newest
	// one, by generation and key. An iterator on one of them can read up to Until.
	Streams []StreamChange
	// Reset: the shard's state was replaced meanwhile (a replica recovered from a snapshot),
	// so any of its streams may have changed, listed in Streams or not: call Streams again.
	Reset bool
}

// StreamChange is a stream that received messages, and the timestamp of the newest one.
type StreamChange struct {
	Stream Stream
	Last   uint64
}

// Watcher tells a reader of iterators which streams received messages, as they become durable
// (embedded: after the WAL sync; on a replicated site: as its replica applies them, whichever
// site stored them). It is the push signal under the Iterator API: wait in Next, then read the
// streams it names. Subscriptions need no Watcher.
//
// Changes between two Next calls accumulate per stream, so a Watcher's memory is bounded by
// the streams that changed, however long its owner does not call Next. Safe for concurrent
// use.
type Watcher struct {
	db   *DB
	wake chan struct{} // capacity 1
	done chan struct{}
	mu   struct {
		sync.Mutex
		closed  bool
		pending map[ShardID]*pendingChange
	}
}

type pendingChange struct {
	until   uint64
	reset   bool
	streams map[[2]uint64]uint64 // (generation, key) → last timestamp
}

// Watch returns a Watcher of every shard's changes from now on. Close it when done.
func (db *DB) Watch() (*Watcher, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	w := &Watcher{db: db, wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.mu.pending = map[ShardID]*pendingChange{}
	db.watchers.Lock()
	db.watchers.all = append(slices.Clip(db.watchers.all), w)
	db.watchers.Unlock()
	return w, nil
}

// Next returns the changes since the previous call, one per shard that changed, waiting until
// there is one, ctx ends (its error), or the watcher or the DB closes (ErrWatcherClosed).
func (w *Watcher) Next(ctx context.Context) ([]Change, error) {
	for {
		w.mu.Lock()
		if w.mu.closed {
			w.mu.Unlock()
			return nil, ErrWatcherClosed
		}
		var pending map[ShardID]*pendingChange
		if len(w.mu.pending) > 0 {
			pending, w.mu.pending = w.mu.pending, map[ShardID]*pendingChange{}
		}
		w.mu.Unlock()
		if pending != nil {
			exit, err := w.db.enter()
			if err != nil {
				return nil, ErrWatcherClosed
			}
			defer exit()
			return w.resolve(pending), nil
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w.done:
			return nil, ErrWatcherClosed
		}
	}
}

// resolve turns stream keys into Streams. A stream whose generation was dropped meanwhile is
// left out.
func (w *Watcher) resolve(pending map[ShardID]*pendingChange) []Change {
	out := make([]Change, 0, len(pending))
	for id, p := range pending {
		c := Change{Shard: id, Until: p.until, Reset: p.reset}
		for gk, last := range p.streams {
			gen := GenerationID(gk[0])
			l, ok := w.db.shards[id].Layout(gen)
			if !ok {
				continue
			}
			si, ok := l.Stream(gk[1])
			if !ok {
				continue
			}
			c.Streams = append(c.Streams, StreamChange{
				Stream: Stream{Shard: id, Generation: gen, Layout: l.Params().Kind, Key: si.Key, Pattern: si.Pattern},
				Last:   last,
			})
		}
		slices.SortFunc(c.Streams, func(a, b StreamChange) int { return a.Stream.Compare(b.Stream) })
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Change) int { return cmp.Compare(a.Shard, b.Shard) })
	return out
}

// add records a durable step. It runs in the committing goroutine.
func (w *Watcher) add(d shard.Durable) {
	if len(d.Streams) == 0 && !d.Reset {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mu.closed {
		return
	}
	p := w.mu.pending[d.Shard]
	if p == nil {
		p = &pendingChange{streams: map[[2]uint64]uint64{}}
		w.mu.pending[d.Shard] = p
	}
	p.until = max(p.until, d.Until)
	p.reset = p.reset || d.Reset
	for _, st := range d.Streams {
		k := [2]uint64{uint64(st.Generation), st.Key}
		p.streams[k] = max(p.streams[k], st.Last)
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close stops the watcher; a waiting Next returns ErrWatcherClosed.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return nil
	}
	w.mu.closed = true
	w.mu.pending = nil
	close(w.done)
	w.mu.Unlock()
	db := w.db
	db.watchers.Lock()
	if i := slices.Index(db.watchers.all, w); i >= 0 {
		db.watchers.all = slices.Delete(slices.Clone(db.watchers.all), i, i+1)
	}
	db.watchers.Unlock()
	return nil
}
