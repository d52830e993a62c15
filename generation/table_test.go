package generation

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

var (
	lts    = layout.Params{Kind: stream.LayoutLTS, Thresholds: []int{100, 10}}
	ltsNil = layout.Params{Kind: stream.LayoutLTS} // default thresholds
	ref    = layout.Params{Kind: stream.LayoutReference}
)

// ids returns the generation IDs of t.
func ids(t Table) []stream.GenerationID {
	var out []stream.GenerationID
	for _, g := range t.Gens {
		out = append(out, g.ID)
	}
	return out
}

func TestTable(t *testing.T) {
	type op func(t *testing.T, tb *Table)
	add := func(since uint64, p layout.Params, wantID stream.GenerationID) op {
		return func(t *testing.T, tb *Table) {
			t.Helper()
			prev := tb.Current()
			g := tb.Add(since, p)
			require.True(t, g.ID == wantID && g.Since == since && g.Until == 0 && g.Current() && g.Layout.String() == p.String(),
				"Add(%d) = %v, want id %d", since, g, wantID)
			sealed, ok := tb.Get(prev.ID)
			require.True(t, ok && sealed.Until == since && !sealed.Current(), "Add(%d) left the previous generation %v", since, sealed)
			require.Equal(t, g.ID, tb.Current().ID, "Add(%d): current %v next %d", since, tb.Current(), tb.NextID)
			require.Equal(t, wantID+1, tb.NextID, "Add(%d): next ID", since)
		}
	}
	drop := func(id stream.GenerationID, want error) op {
		return func(t *testing.T, tb *Table) {
			t.Helper()
			before := tb.Clone()
			err := tb.Drop(id)
			if want == nil {
				require.NoError(t, err, "Drop(%d)", id)
			} else {
				require.ErrorIs(t, err, want, "Drop(%d)", id)
			}
			if err != nil {
				require.Equal(t, ids(before), ids(*tb), "a refused Drop(%d) changed the table", id)
			}
			if _, ok := tb.Get(id); err == nil {
				require.False(t, ok, "Drop(%d) left it in the table", id)
			}
		}
	}
	expect := func(want ...stream.GenerationID) op {
		return func(t *testing.T, tb *Table) {
			t.Helper()
			require.Equal(t, want, ids(*tb), "generations")
			require.NoError(t, tb.check())
		}
	}
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"new", []op{expect(1), drop(1, ErrCurrent), drop(2, ErrNotFound), drop(0, ErrNotFound)}},
		{"add seals and opens", []op{add(200, lts, 2), add(300, ref, 3), add(301, ltsNil, 4), expect(1, 2, 3, 4)}},
		{"drop sealed", []op{add(200, lts, 2), add(300, lts, 3), drop(2, nil), expect(1, 3), drop(1, nil), expect(3),
			drop(3, ErrCurrent), drop(2, ErrNotFound)}},
		{"IDs are never reused", []op{add(200, lts, 2), drop(1, nil), add(300, lts, 3), drop(2, nil), add(400, lts, 4), expect(3, 4)}},
		{"drop twice", []op{add(200, lts, 2), drop(1, nil), drop(1, ErrNotFound), expect(2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := New(100, lts)
			g := tb.Current()
			require.True(t, g.ID == 1 && g.Since == 100 && g.Current() && tb.NextID == 2, "New: %v next %d", g, tb.NextID)
			for _, o := range tc.ops {
				o(t, &tb)
			}
			// Whatever happened, the table round-trips.
			got, err := Decode(tb.AppendBinary(nil))
			require.NoError(t, err)
			require.Equal(t, tb.AppendBinary(nil), got.AppendBinary(nil), "round trip changed %v into %v", tb, got)
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	tb := New(100, lts)
	tb.Add(200, lts)
	tb.Add(300, lts)
	c := tb.Clone()
	require.NoError(t, c.Drop(1))
	c.Add(400, ref)
	require.Equal(t, []stream.GenerationID{1, 2, 3}, ids(tb), "changing the clone changed the original")
	require.Zero(t, tb.Current().Until, "changing the clone changed the original")
	require.Equal(t, stream.GenerationID(4), tb.NextID, "changing the clone changed the original")
}

func TestRotationDue(t *testing.T) {
	tb := New(1_000_000, lts) // since = 1 s
	for _, tc := range []struct {
		now  uint64
		span time.Duration
		want bool
	}{
		{1_000_000, time.Second, false},
		{1_999_999, time.Second, false},
		{2_000_000, time.Second, true}, // exactly span old
		{9_000_000, time.Second, true},
		{9_000_000, 0, false}, // disabled
		{9_000_000, -time.Second, false},
		{1_000_500, time.Millisecond / 2, true},
		{0, time.Second, false}, // a clock behind since
	} {
		require.Equal(t, tc.want, tb.RotationDue(tc.now, tc.span), "RotationDue(%d, %v)", tc.now, tc.span)
	}
	// After Add, the new current generation's Since counts.
	tb.Add(5_000_000, lts)
	require.False(t, tb.RotationDue(5_500_000, time.Second), "RotationDue does not follow the current generation")
	require.True(t, tb.RotationDue(6_000_000, time.Second), "RotationDue does not follow the current generation")
}

func TestExpired(t *testing.T) {
	tb := New(0, lts)
	tb.Add(10_000_000, lts) // gen 1: [0, 10s)
	tb.Add(20_000_000, lts) // gen 2: [10s, 20s)
	tb.Add(30_000_000, lts) // gen 3: [20s, 30s); gen 4 current
	for _, tc := range []struct {
		now       uint64
		retention time.Duration
		want      []stream.GenerationID
	}{
		{15_000_000, 5 * time.Second, nil},
		{15_000_001, 5 * time.Second, []stream.GenerationID{1}}, // strictly after until+retention
		{25_000_001, 5 * time.Second, []stream.GenerationID{1, 2}},
		{1 << 60, 5 * time.Second, []stream.GenerationID{1, 2, 3}}, // never the current one
		{1 << 60, 0, nil},
		{1 << 60, -time.Hour, nil},
		{0, time.Second, nil},
	} {
		got := tb.Expired(tc.now, tc.retention)
		require.True(t, slices.Equal(got, tc.want), "Expired(%d, %v) = %v, want %v", tc.now, tc.retention, got, tc.want)
	}
}

func TestInfoString(t *testing.T) {
	tb := New(1_700_000_000_000_000, lts)
	tb.Add(1_700_000_000_500_000, ref)
	want := []string{
		"gen 1 [2023-11-14T22:13:20.000000Z, 2023-11-14T22:13:20.500000Z) lts[100 10]",
		"gen 2 [2023-11-14T22:13:20.500000Z, now) reference",
	}
	for i, g := range tb.Gens {
		require.Equal(t, want[i], g.String())
	}
}

// randomTable builds a valid table by a random sequence of Add and Drop.
func randomTable(rng *rand.Rand) Table {
	params := []layout.Params{lts, ltsNil, ref, {Kind: stream.LayoutLTS, Thresholds: []int{1, 2, 3, layout.MaxThreshold}}}
	since := rng.Uint64N(1 << 50)
	tb := New(since, params[rng.IntN(len(params))])
	for range rng.IntN(12) {
		if rng.IntN(3) > 0 || len(tb.Gens) == 1 {
			since += 1 + rng.Uint64N(1<<40)
			tb.Add(since, params[rng.IntN(len(params))])
		} else {
			if err := tb.Drop(tb.Gens[rng.IntN(len(tb.Gens)-1)].ID); err != nil {
				panic(err)
			}
		}
	}
	return tb
}

func TestEncodingRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		tb := randomTable(rng)
		enc := tb.AppendBinary([]byte("prefix"))[len("prefix"):]
		got, err := Decode(enc)
		require.NoError(t, err, "%d: Decode", i)
		require.True(t, got.NextID == tb.NextID && len(got.Gens) == len(tb.Gens), "%d: decoded %+v, want %+v", i, got, tb)
		for j := range got.Gens {
			a, b := got.Gens[j], tb.Gens[j]
			require.True(t, a.ID == b.ID && a.Since == b.Since && a.Until == b.Until && a.Layout.String() == b.Layout.String(),
				"%d: generation %d decoded as %v, want %v", i, j, a, b)
		}
		require.Equal(t, enc, got.AppendBinary(nil), "%d: re-encoding differs", i)
	}
}

