package mochi

import (
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/strata-mq/strata/integrations/mochi/internal/rawmqtt"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/stretchr/testify/require"
)

// rawClient is a rawmqtt.Client failing the test on errors.
type rawClient struct {
	t *testing.T
	*rawmqtt.Client
}

// dialRaw connects with clean session = false and returns the CONNACK's session present.
func dialRaw(t *testing.T, b *broker, id string) (*rawClient, bool) {
	t.Helper()
	c, present, err := rawmqtt.Dial(b.addr, id, waitFor)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawClient{t, c}, present
}

func (rc *rawClient) subscribe(filter string, qos byte) {
	rc.t.Helper()
	require.NoError(rc.t, rc.Subscribe(filter, qos))
}

func (rc *rawClient) read() packets.Packet {
	rc.t.Helper()
	pk, err := rc.Read()
	require.NoError(rc.t, err, "read")
	return pk
}

// expectPublish reads a PUBLISH and checks its payload, QoS and DUP flag.
func (rc *rawClient) expectPublish(payload string, qos byte, dup bool) uint16 {
	rc.t.Helper()
	pk := rc.read()
	msg := []any{"got %v %q QoS %d DUP %v, want PUBLISH %q QoS %d DUP %v", pk.FixedHeader.Type, pk.Payload,
		pk.FixedHeader.Qos, pk.FixedHeader.Dup, payload, qos, dup}
	require.Equal(rc.t, packets.Publish, pk.FixedHeader.Type, msg...)
	require.Equal(rc.t, payload, string(pk.Payload), msg...)
	require.Equal(rc.t, qos, pk.FixedHeader.Qos, msg...)
	require.Equal(rc.t, dup, pk.FixedHeader.Dup, msg...)
	return pk.PacketID
}

func (rc *rawClient) expectPubrel(pid uint16) {
	rc.t.Helper()
	pk := rc.read()
	require.Equal(rc.t, packets.Pubrel, pk.FixedHeader.Type, "got %v %d, want PUBREL %d", pk.FixedHeader.Type, pk.PacketID, pid)
	require.Equal(rc.t, pid, pk.PacketID, "got %v %d, want PUBREL %d", pk.FixedHeader.Type, pk.PacketID, pid)
}

// expectNothingElse checks that the broker sends nothing before the answer to a PINGREQ.
func (rc *rawClient) expectNothingElse() {
	rc.t.Helper()
	require.NoError(rc.t, rc.Ping())
}

func (rc *rawClient) ack(typ byte, pid uint16) {
	rc.t.Helper()
	require.NoError(rc.t, rc.Ack(typ, pid))
}

// A QoS 2 delivery to a durable session survives the connection at each step of its
// exchange: unanswered, it comes again with DUP and the same packet ID; after its PUBREC
// only the PUBREL is repeated, never the message; after the PUBCOMP nothing is.
func TestQoS2DeliveryAcrossReconnects(t *testing.T) {
	b := startBroker(t)
	sub, present := dialRaw(t, b, "q2-sub")
	require.False(t, present, "session present on the first connect")
	sub.subscribe("q2/t", 2)
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("q2-pub"))
	defer pub.Disconnect(250)
	wait(t, pub.Publish("q2/t", 2, false, "m1"), "publish m1")

	pid := sub.expectPublish("m1", 2, false)
	sub.Close() // no PUBREC

	sub, present = dialRaw(t, b, "q2-sub")
	require.True(t, present, "session not present")
	got := sub.expectPublish("m1", 2, true)
	require.Equal(t, pid, got, "redelivered with packet ID %d, first with %d", got, pid)
	sub.ack(packets.Pubrec, pid)
	sub.expectPubrel(pid)
	sub.expectNothingElse() // one PUBREL: mochi does not answer the PUBREC too
	sub.Close()             // no PUBCOMP

	sub, _ = dialRaw(t, b, "q2-sub")
	sub.expectPubrel(pid) // the PUBREL again, not the message
	sub.ack(packets.Pubcomp, pid)

	// The next message comes next: m1 is not delivered a second time.
	wait(t, pub.Publish("q2/t", 2, false, "m2"), "publish m2")
	pid2 := sub.expectPublish("m2", 2, false)
	sub.ack(packets.Pubrec, pid2)
	sub.expectPubrel(pid2)
	sub.ack(packets.Pubcomp, pid2)
	sub.expectNothingElse()
	testutil.Eventually(t, waitFor, "the session's QoS 2 window is empty", func() error {
		in, ok := sessionInfo(b, "q2-sub")
		if !ok || in.InflightQoS2 != 0 {
			return fmt.Errorf("session %v, %d QoS 2 in flight", ok, in.InflightQoS2)
		}
		return nil
	})
}

