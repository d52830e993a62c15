package mochi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// MQTT 5 clients (paho.golang) through the hook: session expiry, Receive Maximum,
// subscription identifiers and no-local.

const waitFor = 5 * time.Second // bound of every wait on a delivery or condition

// client5 is an MQTT 5 client and the PUBLISHes it received.
type client5 struct {
	*paho5.Client
	id   string
	recv chan *paho5.Publish
}

type conn5Opts struct {
	cleanStart bool
	expiry     uint32               // session expiry interval, seconds (0: not durable)
	receiveMax uint16               // 0: not sent
	manualAck  bool                 // the test acknowledges QoS 1 deliveries itself (Client.Ack)
	onRecv     func(*paho5.Publish) // called in paho's router goroutine on each PUBLISH
}

// connect5 connects an MQTT 5 client to b and returns it with its CONNACK.
func connect5(t *testing.T, b *broker, id string, o conn5Opts) (*client5, *paho5.Connack) {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(b.addr, "tcp://"))
	require.NoError(t, err)
	c := &client5{id: id, recv: make(chan *paho5.Publish, 1000)}
	c.Client = paho5.NewClient(paho5.ClientConfig{
		Conn:                       nc,
		EnableManualAcknowledgment: o.manualAck,
		SendAcksInterval:           5 * time.Millisecond,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			if o.onRecv != nil {
				o.onRecv(pr.Packet)
			}
			select {
			case c.recv <- pr.Packet:
			default:
				t.Errorf("%s: receive buffer full", id) // not require: paho's goroutine
			}
			return true, nil
		}},
	})
	cp := &paho5.Connect{ClientID: id, CleanStart: o.cleanStart, KeepAlive: 30, Properties: &paho5.ConnectProperties{}}
	if o.expiry > 0 {
		cp.Properties.SessionExpiryInterval = &o.expiry
	}
	if o.receiveMax > 0 {
		cp.Properties.ReceiveMaximum = &o.receiveMax
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	require.NoError(t, err, "connect %s", id)
	t.Cleanup(func() { c.disconnect() })
	return c, ca
}

// disconnect sends DISCONNECT (normal) and closes; calling it again does nothing harmful.
func (c *client5) disconnect() { _ = c.Disconnect(&paho5.Disconnect{ReasonCode: 0}) }

func (c *client5) subscribe(t *testing.T, subID int, opts ...paho5.SubscribeOptions) {
	t.Helper()
	s := &paho5.Subscribe{Subscriptions: opts}
	if subID > 0 {
		s.Properties = &paho5.SubscribeProperties{SubscriptionIdentifier: &subID}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := c.Subscribe(ctx, s)
	require.NoError(t, err, "%s: subscribe %+v", c.id, opts)
	for i, r := range sa.Reasons {
		require.Equal(t, byte(1), r, "%s: subscribe %q: reason code %#x, want granted QoS 1", c.id, opts[i].Topic, r)
	}
}

// publish publishes at QoS 1 and waits for the PUBACK.
func (c *client5) publish(t *testing.T, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	r, err := c.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	require.NoError(t, err, "%s: publish %s", c.id, topic)
	require.Less(t, r.ReasonCode, byte(0x80), "%s: publish %s: reason code %#x", c.id, topic, r.ReasonCode)
}

// next returns the next PUBLISH received, failing the test after waitFor.
func (c *client5) next(t *testing.T, what string) *paho5.Publish {
	t.Helper()
	select {
	case p := <-c.recv:
		return p
	case <-time.After(waitFor):
		require.Failf(t, "timed out", "%s: %s: nothing received in %v", c.id, what, waitFor)
		return nil
	}
}

func sessionInfo(b *broker, id string) (session.Info, bool) {
	for _, in := range b.store.List() {
		if in.ClientID == id {
			return in, true
		}
	}
	return session.Info{}, false
}

// A session resumed before its expiry interval is present, with its subscription.
func TestMQTT5ResumeBeforeExpiry(t *testing.T) {
	b := startBrokerWith(t, session.Options{ExpiryInterval: 50 * time.Millisecond})
	// 30 s expiry: it cannot expire during the test.
	o := conn5Opts{cleanStart: false, expiry: 30}
	sub, ca := connect5(t, b, "resume5", o)
	require.False(t, ca.SessionPresent, "session present on the first connect")
	sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: "resume/+", QoS: 1})
	sub.disconnect()
	testutil.Eventually(t, waitFor, "session disconnected", func() error {
		if in, ok := sessionInfo(b, "resume5"); !ok || in.Connected {
			return fmt.Errorf("listed %v, connected %v", ok, in.Connected)
		}
		return nil
	})

	pub, _ := connect5(t, b, "resume5-pub", conn5Opts{cleanStart: true})
	pub.publish(t, "resume/a", "while away")

	sub, ca = connect5(t, b, "resume5", o)
	require.True(t, ca.SessionPresent, "session not present when resumed before its expiry")
	p := sub.next(t, "message published while away")
	require.Equal(t, "resume/a", p.Topic, "got %s %q", p.Topic, p.Payload)
	require.Equal(t, "while away", string(p.Payload), "got %s %q", p.Topic, p.Payload)
}

