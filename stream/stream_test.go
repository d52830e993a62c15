package stream_test

import (
	"bytes"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

var (
	_ encoding.BinaryMarshaler   = stream.Stream{}
	_ encoding.BinaryAppender    = stream.Stream{}
	_ encoding.BinaryUnmarshaler = (*stream.Stream)(nil)
	_ encoding.BinaryMarshaler   = stream.Iterator{}
	_ encoding.BinaryAppender    = stream.Iterator{}
	_ encoding.BinaryUnmarshaler = (*stream.Iterator)(nil)
)

// equal fails the test unless want and got are deeply equal. ctx, if any, is
// a format string and its arguments.
func equal(t testing.TB, want, got any, ctx ...any) {
	t.Helper()
	require.Equal(t, want, got, ctx...)
}

func noErr(t testing.TB, err error) {
	t.Helper()
	require.NoError(t, err, "unexpected error")
}

// isInvalid fails the test unless err wraps ErrInvalid.
func isInvalid(t testing.TB, err error, ctx ...any) {
	t.Helper()
	require.ErrorIs(t, err, stream.ErrInvalid, ctx...)
}

var (
	goldenStream = stream.Stream{
		Shard:      3,
		Generation: 7,
		Layout:     stream.LayoutLTS,
		Key:        42,
		Pattern:    "sensor/+/temp",
	}
	goldenIterator = stream.Iterator{
		Stream: stream.Stream{
			Shard:      0x0102,
			Generation: 0x03040506,
			Layout:     stream.LayoutReference,
			Key:        0x0708090a0b0c0d0e,
			Pattern:    "#",
		},
		Filter: "sensor/ü/#",
		Next:   1_700_000_000_000_000,
	}
)

func streamFixtures() map[string]stream.Stream {
	return map[string]stream.Stream{
		"golden":      goldenStream,
		"min":         {Layout: stream.LayoutLTS},
		"reference":   {Shard: 1, Generation: 1, Layout: stream.LayoutReference, Pattern: "#"},
		"max ints":    {Shard: 0xffff, Generation: 0xffffffff, Layout: stream.LayoutLTS, Key: ^uint64(0), Pattern: "+/+"},
		"unicode":     {Shard: 9, Generation: 2, Layout: stream.LayoutLTS, Key: 1 << 40, Pattern: "温度/+/🌡"},
		"pattern 127": {Layout: stream.LayoutLTS, Pattern: strings.Repeat("a", 127)},
		"pattern 128": {Layout: stream.LayoutLTS, Pattern: strings.Repeat("b", 128)},
		"pattern max": {Layout: stream.LayoutLTS, Pattern: strings.Repeat("c", 65535)},
	}
}

func iteratorFixtures() map[string]stream.Iterator {
	m := map[string]stream.Iterator{
		"golden":     goldenIterator,
		"zero next":  {Stream: goldenStream, Filter: "sensor/+/temp"},
		"max next":   {Stream: goldenStream, Filter: "#", Next: ^uint64(0)},
		"no filter":  {Stream: goldenStream},
		"filter max": {Stream: goldenStream, Filter: strings.Repeat("f", 65535), Next: 5},
	}
	for name, s := range streamFixtures() {
		m["stream "+name] = stream.Iterator{Stream: s, Filter: "a/b", Next: 99}
	}
	return m
}

func randString(r *rand.Rand) string {
	alphabet := []rune("abc/+#ü温🌡\x00")
	var n int
	switch r.IntN(6) {
	case 0:
		n = 0
	case 1:
		n = 40 + r.IntN(60) // crosses the one-byte uvarint limit in bytes
	default:
		n = r.IntN(12)
	}
	var sb strings.Builder
	for range n {
		sb.WriteRune(alphabet[r.IntN(len(alphabet))])
	}
	return sb.String()
}

func randStream(r *rand.Rand) stream.Stream {
	return stream.Stream{
		Shard:      stream.ShardID(r.Uint32()),
		Generation: stream.GenerationID(r.Uint32()),
		Layout:     stream.LayoutKind(1 + r.IntN(2)),
		Key:        r.Uint64() >> r.IntN(64),
		Pattern:    randString(r),
	}
}

func randIterator(r *rand.Rand) stream.Iterator {
	return stream.Iterator{Stream: randStream(r), Filter: randString(r), Next: r.Uint64() >> r.IntN(64)}
}

func mustMarshal(t testing.TB, v encoding.BinaryMarshaler) []byte {
	t.Helper()
	b, err := v.MarshalBinary()
	noErr(t, err)
	return b
}

func roundTripStream(t *testing.T, s stream.Stream) {
	t.Helper()
	b := mustMarshal(t, s)
	appended, err := s.AppendBinary([]byte("prefix"))
	noErr(t, err)
	equal(t, append([]byte("prefix"), b...), appended, "AppendBinary")

	var got stream.Stream
	noErr(t, got.UnmarshalBinary(b))
	equal(t, s, got)
}

func roundTripIterator(t *testing.T, it stream.Iterator) {
	t.Helper()
	b := mustMarshal(t, it)
	appended, err := it.AppendBinary([]byte("prefix"))
	noErr(t, err)
	equal(t, append([]byte("prefix"), b...), appended, "AppendBinary")

	var got stream.Iterator
	noErr(t, got.UnmarshalBinary(b))
	equal(t, it, got)
}

func TestRoundTrip(t *testing.T) {
	for name, s := range streamFixtures() {
		t.Run("stream "+name, func(t *testing.T) { roundTripStream(t, s) })
	}
	for name, it := range iteratorFixtures() {
		t.Run("iterator "+name, func(t *testing.T) { roundTripIterator(t, it) })
	}
}

func TestRoundTripRandom(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 0xdeadbeef} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, seed))
			for range 500 {
				roundTripStream(t, randStream(r))
				roundTripIterator(t, randIterator(r))
			}
		})
	}
}