// encodeRaw writes a table without checking it, to build invalid ones.
func encodeRaw(version byte, next uint64, gens ...[3]uint64) []byte {
	b := []byte{version}
	b = binary.AppendUvarint(b, next)
	b = binary.AppendUvarint(b, uint64(len(gens)))
	for _, g := range gens {
		for _, v := range g {
			b = binary.AppendUvarint(b, v)
		}
		b = layout.AppendParams(b, lts)
	}
	return b
}

func TestDecodeRejects(t *testing.T) {
	valid := encodeRaw(1, 3, [3]uint64{1, 10, 20}, [3]uint64{2, 20, 0})
	_, err := Decode(valid)
	require.NoError(t, err, "valid table")
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version 0", encodeRaw(0, 2, [3]uint64{1, 10, 0})},
		{"version 2", encodeRaw(2, 2, [3]uint64{1, 10, 0})},
		{"no generations", encodeRaw(1, 2)},
		{"id 0", encodeRaw(1, 2, [3]uint64{0, 10, 0})},
		{"id not below next", encodeRaw(1, 2, [3]uint64{2, 10, 0})},
		{"next ID over u32", encodeRaw(1, 1<<32, [3]uint64{1, 10, 0})},
		{"last sealed", encodeRaw(1, 2, [3]uint64{1, 10, 20})},
		{"sealed with until == since", encodeRaw(1, 3, [3]uint64{1, 10, 10}, [3]uint64{2, 10, 0})},
		{"until < since", encodeRaw(1, 3, [3]uint64{1, 10, 5}, [3]uint64{2, 10, 0})},
		{"IDs out of order", encodeRaw(1, 3, [3]uint64{2, 10, 20}, [3]uint64{1, 20, 0})},
		{"duplicate ID", encodeRaw(1, 3, [3]uint64{1, 10, 20}, [3]uint64{1, 20, 0})},
		{"overlap", encodeRaw(1, 3, [3]uint64{1, 10, 20}, [3]uint64{2, 19, 0})},
		{"trailing byte", append(slices.Clone(valid), 0)},
		{"count larger than input", append(encodeRaw(1, 3)[:2], 100)},
		{"bad layout kind", append(encodeRaw(1, 2)[:2], 1, 1, 10, 0, 9, 0)},
		{"threshold 0", append(encodeRaw(1, 2)[:2], 1, 1, 10, 0, 1, 1, 0)},
		{"threshold too large", binary.AppendUvarint(append(encodeRaw(1, 2)[:2], 1, 1, 10, 0, 1, 1), layout.MaxThreshold+1)},
		// Not canonical: a non-minimal uvarint, and an LTS layout that lists no thresholds (the
		// encoder always writes them).
		{"non-minimal uvarint", append([]byte{1, 0x83, 0x00}, valid[2:]...)},
		{"lts without thresholds", append(encodeRaw(1, 2)[:2], 1, 1, 10, 0, 1, 0)},
	} {
		_, err := Decode(tc.b)
		require.ErrorIs(t, err, ErrCorrupt, "%s (%x)", tc.name, tc.b)
	}
}

