package session

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/stretchr/testify/require"
)

// randomState returns a state that appendState can write and decodeState must accept.
func randomState(rng *rand.Rand) *state {
	s := &state{
		Epoch:   max(1, rng.Uint64()>>rng.IntN(64)),
		Expiry:  time.Duration(rng.Uint64N(uint64(maxExpiry/time.Second)+1)) * time.Second,
		NextSeq: 1 + rng.Uint64N(1000),
		Clean:   rng.IntN(2) == 0,
		Owner:   []string{"", "local", "site-b", "\xff"}[rng.IntN(4)],
	}
	if rng.IntN(2) == 0 {
		s.Disconnected = rng.Uint64() >> rng.IntN(64)
	}
	filters := []string{"a/#", "a/+/c", "#", "+", "x", "$SYS/#", "a//b"}
	nsh := 1 + rng.IntN(4)
	pos := func() ds.Position {
		ts := make([]uint64, nsh)
		for i := range ts {
			ts[i] = rng.Uint64() >> rng.IntN(64)
		}
		return ds.NewPosition(ts...)
	}
	rng.Shuffle(len(filters), func(i, j int) { filters[i], filters[j] = filters[j], filters[i] })
	for k := range rng.IntN(4) {
		s.Subs = append(s.Subs, subState{Filter: filters[k], QoS: byte(rng.IntN(3)),
			NoLocal: rng.IntN(2) == 0, RetainAsPub: rng.IntN(2) == 0, SubscriptionID: uint32(rng.IntN(maxSubscriptionID + 1)),
			Position: pos(), Sent: pos()})
	}
	for seq := uint64(1); seq < s.NextSeq && len(s.Window) < 5; seq += 1 + rng.Uint64N(50) {
		e := qos2Entry{Seq: seq, Ref: ds.Ref{Shard: ds.ShardID(rng.IntN(1 << 16)), Timestamp: rng.Uint64() >> rng.IntN(64)},
			Sub: rng.IntN(len(s.Subs) + 1), Received: rng.IntN(2) == 0}
		if !e.Received {
			e.Msg = &ds.Message{ClientID: "pub", Topic: fmt.Sprintf("a/%d", rng.IntN(9)), QoS: 2, Retain: rng.IntN(2) == 0,
				Payload: bytes.Repeat([]byte{byte(rng.IntN(256))}, rng.IntN(40)),
				Shard:   uint16(e.Ref.Shard), Timestamp: e.Ref.Timestamp}
			if len(e.Msg.Payload) == 0 {
				e.Msg.Payload = nil // as DecodeRecord gives it
			}
			if rng.IntN(2) == 0 {
				e.Msg.Properties.ContentType = "text/plain"
			}
		}
		s.Window = append(s.Window, e)
	}
	return s
}

// fixCRC recomputes the trailing checksum of b, so that a mutation reaches the field checks.
func fixCRC(b []byte) []byte {
	if len(b) < 4 {
		return b
	}
	b = bytes.Clone(b)
	binary.BigEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	return b
}

// checkState is the fuzz property: decodeState never panics; an error wraps ErrCorruptState;
// what decodes re-encodes to exactly the same bytes (the encoding is canonical) and satisfies
// the invariants a Session relies on.
func checkState(t *testing.T, b []byte) {
	s, err := decodeState(b)
	if err != nil {
		require.ErrorIs(t, err, ErrCorruptState)
		return
	}
	again := appendState(nil, s)
	require.True(t, bytes.Equal(again, b), "re-encoded\n%x\nfrom\n%x", again, b)
	for i, e := range s.Window {
		require.False(t, e.Seq == 0 || e.Seq >= s.NextSeq || e.Sub < 0 || e.Sub > len(s.Subs) || e.Received && e.Msg != nil,
			"window entry %d: %+v (next seq %d, %d subs)", i, e, s.NextSeq, len(s.Subs))
	}
	for i, sb := range s.Subs {
		require.False(t, sb.QoS > 2 || sb.SubscriptionID > maxSubscriptionID || sb.Position.NShards() == 0 || sb.Sent.NShards() == 0,
			"subscription %d: %+v", i, sb)
	}
}

// TestStateRoundTrip: random states survive appendState/decodeState exactly, and every
// truncation or single-byte change of an encoding is refused (the checksum), and every such
// change with the checksum fixed up is refused or still canonical.
func TestStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for range 300 {
		s := randomState(rng)
		enc := appendState(nil, s)
		got, err := decodeState(enc)
		require.NoError(t, err, "%+v", s)
		require.Equal(t, s, got, "decoded")
		// appendState appends: a prefix in dst is kept, and not covered by the checksum.
		withPrefix := appendState([]byte("xyz"), s)
		require.True(t, bytes.Equal(withPrefix[3:], enc), "appendState with a prefix in dst differs")
		for i := range enc {
			_, err := decodeState(enc[:i])
			require.ErrorIs(t, err, ErrCorruptState, "truncation to %d of %d", i, len(enc))
		}
		for range 20 {
			b := bytes.Clone(enc)
			i := rng.IntN(len(b))
			b[i] ^= byte(1 + rng.IntN(255))
			_, err := decodeState(b)
			require.ErrorIs(t, err, ErrCorruptState, "byte %d changed", i)
			checkState(t, fixCRC(b))
			// Insertions and deletions, checksum fixed up.
			b = bytes.Clone(enc)
			i = rng.IntN(len(b) - 4)
			if rng.IntN(2) == 0 {
				b = append(b[:i], b[i+1:]...)
			} else {
				b = append(b[:i], append([]byte{byte(rng.IntN(256))}, b[i:]...)...)
			}
			checkState(t, fixCRC(b))
		}
	}
}

// FuzzDecodeState: no input panics decodeState, whether or not its checksum is right; what
// decodes is canonical.
func FuzzDecodeState(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 5))
	for range 8 {
		f.Add(appendState(nil, randomState(rng)))
	}
	f.Add(appendState(nil, &state{NextSeq: 1}))
	f.Add([]byte("S\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkState(t, b)
		checkState(t, fixCRC(b))
	})
}

// FuzzStateRoundTrip: states built from fuzzed numbers round-trip exactly.
func FuzzStateRoundTrip(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(0), uint64(1<<63))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		s := randomState(rand.New(rand.NewPCG(a, b)))
		got, err := decodeState(appendState(nil, s))
		require.NoError(t, err, "%+v", s)
		require.Equal(t, s, got, "decoded")
	})
}