// TestUnmarshalDoesNotAlias overwrites the input after decoding and checks
// that the decoded strings are unaffected.
func TestUnmarshalDoesNotAlias(t *testing.T) {
	b := mustMarshal(t, goldenIterator)
	var got stream.Iterator
	noErr(t, got.UnmarshalBinary(b))
	clear(b)
	equal(t, goldenIterator, got)
}

func TestGolden(t *testing.T) {
	cases := []struct {
		file  string
		value encoding.BinaryMarshaler
		into  encoding.BinaryUnmarshaler
		want  any
	}{
		{"stream-v1.golden", goldenStream, new(stream.Stream), &goldenStream},
		{"iterator-v1.golden", goldenIterator, new(stream.Iterator), &goldenIterator},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			enc := mustMarshal(t, tc.value)
			if testutil.Rewriting() {
				noErr(t, os.WriteFile(path, []byte(hex.EncodeToString(enc)+"\n"), 0o644))
			}
			text, err := os.ReadFile(path)
			noErr(t, err)
			golden, err := hex.DecodeString(strings.TrimSpace(string(text)))
			noErr(t, err)
			// Both directions: today's encoder must produce the pinned
			// bytes, and today's decoder must read them, because these bytes
			// are already stored in brokers' sessions.
			require.True(t, bytes.Equal(golden, enc),
				"encoding changed; a format change needs a new version (or -rewrite if intended)\ngolden: %x\n   now: %x", golden, enc)
			noErr(t, tc.into.UnmarshalBinary(golden))
			equal(t, tc.want, tc.into)
		})
	}
}

// TestLayout spells out the golden Stream field by field, so that the
// documented format and the code cannot drift apart.
func TestLayout(t *testing.T) {
	want := "53" + // magic 'S'
		"01" + // version
		"0003" + // shard
		"00000007" + // generation
		"000000000000002a" + // key
		"01" + // layout LTS
		"0d" + hex.EncodeToString([]byte("sensor/+/temp")) // pattern
	b := mustMarshal(t, goldenStream)
	equal(t, want, hex.EncodeToString(b[:len(b)-4]))
	equal(t, crc32.Checksum(b[:len(b)-4], crc32.MakeTable(crc32.Castagnoli)), binary.BigEndian.Uint32(b[len(b)-4:]))

	it := mustMarshal(t, stream.Iterator{Stream: goldenStream, Filter: "a/#", Next: 0x0102030405060708})
	want = "49" + // magic 'I'
		want[2:] + // same stream fields
		"03" + hex.EncodeToString([]byte("a/#")) + // filter
		"0102030405060708" // next
	equal(t, want, hex.EncodeToString(it[:len(it)-4]))
}