// TestDecodeTruncated: every proper prefix of a valid encoding is refused as corrupt.
func TestDecodeTruncated(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		enc := randomTable(rng).AppendBinary(nil)
		for n := range len(enc) {
			_, err := Decode(enc[:n])
			require.ErrorIs(t, err, ErrCorrupt, "Decode of %d of %d bytes (%x)", n, len(enc), enc[:n])
		}
	}
}

func FuzzDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 8 {
		f.Add(randomTable(rng).AppendBinary(nil))
	}
	f.Add(encodeRaw(1, 3, [3]uint64{1, 10, 20}, [3]uint64{2, 20, 0}))
	f.Add([]byte{1, 0x82, 0x00, 1, 1, 10, 0, 1, 2, 100, 10})
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, err := Decode(b)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		got := tb.AppendBinary(nil)
		require.True(t, bytes.Equal(got, b), "decoded %+v re-encodes as %x, input %x", tb, got, b)
		require.NoError(t, tb.check())
		// A decoded table is usable.
		for _, g := range tb.Gens {
			_ = g.String()
			require.NoError(t, g.Layout.Validate())
		}
		_ = tb.Expired(1<<62, time.Hour)
		_ = tb.RotationDue(1<<62, time.Hour)
		c := tb.Clone()
		c.Add(c.Current().Since+1, lts)
		sealed := ids(c)
		for _, id := range sealed[:len(sealed)-1] {
			require.NoError(t, c.Drop(id), "drop %d", id)
		}
	})
}
