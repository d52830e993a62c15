package layout

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

// verifyFixtures are an LTS and a reference generation holding a few messages, and every key
// and value they wrote (the fuzz seeds).
func verifyFixtures(t testing.TB) (gens []Generation, seeds []verifySeed) {
	for _, p := range []Params{{Kind: stream.LayoutLTS, Thresholds: []int{2, 2}}, {Kind: stream.LayoutReference}} {
		f := newFixture(t, p, nil)
		var msgs []message.Message
		for i := range 6 {
			msgs = append(msgs, message.Message{ClientID: "c", Topic: fmt.Sprintf("a/%d/b", i), Payload: []byte{byte(i)}, Timestamp: uint64(10 + i)})
		}
		f.addAll(t, msgs, 3)
		it, err := f.db.NewIter(&pebble.IterOptions{})
		require.NoError(t, err)
		for ok := it.First(); ok; ok = it.Next() {
			seeds = append(seeds, verifySeed{len(gens), append([]byte(nil), it.Key()...), append([]byte(nil), it.Value()...)})
		}
		require.NoError(t, it.Close())
		gens = append(gens, f.gen)
	}
	return gens, seeds
}

type verifySeed struct {
	gen        int // index into the generations
	key, value []byte
}

// TestVerifyOwnKeys: every key and value a generation writes verifies, data keys with the
// index keys their stream needs, and one flipped value byte of a data key is caught as ErrCorrupt
// with the key still decoded.
func TestVerifyOwnKeys(t *testing.T) {
	gens, seeds := verifyFixtures(t)
	data := 0
	for _, s := range seeds {
		g := gens[s.gen]
		ki, err := Verify(g, s.key, s.value)
		require.NoError(t, err, "own key %x", s.key)
		if ki.Kind == KeyData {
			data++
			bad := append(append([]byte(nil), s.value...), 0xee) // a trailing byte: the record does not decode
			ki2, err := Verify(g, s.key, bad)
			require.ErrorIs(t, err, ErrCorrupt, "damaged value of %x", s.key)
			require.True(t, ki2.Decoded && ki2.TS == ki.TS, "damaged value of %x: %+v, want the key decoded", s.key, ki2)
		}
	}
	require.Equal(t, 12, data, "data keys verified (6 per generation)")
}

// FuzzVerify: whatever bytes a damaged store holds under a generation's keys, Verify never
// panics, and its errors wrap ErrCorrupt.
func FuzzVerify(f *testing.F) {
	gens, seeds := verifyFixtures(f)
	for _, s := range seeds {
		f.Add(s.key, s.value, s.gen == 1)
	}
	f.Fuzz(func(t *testing.T, key, value []byte, reference bool) {
		g := gens[0]
		if reference {
			g = gens[1]
		}
		if _, err := KeyGeneration(key); err != nil {
			require.ErrorIs(t, err, ErrCorrupt, "KeyGeneration")
			return
		}
		if _, err := Verify(g, key, value); err != nil {
			require.ErrorIs(t, err, ErrCorrupt, "Verify")
		}
	})
}