// encodings returns valid encodings of every fixture, named.
func encodings(t testing.TB) map[string][]byte {
	m := map[string][]byte{}
	for name, s := range streamFixtures() {
		m["stream "+name] = mustMarshal(t, s)
	}
	for name, it := range iteratorFixtures() {
		m["iterator "+name] = mustMarshal(t, it)
	}
	return m
}

// unmarshal decodes b as the kind its name says it is.
func unmarshal(name string, b []byte) error {
	if strings.HasPrefix(name, "stream") {
		return new(stream.Stream).UnmarshalBinary(b)
	}
	return new(stream.Iterator).UnmarshalBinary(b)
}

func TestTruncation(t *testing.T) {
	for name, b := range encodings(t) {
		if len(b) > 1000 {
			continue // the short fixtures cover every field boundary
		}
		for n := range len(b) {
			isInvalid(t, unmarshal(name, b[:n]), "%s truncated to %d/%d bytes", name, n, len(b))
		}
	}
}

func TestBitFlips(t *testing.T) {
	for name, b := range encodings(t) {
		if len(b) > 1000 {
			continue
		}
		for i := range len(b) * 8 {
			c := slices.Clone(b)
			c[i/8] ^= 1 << (i % 8)
			isInvalid(t, unmarshal(name, c), "%s with bit %d flipped", name, i)
		}
	}
}

func TestTrailingBytes(t *testing.T) {
	for name, b := range encodings(t) {
		for _, tail := range [][]byte{{0}, {0xff}, {1, 2, 3, 4}} {
			isInvalid(t, unmarshal(name, append(slices.Clone(b), tail...)), "%s + %x", name, tail)
		}
	}
}

// TestNotInterchangeable checks that an encoded Stream never decodes as an
// Iterator, nor the reverse.
func TestNotInterchangeable(t *testing.T) {
	s := mustMarshal(t, goldenStream)
	it := mustMarshal(t, goldenIterator)
	isInvalid(t, new(stream.Iterator).UnmarshalBinary(s))
	isInvalid(t, new(stream.Stream).UnmarshalBinary(it))
}

