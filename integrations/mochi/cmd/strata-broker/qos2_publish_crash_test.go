package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/integrations/mochi/internal/rawmqtt"
	"github.com/stretchr/testify/require"
)

// A kill -9 of the broker while a client publishes QoS 2 messages, with exchanges open at
// every step (PUBLISH sent but no PUBREC seen, PUBREC seen but no PUBREL sent, PUBREL sent
// but no PUBCOMP seen): after the restart the publisher completes them as MQTT says
// (PUBLISH again with DUP where it saw no PUBREC, PUBREL where it did), and a durable
// subscriber gets every message exactly once — a PUBLISH the broker had stored before the
// kill, sent again, is not stored twice.
func TestKillDuringQoS2Publish(t *testing.T) {
	bin := brokerBinary(t)
	// messages; how many the publisher releases before the kill; how many PUBRECs after
	// those it does not see.
	const n, released, lost = 600, 200, 100
	dataDir := filepath.Join(t.TempDir(), "data")
	logPath := filepath.Join(t.TempDir(), "broker.log")
	b := startProc(t, bin, dataDir, logPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", b.tail())
		}
	})
	r := newReceiver(t, "kq-sub", 2)
	r.connect(b.addr)
	require.NoError(t, r.c.Subscribe("strata-test/+", 2))
	r.c.Close()

	pub := func(addr string) *rawmqtt.Client {
		t.Helper()
		c, _, err := rawmqtt.Dial(addr, "kq-pub", 20*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	send := func(c *rawmqtt.Client, seq int, dup bool) {
		t.Helper()
		err := c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup},
			TopicName: topic, PacketID: uint16(seq + 1), Payload: payload(1, seq)})
		require.NoError(t, err)
	}
	ack := func(c *rawmqtt.Client, typ byte, pid uint16) {
		t.Helper()
		require.NoError(t, c.Ack(typ, pid))
	}

	// Connection 1: all n PUBLISHes (packet IDs 1…n), PUBREL for the first `released`
	// PUBRECs; the broker is killed after the next `lost` PUBRECs.
	c := pub(b.addr)
	for seq := range n {
		send(c, seq, false)
	}
	recd := map[uint16]bool{} // PUBREC seen
	for len(recd) < released {
		pk, err := c.Read()
		require.NoError(t, err, "publisher: read")
		require.Equal(t, packets.Pubrec, pk.FixedHeader.Type, "publisher: got %v", pk.FixedHeader.Type)
		recd[pk.PacketID] = true
		ack(c, packets.Pubrel, pk.PacketID)
	}
	// The next PUBRECs are lost with the connection: those messages are stored, and the
	// publisher will send them again.
	for range lost {
		pk, err := c.Read()
		require.NoError(t, err, "publisher: got %v, %v", pk.FixedHeader.Type, err)
		require.Equal(t, packets.Pubrec, pk.FixedHeader.Type, "publisher: got %v, %v", pk.FixedHeader.Type, err)
	}
	b.kill()
	t.Logf("killed after %d PUBRECs and PUBRELs and %d PUBRECs lost, %d QoS 2 PUBLISHes sent", len(recd), lost, n)

	// Connection 2: PUBREL where a PUBREC was seen, the PUBLISH again (DUP) where not, until
	// every exchange is complete.
	b = startProc(t, bin, dataDir, logPath)
	c = pub(b.addr)
	for seq := range n {
		if pid := uint16(seq + 1); recd[pid] {
			ack(c, packets.Pubrel, pid)
		} else {
			send(c, seq, true)
		}
	}
	complete := map[uint16]bool{}
	for len(complete) < n {
		pk, err := c.Read()
		require.NoError(t, err, "publisher after the restart: read: %v (%d of %d complete)", err, len(complete), n)
		switch pk.FixedHeader.Type {
		case packets.Pubrec:
			ack(c, packets.Pubrel, pk.PacketID)
		case packets.Pubcomp:
			complete[pk.PacketID] = true
		default:
			require.Failf(t, "unexpected packet", "publisher: got %v", pk.FixedHeader.Type)
		}
	}

	r.connect(b.addr)
	r.receive(func() bool { return len(r.handed) == n && len(r.pending) == 0 })
	require.NoError(t, r.c.Ping()) // nothing more to come
	for seq := range n {
		require.Equal(t, 1, r.handed[seq], "message %d handed on %d times", seq, r.handed[seq])
	}
}