// A session that expired is gone: CONNACK session present = false for clean start = false,
// and its old subscription delivers nothing.
func TestMQTT5SessionExpiry(t *testing.T) {
	b := startBrokerWith(t, session.Options{ExpiryInterval: 50 * time.Millisecond})
	o := conn5Opts{cleanStart: false, expiry: 1}
	sub, ca := connect5(t, b, "expire5", o)
	require.False(t, ca.SessionPresent, "session present on the first connect")
	sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: "expire/+", QoS: 1})
	in, ok := sessionInfo(b, "expire5")
	require.True(t, ok, "session after subscribing: %+v (found %v)", in, ok)
	require.Equal(t, []string{"expire/+"}, in.Subscriptions, "session after subscribing: %+v (found %v)", in, ok)
	disconnected := time.Now()
	sub.disconnect()
	testutil.Eventually(t, waitFor, "session expired", func() error {
		if _, ok := sessionInfo(b, "expire5"); ok {
			return errors.New("still listed")
		}
		return nil
	})
	d := time.Since(disconnected)
	require.GreaterOrEqual(t, d, 900*time.Millisecond, "session gone %v after its disconnect, before its 1 s expiry", d)
	m := b.store.Metrics()
	require.Equal(t, uint64(1), m.Expired, "Metrics.Expired = %d, want 1", m.Expired)

	sub, ca = connect5(t, b, "expire5", o)
	require.False(t, ca.SessionPresent, "session present after it expired")
	in, ok = sessionInfo(b, "expire5")
	require.True(t, ok, "new session: %+v (found %v), want one without subscriptions", in, ok)
	require.Empty(t, in.Subscriptions, "new session: %+v (found %v), want one without subscriptions", in, ok)
	pub, _ := connect5(t, b, "expire5-pub", conn5Opts{cleanStart: true})
	pub.publish(t, "expire/a", "after expiry")
	// A sentinel on a new filter, published after by the same publisher: when it arrives,
	// the message to the expired filter would have arrived before it.
	sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: "sentinel/expire5", QoS: 1})
	pub.publish(t, "sentinel/expire5", "sentinel")
	p := sub.next(t, "sentinel")
	require.Equal(t, "sentinel/expire5", p.Topic, "received %s %q after the session expired, want only the sentinel", p.Topic, p.Payload)
}

