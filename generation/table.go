// Package generation keeps a shard's generation table: the time slices [Since, Until) of the
// shard, the layout each one uses, and the rules for rotation and retention.
//
// The table is a plain value changed only by the shard's deterministic Apply, so every replica
// that applies the same commands holds the same table.
//
// # Invariants
//
//  1. Generations are sorted by ID; IDs strictly increase and are never reused, even after drops.
//  2. The last generation is the current one: Until == 0 (open). Every other has Until > 0 and
//     Until == the next generation's Since.
//  3. The current generation is never dropped.
//
// # Format (format version 1)
//
//	+-------------+---------------+------------+---------------------------------------------+
//	| version(u8) | nextID(uvar)  | count(uvar)| per generation: id(uvar) | since(uvar) |      |
//	|      1      |               |            | until(uvar) | layout params (package layout) |
//	+-------------+---------------+------------+---------------------------------------------+
package generation

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
)

// Errors returned by the table.
var (
	ErrNotFound = errors.New("generation not found")
	ErrCurrent  = errors.New("the current generation cannot be dropped")
	ErrCorrupt  = errors.New("corrupt generation table")
)

const formatVersion = 1

// Info describes one generation of a shard.
type Info struct {
	ID     stream.GenerationID
	Since  uint64 // µs, inclusive
	Until  uint64 // µs, exclusive; 0 while the generation is current
	Layout layout.Params
}

// Current reports whether the generation still takes writes.
func (g Info) Current() bool { return g.Until == 0 }

// String renders g as "gen 3 [since, until) lts[100 10]".
func (g Info) String() string {
	until := "now"
	if g.Until != 0 {
		until = FormatTS(g.Until)
	}
	return fmt.Sprintf("gen %d [%s, %s) %s", g.ID, FormatTS(g.Since), until, g.Layout)
}

// FormatTS renders a µs timestamp in UTC, RFC 3339 with microseconds.
func FormatTS(ts uint64) string {
	return time.UnixMicro(int64(ts)).UTC().Format("2006-01-02T15:04:05.000000Z")
}

// Table is the generation table of one shard.
type Table struct {
	Gens   []Info
	NextID stream.GenerationID
}

// New returns the table of a new shard with one generation starting at since.
func New(since uint64, p layout.Params) Table {
	return Table{Gens: []Info{{ID: 1, Since: since, Layout: p}}, NextID: 2}
}

// Clone returns a deep copy of t.
func (t Table) Clone() Table {
	c := Table{NextID: t.NextID, Gens: make([]Info, len(t.Gens))}
	copy(c.Gens, t.Gens)
	return c
}

// Current returns the current generation.
func (t Table) Current() Info { return t.Gens[len(t.Gens)-1] }

// Get returns the generation with the given ID.
func (t Table) Get(id stream.GenerationID) (Info, bool) {
	for _, g := range t.Gens {
		if g.ID == id {
			return g, true
		}
	}
	return Info{}, false
}

// Add seals the current generation at since and opens a new one from since, with params p.
// REQUIRES: since > the current generation's Since.
func (t *Table) Add(since uint64, p layout.Params) Info {
	t.Gens[len(t.Gens)-1].Until = since
	g := Info{ID: t.NextID, Since: since, Layout: p}
	t.Gens = append(t.Gens, g)
	t.NextID++
	return g
}

// Drop removes a sealed generation.
func (t *Table) Drop(id stream.GenerationID) error {
	for i, g := range t.Gens {
		if g.ID != id {
			continue
		}
		if g.Current() {
			return fmt.Errorf("%w: generation %d", ErrCurrent, id)
		}
		t.Gens = append(t.Gens[:i], t.Gens[i+1:]...)
		return nil
	}
	return fmt.Errorf("%w: generation %d", ErrNotFound, id)
}

// RotationDue reports whether the current generation is at least span old at now. A zero span
// disables rotation.
func (t Table) RotationDue(now uint64, span time.Duration) bool {
	return span > 0 && now >= t.Current().Since+uint64(span.Microseconds())
}

