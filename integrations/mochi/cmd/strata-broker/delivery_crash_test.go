package main

import (
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/integrations/mochi/internal/rawmqtt"
	"github.com/stretchr/testify/require"
)

// receiver is a durable subscriber speaking raw MQTT, so that the test sees every DUP flag
// and packet ID, and keeps the receiver's side of QoS 2 itself (MQTT 3.1.1 §4.3.3 method
// B: a packet ID is remembered from the PUBLISH until its PUBREL; a PUBLISH with a
// remembered ID is the same message again and is not handed on).
type receiver struct {
	t       *testing.T
	id      string
	qos     byte
	c       *rawmqtt.Client
	handed  map[int]int       // sequence → times handed to the application
	pending map[uint16]int    // QoS 2: packet ID → sequence, between PUBLISH and PUBREL
	life    map[int]delivered // this connection's deliveries, by sequence
	order   []int             // this connection's first deliveries, in order
	// holdAck and holdComp decide, per message, whether its PUBACK/PUBREC or its PUBCOMP
	// is held back (so that the kill finds exchanges at every step). Nil: none is.
	holdAck, holdComp func(seq int) bool
}

type delivered struct {
	dup bool
	pid uint16
}

func newReceiver(t *testing.T, id string, qos byte) *receiver {
	return &receiver{t: t, id: id, qos: qos, handed: map[int]int{}, pending: map[uint16]int{}}
}

func (r *receiver) connect(addr string) bool {
	r.t.Helper()
	c, present, err := rawmqtt.Dial(addr, r.id, 20*time.Second)
	require.NoError(r.t, err, "%s", r.id)
	r.t.Cleanup(func() { c.Close() })
	r.c, r.life, r.order = c, map[int]delivered{}, nil
	return present
}

// receive reads until until() holds, acknowledging as a client does (unless skip says
// otherwise).
func (r *receiver) receive(until func() bool) {
	r.t.Helper()
	for !until() {
		pk, err := r.c.Read()
		require.NoError(r.t, err, "%s: read: %v (handed %d)", r.id, err, len(r.handed))
		switch pk.FixedHeader.Type {
		case packets.Publish:
			r.publish(pk)
		case packets.Pubrel:
			if seq, ok := r.pending[pk.PacketID]; ok && r.holdComp != nil && r.holdComp(seq) {
				continue
			}
			delete(r.pending, pk.PacketID)
			r.ack(packets.Pubcomp, pk.PacketID)
		default:
			require.Failf(r.t, "unexpected packet", "%s: unexpected %v", r.id, pk.FixedHeader.Type)
		}
	}
}

func (r *receiver) publish(pk packets.Packet) {
	r.t.Helper()
	require.Equal(r.t, topic, pk.TopicName, "%s: PUBLISH %s QoS %d %q", r.id, pk.TopicName, pk.FixedHeader.Qos, pk.Payload)
	require.GreaterOrEqual(r.t, len(pk.Payload), 5, "%s: PUBLISH %s QoS %d %q", r.id, pk.TopicName, pk.FixedHeader.Qos, pk.Payload)
	require.Equal(r.t, r.qos, pk.FixedHeader.Qos, "%s: PUBLISH %s QoS %d %q", r.id, pk.TopicName, pk.FixedHeader.Qos, pk.Payload)
	seq := int(binary.BigEndian.Uint32(pk.Payload[1:]))
	if _, again := r.life[seq]; !again {
		r.life[seq] = delivered{dup: pk.FixedHeader.Dup, pid: pk.PacketID}
		r.order = append(r.order, seq)
	}
	if r.qos == 2 {
		if prev, ok := r.pending[pk.PacketID]; ok {
			require.Equal(r.t, seq, prev, "%s: packet ID %d (message %d, not released) used for message %d, DUP %v", r.id, pk.PacketID, prev, seq, pk.FixedHeader.Dup)
			require.True(r.t, pk.FixedHeader.Dup, "%s: packet ID %d (message %d, not released) used for message %d, DUP %v", r.id, pk.PacketID, prev, seq, pk.FixedHeader.Dup)
		} else {
			r.pending[pk.PacketID] = seq
			r.handed[seq]++
		}
		if r.holdAck == nil || !r.holdAck(seq) {
			r.ack(packets.Pubrec, pk.PacketID)
		}
		return
	}
	r.handed[seq]++
	if r.holdAck == nil || !r.holdAck(seq) {
		r.ack(packets.Puback, pk.PacketID)
	}
}

func (r *receiver) ack(typ byte, pid uint16) {
	r.t.Helper()
	require.NoError(r.t, r.c.Ack(typ, pid), "%s: ack", r.id)
}