// QoS 2 end to end with paho: every message once, in order, at QoS 2.
func TestQoS2ExactlyOnce(t *testing.T) {
	const n = 300
	b := startBroker(t)
	recv := make(chan paho.Message, n+10)
	opts := paho.NewClientOptions().AddBroker(b.addr).SetClientID("q2-paho").SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(true)
	sub, _ := connect(t, opts)
	defer sub.Disconnect(250)
	wait(t, sub.Subscribe("exact/#", 2, func(_ paho.Client, m paho.Message) { recv <- m }), "subscribe")

	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("q2-paho-pub"))
	defer pub.Disconnect(250)
	toks := make([]paho.Token, n)
	for i := range n {
		toks[i] = pub.Publish("exact/a", 2, false, fmt.Sprint(i))
	}
	for i, tok := range toks {
		wait(t, tok, fmt.Sprintf("publish %d", i))
	}
	for i := range n {
		select {
		case m := <-recv:
			require.Equal(t, fmt.Sprint(i), string(m.Payload()), "message %d: got %q at QoS %d", i, m.Payload(), m.Qos())
			require.Equal(t, byte(2), m.Qos(), "message %d: got %q at QoS %d", i, m.Payload(), m.Qos())
		case <-time.After(waitFor):
			require.Failf(t, "timed out", "received %d of %d", i, n)
		}
	}
	testutil.Eventually(t, waitFor, "every exchange completed", func() error {
		if in, _ := sessionInfo(b, "q2-paho"); in.InflightQoS2 != 0 {
			return fmt.Errorf("%d QoS 2 in flight", in.InflightQoS2)
		}
		return nil
	})
	select {
	case m := <-recv:
		require.Failf(t, "duplicate delivery", "a duplicate: %q", m.Payload())
	default:
	}
}

// QoS 0 messages reach a connected durable subscriber (they are not stored), and a retained
// message is sent on subscribe with its RETAIN flag; QoS 1 messages on the same topics still
// come through Strata.
func TestQoS0AndRetainedToDurableSubscriber(t *testing.T) {
	const n = 50
	b := startBroker(t)
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("q0-pub"))
	defer pub.Disconnect(250)
	wait(t, pub.Publish("live/r", 1, true, "kept"), "retained publish")

	recv := make(chan paho.Message, 2*n)
	opts := paho.NewClientOptions().AddBroker(b.addr).SetClientID("q0-sub").SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(true)
	sub, _ := connect(t, opts)
	defer sub.Disconnect(250)
	wait(t, sub.Subscribe("live/#", 1, func(_ paho.Client, m paho.Message) { recv <- m }), "subscribe")
	next := func(what string) paho.Message {
		t.Helper()
		select {
		case m := <-recv:
			return m
		case <-time.After(waitFor):
			require.Failf(t, "timed out", "%s: nothing received", what)
			return nil
		}
	}
	m := next("retained")
	require.Equal(t, "kept", string(m.Payload()), "retained: got %q retained=%v", m.Payload(), m.Retained())
	require.True(t, m.Retained(), "retained: got %q retained=%v", m.Payload(), m.Retained())
	for i := range n {
		wait(t, pub.Publish("live/x", 0, false, fmt.Sprint(i)), "publish")
	}
	for i := range n {
		m := next(fmt.Sprintf("QoS 0 message %d", i))
		require.Equal(t, fmt.Sprint(i), string(m.Payload()), "QoS 0 message %d: got %q QoS %d retained=%v", i, m.Payload(), m.Qos(), m.Retained())
		require.Equal(t, byte(0), m.Qos(), "QoS 0 message %d: got %q QoS %d retained=%v", i, m.Payload(), m.Qos(), m.Retained())
		require.False(t, m.Retained(), "QoS 0 message %d: got %q QoS %d retained=%v", i, m.Payload(), m.Qos(), m.Retained())
	}
	before := b.store.Metrics().Deliveries
	wait(t, pub.Publish("live/x", 1, false, "q1"), "QoS 1 publish")
	m = next("QoS 1")
	require.Equal(t, "q1", string(m.Payload()), "QoS 1: got %q QoS %d", m.Payload(), m.Qos())
	require.Equal(t, byte(1), m.Qos(), "QoS 1: got %q QoS %d", m.Payload(), m.Qos())
	d := b.store.Metrics().Deliveries
	require.Equal(t, before+1, d, "Strata deliveries %d → %d, want one more", before, d)
	select {
	case m := <-recv:
		require.Failf(t, "extra delivery", "an extra message: %q", m.Payload())
	default:
	}
}
