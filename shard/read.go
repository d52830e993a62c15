package shard

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Generations returns the shard's generation table as readers see it.
func (c *core) Generations() []generation.Info {
	v := c.view.Load()
	return append([]generation.Info(nil), v.table.Gens...)
}

// GenerationUsage is what a generation holds.
type GenerationUsage struct {
	// Messages stored in it (counted as they are applied; exact once they are durable), if
	// Counted: a generation created before counts existed has none.
	Messages uint64
	Counted  bool
	// DiskBytes is Pebble's estimate of the bytes its sstables and blob files take on disk
	// (messages and learned trie). Data still in memtables counts 0 until it is flushed.
	DiskBytes uint64
}

// GenerationUsage returns what generation gen holds.
func (c *core) GenerationUsage(gen stream.GenerationID) (GenerationUsage, error) {
	v := c.view.Load()
	n, ok := v.counts[gen]
	if !ok || c.isDropped(gen) {
		return GenerationUsage{}, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, c.id, gen)
	}
	var u GenerationUsage
	if n != nil {
		u.Messages, u.Counted = n.Load(), true
	}
	var err error
	u.DiskBytes, err = GenerationDiskBytes(c.db, c.prefix, gen)
	return u, err
}

// GenerationDiskBytes returns Pebble's estimate of the bytes a generation's keys take on disk
// (sstables and blob files; what is still in memtables counts 0).
func GenerationDiskBytes(db *pebble.DB, prefix []byte, gen stream.GenerationID) (uint64, error) {
	var total uint64
	for _, sp := range layout.GenerationSpans(prefix, gen) {
		n, err := db.EstimateDiskUsage(sp[0], sp[1])
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// Layout returns the layout of a generation, for inspection (ds-info, tests).
func (c *core) Layout(gen stream.GenerationID) (layout.Generation, bool) {
	l, ok := c.view.Load().gens[gen]
	return l, ok
}

// Streams returns the streams of every generation with Until > since (or current) whose pattern
// can match the filter levels, in read order.
func (c *core) Streams(filter []string, since uint64) []stream.Stream {
	v := c.view.Load()
	var out []stream.Stream
	for _, g := range v.table.Gens {
		if !g.Current() && g.Until <= since {
			continue
		}
		for _, si := range v.gens[g.ID].Streams(filter) {
			out = append(out, stream.Stream{
				Shard: c.id, Generation: g.ID, Layout: g.Layout.Kind, Key: si.Key, Pattern: si.Pattern,
			})
		}
	}
	return out
}

// Read appends to out up to max messages of it's stream that match filter (it.Filter split into
// levels), from position it.Next, and returns the position to resume from.
//
// An empty result with a nil error means no more messages yet. ErrEndOfStream means the
// generation is sealed and every message of the stream was returned; ErrGenerationNotFound that
// the generation does not exist (anymore).
func (c *core) Read(it stream.Iterator, filter []string, max int, out []message.Message) ([]message.Message, uint64, error) {
	v := c.view.Load()
	gen := it.Stream.Generation
	g, ok := v.table.Get(gen)
	if !ok || c.isDropped(gen) {
		return out, it.Next, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, c.id, gen)
	}
	l := v.gens[gen]
	if l.Params().Kind != it.Stream.Layout {
		return out, it.Next, fmt.Errorf("%w: stream %s has layout %s, generation has %s", ErrStreamNotFound, it.Stream, it.Stream.Layout, l.Params().Kind)
	}
	if _, ok := l.Stream(it.Stream.Key); !ok {
		return out, it.Next, fmt.Errorf("%w: %s", ErrStreamNotFound, it.Stream)
	}
	until := v.readLimit
	if !g.Current() {
		until = min(until, g.Until)
	}
	n := len(out)
	out, res, err := l.Read(c.db, layout.ReadRequest{
		Key: it.Stream.Key, Filter: filter, From: max64(it.Next, g.Since), Until: until, Max: max,
	}, out)
	if errors.Is(err, layout.ErrCorrupt) || pebble.IsCorruptionError(err) {
		return out[:n], it.Next, fmt.Errorf("%w: shard %d: %w", ErrCorruption, c.id, err)
	} else if err != nil {
		return out[:n], it.Next, fmt.Errorf("shard %d: %w", c.id, err)
	}
	// A drop that committed while we read may have hidden data behind its range deletion. Its
	// range deletion is visible before its view is published, so check the dropped set, which
	// the writer fills before it commits the drop.
	if c.isDropped(gen) {
		return out[:n], it.Next, fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, c.id, gen)
	}
	// The layout knows the stream, not the shard: stamp where each message is stored.
	for i := n; i < len(out); i++ {
		out[i].Shard = uint16(c.id)
	}
	next := max64(res.Next, it.Next)
	if res.Exhausted {
		// Everything below until was read: a merge of several streams may take the stream
		// as complete up to there, not just up to its last message.
		next = max64(next, until)
	}
	if len(out) == n && res.Exhausted && !g.Current() {
		return out, next, ErrEndOfStream
	}
	return out, next, nil
}

func max64(a, b uint64) uint64 { return max(a, b) }
