package shard

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/strata-mq/strata/internal/message"
	"github.com/stretchr/testify/require"
)

// sampleTxnCommand is sampleCommand with 1-3 Txns (a version-2 encoding).
func sampleTxnCommand(rng *rand.Rand) *Command {
	c := sampleCommand(rng)
	for range 1 + rng.IntN(3) {
		t := &Txn{}
		for range rng.IntN(3) {
			t.Conds = append(t.Conds, Cond{Key: []byte(fmt.Sprintf("k%d", rng.IntN(5))), Version: rng.Uint64() >> rng.IntN(64)})
		}
		for range rng.IntN(4) {
			w := RecordWrite{Key: []byte(fmt.Sprintf("S\x00client-%d", rng.IntN(5)))}
			switch rng.IntN(3) {
			case 0:
				w.Delete = true
			case 1:
				w.Value = bytes.Repeat([]byte{byte(rng.IntN(256))}, 1+rng.IntN(300))
			}
			t.Writes = append(t.Writes, w)
		}
		for i := range rng.IntN(3) {
			t.Messages = append(t.Messages, &message.Message{ClientID: "p", Topic: fmt.Sprintf("t/%d", i),
				Payload: bytes.Repeat([]byte{'x'}, rng.IntN(20)), QoS: byte(rng.IntN(3))})
		}
		c.Txns = append(c.Txns, t)
	}
	return c
}

// sameTxns compares the Txns of two commands (what the encoding carries).
func sameTxns(t *testing.T, got, want *Command) {
	t.Helper()
	require.Len(t, got.Txns, len(want.Txns), "Txns")
	for i, g := range got.Txns {
		w := want.Txns[i]
		require.True(t, len(g.Conds) == len(w.Conds) && len(g.Writes) == len(w.Writes) && len(g.Messages) == len(w.Messages),
			"txn %d: %+v, want %+v", i, g, w)
		for j := range g.Conds {
			require.True(t, bytes.Equal(g.Conds[j].Key, w.Conds[j].Key) && g.Conds[j].Version == w.Conds[j].Version,
				"txn %d cond %d: %+v, want %+v", i, j, g.Conds[j], w.Conds[j])
		}
		for j := range g.Writes {
			x, y := g.Writes[j], w.Writes[j]
			require.True(t, bytes.Equal(x.Key, y.Key) && bytes.Equal(x.Value, y.Value) && x.Delete == y.Delete,
				"txn %d write %d: %+v, want %+v", i, j, x, y)
		}
		for j := range g.Messages {
			x, y := g.Messages[j], w.Messages[j]
			require.True(t, x.Topic == y.Topic && x.ClientID == y.ClientID && bytes.Equal(x.Payload, y.Payload) && x.QoS == y.QoS,
				"txn %d message %d: %+v, want %+v", i, j, x, y)
		}
	}
}

// TestCommandTxnRoundTrip: commands with Txns are encoded as version 2 and survive the round
// trip; without Txns a command stays version 1; every truncation is refused; so are a
// version-2 encoding with no Txn, a delete with a value, and an oversized record key.
func TestCommandTxnRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for range 500 {
		c := sampleTxnCommand(rng)
		enc := c.AppendBinary(nil)
		require.Equal(t, byte(txnVersion), enc[1], "version of a command with Txns")
		got, err := DecodeCommand(enc)
		require.NoError(t, err)
		again := got.AppendBinary(nil)
		require.True(t, bytes.Equal(again, enc), "re-encoding differs:\n%x\n%x", again, enc)
		sameTxns(t, got, c)
		require.True(t, len(got.Messages) == len(c.Messages) && got.Time == c.Time, "decoded %+v, want %+v", got, c)
		for i := range enc {
			_, err := DecodeCommand(enc[:i])
			require.ErrorIs(t, err, ErrInvalidCommand, "truncation to %d of %d", i, len(enc))
		}
	}
	require.Equal(t, byte(commandVersion), (&Command{Time: 1}).AppendBinary(nil)[1], "version of a command without Txns")
	// Version 2 with a zero Txn count: not what AppendBinary writes.
	enc := (&Command{Time: 1}).AppendBinary(nil)
	enc[1] = txnVersion
	_, err := DecodeCommand(append(enc, 0))
	require.ErrorIs(t, err, ErrInvalidCommand, "version 2 without Txns")
	for name, tx := range map[string]*Txn{
		"delete with a value": {Writes: []RecordWrite{{Key: []byte("k"), Value: []byte("v"), Delete: true}}},
		"empty key":           {Writes: []RecordWrite{{Value: []byte("v")}}},
		"long key":            {Writes: []RecordWrite{{Key: make([]byte, MaxRecordKey+1)}}},
		"long cond key":       {Conds: []Cond{{Key: make([]byte, MaxRecordKey+1)}}},
		"long value":          {Writes: []RecordWrite{{Key: []byte("k"), Value: make([]byte, MaxRecordValue+1)}}},
	} {
		enc := (&Command{Time: 1, Txns: []*Txn{tx}}).AppendBinary(nil)
		_, err := DecodeCommand(enc)
		require.ErrorIs(t, err, ErrInvalidCommand, name)
	}
}

// checkDecode is the property of the fuzz targets: no panic; an error wraps ErrInvalidCommand;
// what decodes re-encodes to the same bytes (the encoding is canonical) and its Txns are valid.
func checkDecode(t *testing.T, b []byte) {
	c, err := DecodeCommand(b)
	if err != nil {
		require.ErrorIs(t, err, ErrInvalidCommand)
		return
	}
	again := c.AppendBinary(nil)
	require.True(t, bytes.Equal(again, b), "re-encoded %x from %x", again, b)
	for i, tx := range c.Txns {
		require.NoError(t, tx.validate(), "txn %d decoded but invalid", i)
	}
}

// TestCommandTxnMutations: random byte changes, insertions and deletions of version-2
// encodings never panic DecodeCommand, and what still decodes is canonical.
func TestCommandTxnMutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for range 300 {
		enc := sampleTxnCommand(rng).AppendBinary(nil)
		for range 30 {
			b := bytes.Clone(enc)
			for range 1 + rng.IntN(3) {
				i := rng.IntN(len(b))
				switch rng.IntN(4) {
				case 0:
					b[i] = byte(rng.IntN(256))
				case 1:
					b[i] ^= 1 << rng.IntN(8)
				case 2:
					b = append(b[:i], b[i+1:]...)
				default:
					b = append(b[:i], append([]byte{byte(rng.IntN(256))}, b[i:]...)...)
				}
				if len(b) == 0 {
					break
				}
			}
			checkDecode(t, b)
		}
	}
}

// FuzzDecodeCommandTxn is FuzzDecodeCommand seeded with version-2 encodings (Txns).
func FuzzDecodeCommandTxn(f *testing.F) {
	rng := rand.New(rand.NewPCG(2, 2))
	for range 8 {
		f.Add(sampleTxnCommand(rng).AppendBinary(nil))
	}
	f.Add((&Command{Time: 1, Txns: []*Txn{{}}}).AppendBinary(nil))
	f.Add([]byte("C\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00"))
	f.Fuzz(checkDecode)
}
