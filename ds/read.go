package ds

import (
	"context"
	"fmt"
	"time"

	"github.com/strata-mq/strata/internal/topic"
)

// Streams returns every stream, over all shards and all generations that end after since, whose
// learned pattern can match filter, ordered by shard, then generation, then key. Read the
// streams of one shard in that order: a generation's messages all precede the next one's.
func (db *DB) Streams(filter string, since time.Time) ([]Stream, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	if err := topic.ValidateFilter(filter); err != nil {
		return nil, err
	}
	levels := topic.Split(filter)
	var out []Stream
	for _, s := range db.shards {
		streams, err := s.Streams(levels, Micros(since))
		if err != nil {
			return nil, err
		}
		out = append(out, streams...)
	}
	return out, nil
}

// Iterator returns a cursor over the messages of s that match filter, starting at the first
// with a timestamp at or after since.
func (db *DB) Iterator(s Stream, filter string, since time.Time) (Iterator, error) {
	exit, err := db.enter()
	if err != nil {
		return Iterator{}, err
	}
	defer exit()
	if err := topic.ValidateFilter(filter); err != nil {
		return Iterator{}, err
	}
	if int(s.Shard) >= len(db.shards) {
		return Iterator{}, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, s.Shard, len(db.shards))
	}
	return Iterator{Stream: s, Filter: filter, Next: Micros(since)}, nil
}

// Next returns up to max messages from it, in timestamp order, and the advanced iterator.
//
//   - A non-empty batch: more may follow; call Next again with the returned iterator.
//   - An empty batch and a nil error: no more messages yet. Wait (a timer, or a signal from the
//     broker's own publish path; StreamsChanged fires only for new streams) and call again.
//   - ErrEndOfStream: the generation is sealed and everything was read; call Streams for the
//     streams of later generations.
//   - ErrGenerationNotFound: the generation was dropped (retention); its messages are gone.
//
// Next never returns a message that is not yet durable. The returned iterator is a new value;
// it is never modified afterwards, so a caller may keep the old one to retry a batch.
func (db *DB) Next(ctx context.Context, it Iterator, max int) ([]Message, Iterator, error) {
	exit, err := db.enter()
	if err != nil {
		return nil, it, err
	}
	defer exit()
	if err := ctx.Err(); err != nil {
		return nil, it, err
	}
	if max <= 0 {
		return nil, it, fmt.Errorf("%w: Next with max %d", ErrInvalidIterator, max)
	}
	if err := topic.ValidateFilter(it.Filter); err != nil {
		return nil, it, fmt.Errorf("%w: %w", ErrInvalidIterator, err)
	}
	if int(it.Stream.Shard) >= len(db.shards) {
		return nil, it, fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, it.Stream.Shard, len(db.shards))
	}
	msgs, next, err := db.shards[it.Stream.Shard].Read(it, topic.Split(it.Filter), max, nil)
	it.Next = next
	return msgs, it, err
}
