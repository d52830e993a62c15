package shard

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/strata-mq/strata/internal/message"
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
	if len(got.Txns) != len(want.Txns) {
		t.Fatalf("%d Txns, want %d", len(got.Txns), len(want.Txns))
	}
	for i, g := range got.Txns {
		w := want.Txns[i]
		if len(g.Conds) != len(w.Conds) || len(g.Writes) != len(w.Writes) || len(g.Messages) != len(w.Messages) {
			t.Fatalf("txn %d: %+v, want %+v", i, g, w)
		}
		for j := range g.Conds {
			if !bytes.Equal(g.Conds[j].Key, w.Conds[j].Key) || g.Conds[j].Version != w.Conds[j].Version {
				t.Fatalf("txn %d cond %d: %+v, want %+v", i, j, g.Conds[j], w.Conds[j])
			}
		}
		for j := range g.Writes {
			x, y := g.Writes[j], w.Writes[j]
			if !bytes.Equal(x.Key, y.Key) || !bytes.Equal(x.Value, y.Value) || x.Delete != y.Delete {
				t.Fatalf("txn %d write %d: %+v, want %+v", i, j, x, y)
			}
		}
		for j := range g.Messages {
			x, y := g.Messages[j], w.Messages[j]
			if x.Topic != y.Topic || x.ClientID != y.ClientID || !bytes.Equal(x.Payload, y.Payload) || x.QoS != y.QoS {
				t.Fatalf("txn %d message %d: %+v, want %+v", i, j, x, y)
			}
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
		if enc[1] != txnVersion {
			t.Fatalf("a command with Txns encoded as version %d", enc[1])
		}
		got, err := DecodeCommand(enc)
		must(t, err)
		if again := got.AppendBinary(nil); !bytes.Equal(again, enc) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, enc)
		}
		sameTxns(t, got, c)
		if len(got.Messages) != len(c.Messages) || got.Time != c.Time {
			t.Fatalf("decoded %+v, want %+v", got, c)
		}
		for i := range enc {
			if _, err := DecodeCommand(enc[:i]); !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("truncation to %d of %d: %v", i, len(enc), err)
			}
		}
	}
	if enc := (&Command{Time: 1}).AppendBinary(nil); enc[1] != commandVersion {
		t.Fatalf("a command without Txns encoded as version %d", enc[1])
	}
	// Version 2 with a zero Txn count: not what AppendBinary writes.
	enc := (&Command{Time: 1}).AppendBinary(nil)
	enc[1] = txnVersion
	if _, err := DecodeCommand(append(enc, 0)); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("version 2 without Txns: %v", err)
	}
	for name, tx := range map[string]*Txn{
		"delete with a value": {Writes: []RecordWrite{{Key: []byte("k"), Value: []byte("v"), Delete: true}}},
		"empty key":           {Writes: []RecordWrite{{Value: []byte("v")}}},
		"long key":            {Writes: []RecordWrite{{Key: make([]byte, MaxRecordKey+1)}}},
		"long cond key":       {Conds: []Cond{{Key: make([]byte, MaxRecordKey+1)}}},
		"long value":          {Writes: []RecordWrite{{Key: []byte("k"), Value: make([]byte, MaxRecordValue+1)}}},
	} {
		enc := (&Command{Time: 1, Txns: []*Txn{tx}}).AppendBinary(nil)
		if _, err := DecodeCommand(enc); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// checkDecode is the property of the fuzz targets: no panic; an error wraps ErrInvalidCommand;
// what decodes re-encodes to the same bytes (the encoding is canonical) and its Txns are valid.
func checkDecode(t *testing.T, b []byte) {
	c, err := DecodeCommand(b)
	if err != nil {
		if !errors.Is(err, ErrInvalidCommand) {
			t.Fatalf("error %v does not wrap ErrInvalidCommand", err)
		}
		return
	}
	if again := c.AppendBinary(nil); !bytes.Equal(again, b) {
		t.Fatalf("re-encoded %x from %x", again, b)
	}
	for i, tx := range c.Txns {
		if err := tx.validate(); err != nil {
			t.Fatalf("txn %d decoded but invalid: %v", i, err)
		}
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