// Expired returns the sealed generations whose Until + retention < now. A non-positive retention
// keeps everything.
func (t Table) Expired(now uint64, retention time.Duration) []stream.GenerationID {
	if retention <= 0 {
		return nil
	}
	var out []stream.GenerationID
	for _, g := range t.Gens {
		if !g.Current() && g.Until+uint64(retention.Microseconds()) < now {
			out = append(out, g.ID)
		}
	}
	return out
}

// AppendBinary appends the encoding of t.
func (t Table) AppendBinary(dst []byte) []byte {
	dst = append(dst, formatVersion)
	dst = binary.AppendUvarint(dst, uint64(t.NextID))
	dst = binary.AppendUvarint(dst, uint64(len(t.Gens)))
	for _, g := range t.Gens {
		dst = binary.AppendUvarint(dst, uint64(g.ID))
		dst = binary.AppendUvarint(dst, g.Since)
		dst = binary.AppendUvarint(dst, g.Until)
		dst = layout.AppendParams(dst, g.Layout)
	}
	return dst
}

// Decode decodes what AppendBinary wrote and checks the table's invariants. It accepts only the
// bytes AppendBinary writes (minimal uvarints, thresholds spelled out), so every table has one
// encoding and a damaged one is not silently read as another.
func Decode(b []byte) (Table, error) {
	orig := b
	var t Table
	if len(b) == 0 || b[0] != formatVersion {
		return t, fmt.Errorf("%w: unknown version", ErrCorrupt)
	}
	b = b[1:]
	uv := func(what string) (uint64, error) {
		v, w := binary.Uvarint(b)
		if w <= 0 {
			return 0, fmt.Errorf("%w: %s", ErrCorrupt, what)
		}
		b = b[w:]
		return v, nil
	}
	next, err := uv("next ID")
	if err != nil {
		return t, err
	}
	n, err := uv("count")
	if err != nil {
		return t, err
	}
	if n == 0 || n > uint64(len(b)) || next > 1<<32-1 {
		return t, fmt.Errorf("%w: %d generations, next ID %d", ErrCorrupt, n, next)
	}
	t.NextID = stream.GenerationID(next)
	for i := uint64(0); i < n; i++ {
		var g Info
		id, err := uv("id")
		if err != nil {
			return t, err
		}
		if g.Since, err = uv("since"); err != nil {
			return t, err
		}
		if g.Until, err = uv("until"); err != nil {
			return t, err
		}
		if g.Layout, b, err = layout.DecodeParams(b); err != nil {
			return t, fmt.Errorf("%w: generation %d: %w", ErrCorrupt, id, err)
		}
		if id == 0 || id >= next {
			return t, fmt.Errorf("%w: generation ID %d with next ID %d", ErrCorrupt, id, next)
		}
		g.ID = stream.GenerationID(id)
		t.Gens = append(t.Gens, g)
	}
	if len(b) != 0 {
		return t, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(b))
	}
	if err := t.check(); err != nil {
		return t, err
	}
	if !bytes.Equal(t.AppendBinary(make([]byte, 0, len(orig))), orig) {
		return t, fmt.Errorf("%w: not in canonical form", ErrCorrupt)
	}
	return t, nil
}

func (t Table) check() error {
	for i, g := range t.Gens {
		last := i == len(t.Gens)-1
		switch {
		case last && g.Until != 0:
			return fmt.Errorf("%w: last generation %d is sealed", ErrCorrupt, g.ID)
		case !last && g.Until <= g.Since:
			return fmt.Errorf("%w: generation %d has until %d <= since %d", ErrCorrupt, g.ID, g.Until, g.Since)
		case i > 0 && (g.ID <= t.Gens[i-1].ID || g.Since < t.Gens[i-1].Until):
			return fmt.Errorf("%w: generation %d out of order", ErrCorrupt, g.ID)
		}
	}
	return nil
}