// A client with Receive Maximum 5 that does not acknowledge has at most 5 QoS 1 deliveries
// in flight; once it acknowledges, the rest come, in order.
func TestMQTT5ReceiveMaximum(t *testing.T) {
	const n, recvMax = 20, 5
	b := startBrokerWith(t, session.Options{})
	var received, acked atomic.Int64
	violation := make(chan string, n)
	sub, _ := connect5(t, b, "recvmax5", conn5Opts{cleanStart: true, expiry: 60, receiveMax: recvMax, manualAck: true,
		onRecv: func(p *paho5.Publish) {
			k := received.Add(1)
			if a := acked.Load(); k-a > recvMax {
				violation <- fmt.Sprintf("delivery %d received with only %d acknowledged", k, a)
			}
		}})
	sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: "recvmax/t", QoS: 1})

	pub, _ := connect5(t, b, "recvmax5-pub", conn5Opts{cleanStart: true})
	for i := range n {
		pub.publish(t, "recvmax/t", fmt.Sprint(i))
	}

	check := func(p *paho5.Publish, i int) {
		t.Helper()
		require.Equal(t, byte(1), p.QoS, "delivery %d: QoS %d payload %q", i, p.QoS, p.Payload)
		require.Equal(t, fmt.Sprint(i), string(p.Payload), "delivery %d: QoS %d payload %q", i, p.QoS, p.Payload)
	}
	var held []*paho5.Publish
	for i := range recvMax {
		p := sub.next(t, fmt.Sprintf("delivery %d of the first %d", i, recvMax))
		check(p, i)
		held = append(held, p)
	}
	// Nothing more while none is acknowledged. (A window, not a proof; the Store's count
	// of deliveries confirms it.)
	select {
	case p := <-sub.recv:
		require.Failf(t, "delivery beyond Receive Maximum", "delivery %q beyond Receive Maximum %d with none acknowledged", p.Payload, recvMax)
	case v := <-violation:
		require.Fail(t, v)
	case <-time.After(300 * time.Millisecond):
	}
	d := b.store.Metrics().Deliveries
	require.Equal(t, uint64(recvMax), d, "Store made %d deliveries with none acknowledged, want %d", d, recvMax)

	for i := recvMax; i < n+recvMax; i++ {
		// Acknowledge the oldest, then take the next.
		acked.Add(1)
		require.NoError(t, sub.Ack(held[0]))
		held = held[1:]
		if i >= n {
			continue
		}
		p := sub.next(t, fmt.Sprintf("delivery %d", i))
		check(p, i)
		held = append(held, p)
	}
	select {
	case v := <-violation:
		require.Fail(t, v)
	default:
	}
	k := received.Load()
	require.Equal(t, int64(n), k, "received %d deliveries, want %d", k, n)
}

// A subscription identifier is carried by the PUBLISHes of its subscription.
func TestMQTT5SubscriptionIdentifier(t *testing.T) {
	b := startBrokerWith(t, session.Options{})
	sub, _ := connect5(t, b, "subid5", conn5Opts{cleanStart: true, expiry: 60})
	sub.subscribe(t, 7, paho5.SubscribeOptions{Topic: "subid/+", QoS: 1})
	sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: "noid/+", QoS: 1})
	pub, _ := connect5(t, b, "subid5-pub", conn5Opts{cleanStart: true})
	pub.publish(t, "subid/a", "with id")
	pub.publish(t, "noid/a", "without id")

	p := sub.next(t, "message of the subscription with identifier 7")
	require.Equal(t, "subid/a", p.Topic, "got %s %q first", p.Topic, p.Payload)
	require.NotNil(t, p.Properties, "PUBLISH of the subscription with identifier 7 has properties %+v", p.Properties)
	require.NotNil(t, p.Properties.SubscriptionIdentifier, "PUBLISH of the subscription with identifier 7 has properties %+v", p.Properties)
	require.Equal(t, 7, *p.Properties.SubscriptionIdentifier, "PUBLISH of the subscription with identifier 7 has properties %+v", p.Properties)
	p = sub.next(t, "message of the subscription without identifier")
	require.Equal(t, "noid/a", p.Topic, "got %s %q", p.Topic, p.Payload)
	if p.Properties != nil && p.Properties.SubscriptionIdentifier != nil {
		require.Failf(t, "subscription identifier on a subscription without one", "PUBLISH of a subscription without identifier carries identifier %d", *p.Properties.SubscriptionIdentifier)
	}
}