// rechecksum replaces the CRC of an encoding (or appends one, if body has
// none) so that a test can reach the field checks behind the checksum.
func rechecksum(body []byte) []byte {
	return binary.BigEndian.AppendUint32(slices.Clone(body), crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
}

func withoutCRC(b []byte) []byte { return slices.Clone(b[:len(b)-4]) }

// TestInvalidBehindChecksum feeds inputs whose checksum is right but whose
// content is not, one per rule the decoder enforces after the checksum.
func TestInvalidBehindChecksum(t *testing.T) {
	hdrS := []byte{'S', 1}
	hdrI := []byte{'I', 1}
	fixed := func(layout byte) []byte {
		return append(make([]byte, 14), layout) // shard, generation, key = 0
	}
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	validStreamBody := cat(fixed(1), []byte{1, '#'})
	next := make([]byte, 8)

	cases := map[string]struct {
		iterator bool
		body     []byte
	}{
		"layout 0":              {false, cat(hdrS, fixed(0), []byte{0})},
		"layout 3":              {false, cat(hdrS, fixed(3), []byte{0})},
		"layout 255":            {false, cat(hdrS, fixed(255), []byte{0})},
		"fixed fields short":    {false, cat(hdrS, fixed(1)[:10])},
		"pattern len missing":   {false, cat(hdrS, fixed(1))},
		"pattern past end":      {false, cat(hdrS, fixed(1), []byte{5, 'a'})},
		"pattern len huge":      {false, cat(hdrS, fixed(1), binary.AppendUvarint(nil, 1<<62))},
		"pattern len overflow":  {false, cat(hdrS, fixed(1), bytes.Repeat([]byte{0xff}, 10), []byte{1})},
		"pattern too long":      {false, cat(hdrS, fixed(1), binary.AppendUvarint(nil, 65536), make([]byte, 65536))},
		"pattern non-minimal":   {false, cat(hdrS, fixed(1), []byte{0x81, 0x00, 'a'})},
		"pattern bad UTF-8":     {false, cat(hdrS, fixed(1), []byte{2, 0xc3, 0x28})},
		"stream trailing":       {false, cat(hdrS, validStreamBody, []byte{0})},
		"stream version 2":      {false, cat([]byte{'S', 2}, validStreamBody)},
		"stream version 0":      {false, cat([]byte{'S', 0}, validStreamBody)},
		"iterator layout 0":     {true, cat(hdrI, fixed(0), []byte{0}, []byte{0}, next)},
		"filter len missing":    {true, cat(hdrI, validStreamBody)},
		"filter past end":       {true, cat(hdrI, validStreamBody, []byte{9}, next)},
		"filter too long":       {true, cat(hdrI, validStreamBody, binary.AppendUvarint(nil, 65536), make([]byte, 65536), next)},
		"filter non-minimal":    {true, cat(hdrI, validStreamBody, []byte{0x80, 0x00}, next)},
		"filter bad UTF-8":      {true, cat(hdrI, validStreamBody, []byte{1, 0xff}, next)},
		"next missing":          {true, cat(hdrI, validStreamBody, []byte{0})},
		"next short":            {true, cat(hdrI, validStreamBody, []byte{0}, next[:7])},
		"iterator trailing":     {true, cat(hdrI, validStreamBody, []byte{0}, next, []byte{0})},
		"iterator version 2":    {true, cat([]byte{'I', 2}, validStreamBody, []byte{0}, next)},
		"stream as iterator":    {true, cat(hdrS, validStreamBody)},
		"iterator as stream":    {false, cat(hdrI, validStreamBody, []byte{0}, next)},
		"bad magic for stream":  {false, cat([]byte{'s', 1}, validStreamBody)},
		"bad magic for iter":    {true, cat([]byte{0, 1}, validStreamBody, []byte{0}, next)},
		"header only, stream":   {false, hdrS},
		"header only, iterator": {true, hdrI},
	}
	// The valid bodies the cases are derived from must themselves decode, or
	// the cases would prove nothing.
	noErr(t, new(stream.Stream).UnmarshalBinary(rechecksum(cat(hdrS, validStreamBody))))
	noErr(t, new(stream.Iterator).UnmarshalBinary(rechecksum(cat(hdrI, validStreamBody, []byte{0}, next))))

	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := rechecksum(tc.body)
			if tc.iterator {
				it := goldenIterator
				isInvalid(t, it.UnmarshalBinary(b))
				equal(t, goldenIterator, it, "receiver changed on error")
			} else {
				s := goldenStream
				isInvalid(t, s.UnmarshalBinary(b))
				equal(t, goldenStream, s, "receiver changed on error")
			}
		})
	}
}

func TestUnmarshalEmpty(t *testing.T) {
	isInvalid(t, new(stream.Stream).UnmarshalBinary(nil))
	isInvalid(t, new(stream.Iterator).UnmarshalBinary(nil))
	isInvalid(t, new(stream.Stream).UnmarshalBinary([]byte{}))
}

func TestMarshalInvalid(t *testing.T) {
	streams := map[string]stream.Stream{
		"zero":             {},
		"layout 3":         {Layout: 3},
		"layout 255":       {Layout: 255},
		"pattern bad UTF8": {Layout: stream.LayoutLTS, Pattern: "a\xffb"},
		"pattern too long": {Layout: stream.LayoutLTS, Pattern: strings.Repeat("x", 65536)},
	}
	for name, s := range streams {
		t.Run("stream "+name, func(t *testing.T) {
			_, err := s.MarshalBinary()
			isInvalid(t, err)
			dst, err := s.AppendBinary([]byte("keep"))
			isInvalid(t, err)
			equal(t, []byte("keep"), dst, "dst changed on error")

			_, err = stream.Iterator{Stream: s}.MarshalBinary()
			isInvalid(t, err)
		})
	}
	iterators := map[string]stream.Iterator{
		"filter bad UTF8": {Stream: goldenStream, Filter: "\xc3\x28"},
		"filter too long": {Stream: goldenStream, Filter: strings.Repeat("x", 65536)},
	}
	for name, it := range iterators {
		t.Run("iterator "+name, func(t *testing.T) {
			_, err := it.MarshalBinary()
			isInvalid(t, err)
			dst, err := it.AppendBinary([]byte("keep"))
			isInvalid(t, err)
			equal(t, []byte("keep"), dst, "dst changed on error")
		})
	}
}