// A kill -9 of the broker while it delivers to two durable subscribers, one at QoS 1 and
// one at QoS 2, with acknowledgements missing at every step: after the restart each gets
// every message; a QoS 1 message it had been sent comes again with DUP; the QoS 2
// subscriber gets each message exactly once (re-sent PUBLISHes carry DUP and the packet
// ID it still holds; exchanges whose PUBREC the broker recorded continue with PUBREL).
func TestKillDuringDelivery(t *testing.T) {
	bin := brokerBinary(t)
	const n, killAfter = 3000, 1000
	dataDir := filepath.Join(t.TempDir(), "data")
	logPath := filepath.Join(t.TempDir(), "broker.log")
	b := startProc(t, bin, dataDir, logPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", b.tail())
		}
	})

	r1, r2 := newReceiver(t, "kd-qos1", 1), newReceiver(t, "kd-qos2", 2)
	for _, r := range []*receiver{r1, r2} {
		r.connect(b.addr)
		require.NoError(t, r.c.Subscribe("strata-test/+", r.qos))
		r.c.Close()
	}
	// Published at QoS 2 and completed before the subscribers come back.
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("kd-pub").SetCleanSession(true))
	toks := make([]paho.Token, n)
	waitPub := func(i int) {
		require.True(t, toks[i].WaitTimeout(30*time.Second), "publish %d: %v", i, toks[i].Error())
		require.NoError(t, toks[i].Error(), "publish %d: %v", i, toks[i].Error())
	}
	const window = 256 // below mochi's receive maximum (1,024 QoS 2 exchanges open)
	for i := range n {
		if i >= window {
			waitPub(i - window)
		}
		toks[i] = pub.Publish(topic, 2, false, payload(1, i))
	}
	for i := n - window; i < n; i++ {
		waitPub(i)
	}
	pub.Disconnect(250)

	// Connection 1: each subscriber takes killAfter messages, holding back some
	// acknowledgements (QoS 1: every 7th PUBACK; QoS 2: every 7th PUBREC and every 5th
	// PUBCOMP), then stops reading; the broker is killed while it still has more to send.
	r1.holdAck = func(seq int) bool { return seq%7 == 3 }
	r2.holdAck = func(seq int) bool { return seq%7 == 3 }
	r2.holdComp = func(seq int) bool { return seq%5 == 1 }
	for _, r := range []*receiver{r1, r2} {
		require.True(t, r.connect(b.addr), "%s: session not present", r.id)
	}
	r1.receive(func() bool { return len(r1.order) >= killAfter })
	r2.receive(func() bool { return len(r2.order) >= killAfter })
	b.kill()
	first1 := r1.life
	t.Logf("killed after %d (QoS 1) and %d (QoS 2) deliveries; QoS 2 exchanges open: %d", len(r1.order), len(r2.order), len(r2.pending))

	// Connection 2, after the restart on the same data: everything, acknowledged at once.
	b = startProc(t, bin, dataDir, logPath)
	r1.holdAck, r2.holdAck, r2.holdComp = nil, nil, nil
	for _, r := range []*receiver{r1, r2} {
		require.True(t, r.connect(b.addr), "%s: session not present after the restart", r.id)
	}
	r1.receive(func() bool { return len(r1.handed) == n && r1.life[n-1] != (delivered{}) })
	r2.receive(func() bool { return len(r2.handed) == n && len(r2.pending) == 0 })
	for _, r := range []*receiver{r1, r2} {
		require.NoError(t, r.c.Ping(), r.id) // nothing more to come
	}

	// QoS 1: redelivered from a point at or before the first unacknowledged message, in
	// order; every message sent before the kill and sent again carries DUP.
	redelivered := 0
	for i, seq := range r1.order {
		if i > 0 {
			require.Equal(t, r1.order[i-1]+1, seq, "QoS 1 after the restart: %d after %d", seq, r1.order[i-1])
		}
		if _, sent := first1[seq]; sent {
			redelivered++
			require.True(t, r1.life[seq].dup, "QoS 1 message %d was sent before the kill and again without DUP", seq)
		}
	}
	// Message 3 was never acknowledged.
	require.NotEmpty(t, r1.order, "QoS 1 after the restart starts at %v, want at or before 3", r1.order[:min(1, len(r1.order))])
	require.LessOrEqual(t, r1.order[0], 3, "QoS 1 after the restart starts at %v, want at or before 3", r1.order[:min(1, len(r1.order))])
	// QoS 2: each message handed on exactly once.
	for seq := range n {
		require.Equal(t, 1, r2.handed[seq], "QoS 2 message %d handed on %d times", seq, r2.handed[seq])
	}
	t.Logf("after the restart: QoS 1 %d deliveries (%d with DUP, sent before the kill), QoS 2 %d", len(r1.order), redelivered, len(r2.order))
}