// A no-local subscription does not receive its client's own publishes, but others'.
func TestMQTT5NoLocal(t *testing.T) {
	b := startBrokerWith(t, session.Options{})
	c, _ := connect5(t, b, "nolocal5", conn5Opts{cleanStart: true, expiry: 60})
	c.subscribe(t, 0,
		paho5.SubscribeOptions{Topic: "nolocal/t", QoS: 1, NoLocal: true},
		paho5.SubscribeOptions{Topic: "nolocal/sentinel", QoS: 1})
	other, _ := connect5(t, b, "nolocal5-other", conn5Opts{cleanStart: true})

	other.publish(t, "nolocal/t", "from other")
	p := c.next(t, "another client's publish")
	require.Equal(t, "nolocal/t", p.Topic, "got %s %q, want another client's publish", p.Topic, p.Payload)
	require.Equal(t, "from other", string(p.Payload), "got %s %q, want another client's publish", p.Topic, p.Payload)
	// Its own publish, then a sentinel to a subscription without no-local: the session
	// delivers a publisher's messages in order, so the own publish would come first.
	c.publish(t, "nolocal/t", "own")
	c.publish(t, "nolocal/sentinel", "sentinel")
	p = c.next(t, "sentinel")
	require.Equal(t, "nolocal/sentinel", p.Topic, "got %s %q, want only the sentinel (own publish delivered to a no-local subscription)", p.Topic, p.Payload)
}

// A subscription made while connected, after the connection's delivery goroutine went
// waiting for messages, receives (regression: a Session.Next already waiting did not take
// a subscription added after it started; the hook now calls Next again after a SUBSCRIBE).
func TestMQTT5SubscribeWhileConnected(t *testing.T) {
	b := startBrokerWith(t, session.Options{})
	sub, _ := connect5(t, b, "live5", conn5Opts{cleanStart: true, expiry: 60})
	pub, _ := connect5(t, b, "live5-pub", conn5Opts{cleanStart: true})
	for _, f := range []string{"live/a", "live/b", "live/c"} {
		sub.subscribe(t, 0, paho5.SubscribeOptions{Topic: f, QoS: 1})
		pub.publish(t, f, "m")
		p := sub.next(t, "message to "+f)
		require.Equal(t, f, p.Topic, "got %s %q, want a message to %s", p.Topic, p.Payload, f)
	}
}

// QoS 0 messages to a connected MQTT 5 durable session carry the subscription identifier
// and respect no-local, like the stored deliveries.
func TestMQTT5QoS0SubscriptionIdentifierAndNoLocal(t *testing.T) {
	b := startBrokerWith(t, session.Options{})
	c, _ := connect5(t, b, "q0-5", conn5Opts{cleanStart: true, expiry: 60})
	c.subscribe(t, 9, paho5.SubscribeOptions{Topic: "q0/t", QoS: 1, NoLocal: true})
	c.subscribe(t, 0, paho5.SubscribeOptions{Topic: "q0/sentinel", QoS: 1})
	other, _ := connect5(t, b, "q0-5-other", conn5Opts{cleanStart: true})
	publish0 := func(pc *client5, topic, payload string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		_, err := pc.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 0, Payload: []byte(payload)})
		require.NoError(t, err, "%s: publish %s", pc.id, topic)
	}
	publish0(other, "q0/t", "from other")
	p := c.next(t, "another client's QoS 0 publish")
	require.Equal(t, "q0/t", p.Topic, "got %s %q QoS %d properties %+v, want QoS 0 with subscription identifier 9", p.Topic, p.Payload, p.QoS, p.Properties)
	require.Equal(t, byte(0), p.QoS, "got %s %q QoS %d properties %+v, want QoS 0 with subscription identifier 9", p.Topic, p.Payload, p.QoS, p.Properties)
	require.NotNil(t, p.Properties, "got %s %q QoS %d properties %+v, want QoS 0 with subscription identifier 9", p.Topic, p.Payload, p.QoS, p.Properties)
	require.NotNil(t, p.Properties.SubscriptionIdentifier, "got %s %q QoS %d properties %+v, want QoS 0 with subscription identifier 9", p.Topic, p.Payload, p.QoS, p.Properties)
	require.Equal(t, 9, *p.Properties.SubscriptionIdentifier, "got %s %q QoS %d properties %+v, want QoS 0 with subscription identifier 9", p.Topic, p.Payload, p.QoS, p.Properties)
	// Its own QoS 0 publish, then a sentinel from the same connection: QoS 0 messages of one
	// publisher are queued in order, so the own publish would come first.
	publish0(c, "q0/t", "own")
	publish0(c, "q0/sentinel", "sentinel")
	p = c.next(t, "sentinel")
	require.Equal(t, "q0/sentinel", p.Topic, "got %s %q, want only the sentinel (own QoS 0 publish delivered to a no-local subscription)", p.Topic, p.Payload)
}