func TestStrings(t *testing.T) {
	equal(t, "3", stream.ShardID(3).String())
	equal(t, "65535", stream.ShardID(65535).String())
	equal(t, "7", stream.GenerationID(7).String())
	equal(t, "4294967295", stream.GenerationID(1<<32-1).String())
	equal(t, "lts", stream.LayoutLTS.String())
	equal(t, "reference", stream.LayoutReference.String())
	equal(t, "LayoutKind(0)", stream.LayoutKind(0).String())
	equal(t, "LayoutKind(9)", stream.LayoutKind(9).String())
	equal(t, "3/7/lts:42(sensor/+/temp)", goldenStream.String())
	equal(t, "3/7/lts:42(sensor/+/temp)", fmt.Sprint(goldenStream))
	equal(t, `3/7/lts:42(sensor/+/temp) filter="sensor/1/temp" next=1700000000000000`,
		stream.Iterator{Stream: goldenStream, Filter: "sensor/1/temp", Next: 1_700_000_000_000_000}.String())
}

func TestLayoutKindValid(t *testing.T) {
	for k := range 256 {
		want := k == 1 || k == 2
		equal(t, want, stream.LayoutKind(k).Valid(), "LayoutKind(%d).Valid()", k)
	}
}

func TestLess(t *testing.T) {
	s := func(shard, gen uint32, key uint64) stream.Stream {
		return stream.Stream{Shard: stream.ShardID(shard), Generation: stream.GenerationID(gen), Key: key, Layout: stream.LayoutLTS}
	}
	ordered := []stream.Stream{
		s(0, 0, 0), s(0, 0, 1), s(0, 0, 1<<63), s(0, 1, 0), s(0, 1<<31, 0), s(1, 0, 0), s(0xffff, 0, 0),
	}
	for i := range ordered {
		for j := range ordered {
			equal(t, i < j, ordered[i].Less(ordered[j]), "%v < %v", ordered[i], ordered[j])
		}
	}
	// Layout and pattern are not part of the order.
	a := stream.Stream{Shard: 1, Key: 5, Layout: stream.LayoutLTS, Pattern: "z"}
	b := stream.Stream{Shard: 1, Key: 5, Layout: stream.LayoutReference, Pattern: "a"}
	equal(t, false, a.Less(b))
	equal(t, false, b.Less(a))
	equal(t, 0, a.Compare(b))
}

// TestEncodingOrder checks the documented invariant that Stream encodings
// sort like Less.
func TestEncodingOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for range 5000 {
		a, b := randStream(r), randStream(r)
		if r.IntN(4) == 0 {
			b.Shard = a.Shard
			if r.IntN(2) == 0 {
				b.Generation = a.Generation
			}
		}
		if a.Less(b) {
			ea, eb := mustMarshal(t, a), mustMarshal(t, b)
			require.Negative(t, bytes.Compare(ea, eb), "%v < %v but %x >= %x", a, b, ea, eb)
		}
	}
}

func TestMarshalAllocations(t *testing.T) {
	// MarshalBinary sizes its buffer exactly: one allocation.
	equal(t, 1.0, testing.AllocsPerRun(100, func() { _, _ = goldenStream.MarshalBinary() }))
	equal(t, 1.0, testing.AllocsPerRun(100, func() { _, _ = goldenIterator.MarshalBinary() }))
	buf := make([]byte, 0, 256)
	equal(t, 0.0, testing.AllocsPerRun(100, func() { _, _ = goldenIterator.AppendBinary(buf[:0]) }))
}

// fuzzSeeds adds, for each valid encoding, the encoding itself and the
// encoding without its CRC (for the re-checksummed half of the fuzz targets).
func fuzzSeeds(f *testing.F, encs [][]byte) {
	for _, b := range encs {
		f.Add(b)
		f.Add(withoutCRC(b))
	}
	f.Add([]byte{})
	f.Add([]byte{'S'})
	f.Add([]byte{'I', 1})
}

