package shard

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Fuzz targets for the de-duplication records a replica reads back from its store. Run one at
// a time, e.g.
//
//	go test ./shard -run '^$' -fuzz '^FuzzDecodeProposerRecord$' -fuzztime 60s

func randomProposerState(rng *rand.Rand, n int) *proposerState {
	st := &proposerState{floor: rng.Uint64N(1 << 20), lastIndex: rng.Uint64(), applied: map[uint64]uint64{}}
	for range n {
		st.applied[st.floor+1+rng.Uint64N(1<<10)] = rng.Uint64() >> rng.UintN(64)
	}
	return st
}

func sameProposerState(t *testing.T, got, want *proposerState) {
	t.Helper()
	require.True(t, got.floor == want.floor && got.lastIndex == want.lastIndex && maps.Equal(got.applied, want.applied),
		"state %+v, want %+v", got, want)
}

// rawProposerState encodes a record as given: sequence numbers in this order, repeats kept.
func rawProposerState(floor, lastIndex uint64, pairs ...uint64) []byte {
	b := binary.AppendUvarint(nil, floor)
	b = binary.AppendUvarint(b, lastIndex)
	b = binary.AppendUvarint(b, uint64(len(pairs)/2))
	for _, v := range pairs {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

// FuzzDecodeProposerRecord: a damaged de-duplication record never panics a replica opening its
// store or a tool inspecting it. What decodeProposerState accepts re-encodes to a record that
// decodes the same; DecodeProposerRecord accepts exactly the canonical records with every
// sequence number above the floor, and agrees with decodeProposerState on them.
func FuzzDecodeProposerRecord(f *testing.F) {
	rng := rand.New(rand.NewPCG(8, 9))
	for n := range 8 {
		f.Add(randomProposerState(rng, n).appendBinary(nil))
	}
	f.Add([]byte{})
	f.Add(rawProposerState(0, 0))
	f.Add(rawProposerState(5, 9, 7, 100, 6, 50)) // out of order
	f.Add(rawProposerState(5, 9, 7, 100, 7, 50)) // repeated
	f.Add(rawProposerState(5, 9, 5, 100))        // at the floor
	f.Add(append(rawProposerState(5, 9, 7, 100), 0))
	f.Add([]byte{0x80, 0x00, 0, 0})                                     // non-minimal varint
	f.Add([]byte{0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}) // huge count
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		st, err := decodeProposerState(b)
		rec, rerr := DecodeProposerRecord(b)
		require.True(t, bytes.Equal(orig, b), "decoder modified its input")
		if err != nil {
			require.True(t, st == nil && rerr != nil, "decodeProposerState: %v (state %v), DecodeProposerRecord: %v", err, st, rerr)
			return
		}
		require.NotNil(t, st.applied, "nil applied set") // record would panic on it
		require.LessOrEqual(t, len(st.applied), len(b)/2, "sequence numbers from %d bytes", len(b))
		enc := st.appendBinary(nil)
		again, err := decodeProposerState(enc)
		require.NoError(t, err, "re-encoded record %x", enc)
		sameProposerState(t, again, st)
		canonical := bytes.Equal(enc, b)
		above := true
		for seq := range st.applied {
			above = above && seq > st.floor
		}
		require.Equal(t, canonical && above, rerr == nil, "DecodeProposerRecord(%x) accepts: %v; canonical %v, above the floor %v", b, rerr, canonical, above)
		if rerr == nil {
			sameProposerState(t, &proposerState{floor: rec.Floor, lastIndex: rec.LastIndex, applied: rec.Applied}, st)
		}
	})
}

// FuzzProposerStateRoundTrip: every state a replica can hold survives appendBinary and both
// decoders; the record is canonical, so DecodeProposerRecord accepts it when every sequence
// number is above the floor (what dedup.record maintains).
func FuzzProposerStateRoundTrip(f *testing.F) {
	f.Add(uint64(0), uint64(0), uint64(0), uint8(0), false)
	f.Add(uint64(10), uint64(1<<40), uint64(3), uint8(5), false)
	f.Add(uint64(1<<64-2), uint64(1<<64-1), uint64(4), uint8(1), true)
	f.Add(uint64(100), uint64(7), uint64(5), uint8(40), true)
	f.Fuzz(func(t *testing.T, floor, lastIndex, seed uint64, n uint8, below bool) {
		rng := rand.New(rand.NewPCG(seed, uint64(n)))
		st := &proposerState{floor: floor, lastIndex: lastIndex, applied: map[uint64]uint64{}}
		for range n {
			seq := rng.Uint64()
			if !below { // above the floor, as dedup.record keeps them
				if floor == math.MaxUint64 {
					break
				}
				seq = floor + 1 + seq%(math.MaxUint64-floor)
			}
			st.applied[seq] = rng.Uint64() >> rng.UintN(64)
		}
		enc := st.appendBinary(nil)
		got, err := decodeProposerState(enc)
		require.NoError(t, err, "%x", enc)
		sameProposerState(t, got, st)
		above := true
		for seq := range st.applied {
			above = above && seq > floor
		}
		rec, err := DecodeProposerRecord(enc)
		require.Equal(t, above, err == nil, "DecodeProposerRecord accepts: %v; every sequence above the floor: %v", err, above)
		if err == nil {
			sameProposerState(t, &proposerState{floor: rec.Floor, lastIndex: rec.LastIndex, applied: rec.Applied}, st)
		}
	})
}
