package shard

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/stream"
	"github.com/stretchr/testify/require"
)

func sampleCommand(rng *rand.Rand) *Command {
	c := &Command{Time: rng.Uint64(), AddGeneration: rng.IntN(2) == 0}
	for range rng.IntN(3) {
		c.Drop = append(c.Drop, stream.GenerationID(1+rng.IntN(100)))
	}
	for i := range rng.IntN(5) {
		m := &message.Message{
			ClientID: fmt.Sprintf("c%d", rng.IntN(10)), Topic: fmt.Sprintf("a/%d/b", i),
			Payload: bytes.Repeat([]byte{byte(i)}, rng.IntN(50)), QoS: byte(rng.IntN(3)), Retain: rng.IntN(2) == 0,
		}
		if rng.IntN(2) == 0 {
			m.Properties = message.Properties{ContentType: "json", HasMessageExpiry: true, MessageExpiry: 60,
				User: []message.UserProperty{{Key: "k", Value: "v"}, {Key: "k", Value: "w"}}}
		}
		c.Messages = append(c.Messages, m)
	}
	return c
}

// TestCommandRoundTrip: commands survive encoding (the replicated proposal path), and every
// truncation of an encoding is refused.
func TestCommandRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 500 {
		c := sampleCommand(rng)
		enc := c.AppendBinary(nil)
		got, err := DecodeCommand(enc)
		require.NoError(t, err)
		again := got.AppendBinary(nil)
		require.True(t, bytes.Equal(again, enc), "re-encoding differs:\n%x\n%x", again, enc)
		require.True(t, got.Time == c.Time && got.AddGeneration == c.AddGeneration && len(got.Drop) == len(c.Drop) && len(got.Messages) == len(c.Messages),
			"decoded %+v, want %+v", got, c)
		for i := range enc {
			_, err := DecodeCommand(enc[:i])
			require.ErrorIs(t, err, ErrInvalidCommand, "truncation to %d of %d", i, len(enc))
		}
	}
}

// FuzzDecodeCommand: no input panics; what decodes re-encodes to the same bytes.
func FuzzDecodeCommand(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 1))
	for range 8 {
		f.Add(sampleCommand(rng).AppendBinary(nil))
	}
	f.Add([]byte("C\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidCommand)
			return
		}
		again := c.AppendBinary(nil)
		require.True(t, bytes.Equal(again, b), "re-encoded %x from %x", again, b)
	})
}