// checkUnmarshal is the body of both fuzz targets. It decodes b as is, and
// again with a correct checksum appended: random bytes almost never carry a
// valid CRC, so without the second half the fuzzer would never get past the
// checksum to the field decoder.
func checkUnmarshal[T any, P interface {
	*T
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
}](t *testing.T, b []byte) {
	for _, in := range [][]byte{b, rechecksum(b)} {
		orig := slices.Clone(in)
		var v T
		if err := P(&v).UnmarshalBinary(in); err != nil {
			require.ErrorIs(t, err, stream.ErrInvalid)
			continue
		}
		require.True(t, bytes.Equal(orig, in), "UnmarshalBinary modified its input")
		out, err := P(&v).MarshalBinary()
		require.NoError(t, err, "re-marshalling %+v", v)
		require.True(t, bytes.Equal(out, in), "re-marshalling changed the bytes:\n in %x\nout %x", in, out)
	}
}

func FuzzUnmarshalStream(f *testing.F) {
	var encs [][]byte
	for _, s := range streamFixtures() {
		if len(s.Pattern) < 1000 {
			encs = append(encs, mustMarshal(f, s))
		}
	}
	fuzzSeeds(f, encs)
	f.Fuzz(checkUnmarshal[stream.Stream])
}

func FuzzUnmarshalIterator(f *testing.F) {
	var encs [][]byte
	for _, it := range iteratorFixtures() {
		if len(it.Filter)+len(it.Stream.Pattern) < 1000 {
			encs = append(encs, mustMarshal(f, it))
		}
	}
	fuzzSeeds(f, encs)
	f.Fuzz(checkUnmarshal[stream.Iterator])
}

// FuzzMarshalIterator goes the other way: from arbitrary field values, marshal
// either fails with ErrInvalid for a reason the package documents, or its
// output unmarshals to the same value.
func FuzzMarshalIterator(f *testing.F) {
	f.Add(uint16(3), uint32(7), uint8(1), uint64(42), "sensor/+/temp", "sensor/1/temp", uint64(1_700_000_000_000_000))
	f.Add(uint16(0), uint32(0), uint8(0), uint64(0), "", "", uint64(0))
	f.Add(uint16(1), uint32(1), uint8(2), uint64(1), "#", "\xff", uint64(1))
	f.Fuzz(func(t *testing.T, shard uint16, gen uint32, layout uint8, key uint64, pattern, filter string, next uint64) {
		it := stream.Iterator{
			Stream: stream.Stream{
				Shard:      stream.ShardID(shard),
				Generation: stream.GenerationID(gen),
				Layout:     stream.LayoutKind(layout),
				Key:        key,
				Pattern:    pattern,
			},
			Filter: filter,
			Next:   next,
		}
		encodable := it.Stream.Layout.Valid() && validString(pattern) && validString(filter)

		b, err := it.MarshalBinary()
		if err != nil {
			isInvalid(t, err)
			require.False(t, encodable, "marshalling encodable %+v: %v", it, err)
			return
		}
		require.True(t, encodable, "marshalled unencodable %+v", it)
		var got stream.Iterator
		noErr(t, got.UnmarshalBinary(b))
		equal(t, it, got)

		sb, err := it.Stream.MarshalBinary()
		noErr(t, err)
		var gotS stream.Stream
		noErr(t, gotS.UnmarshalBinary(sb))
		equal(t, it.Stream, gotS)
	})
}

func validString(s string) bool {
	return len(s) <= 65535 && strings.ToValidUTF8(s, "") == s
}

func BenchmarkIteratorMarshal(b *testing.B) {
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = goldenIterator.AppendBinary(buf[:0])
	}
}

func BenchmarkIteratorUnmarshal(b *testing.B) {
	enc := mustMarshal(b, goldenIterator)
	b.ReportAllocs()
	var it stream.Iterator
	for b.Loop() {
		if err := it.UnmarshalBinary(enc); err != nil {
			b.Fatal(err)
		}
	}
}
