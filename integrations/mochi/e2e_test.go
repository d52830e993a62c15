package mochi

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/testutil"
	"github.com/strata-mq/strata/session"
	"github.com/stretchr/testify/require"
)

// broker is an in-process mochi server with the Strata hook, on a TCP port of its own.
type broker struct {
	addr  string
	srv   *mqtt.Server
	store *session.Store
}

func startBroker(t *testing.T) *broker {
	t.Helper()
	return startBrokerWith(t, session.Options{})
}

// startBrokerWith is startBroker with the session.Store's options (Owner and Logger are set
// here).
func startBrokerWith(t *testing.T, so session.Options) *broker {
	t.Helper()
	return startBrokerDB(t, nil, so)
}

// startBrokerDB is startBrokerWith over a DB opened with dbo.
func startBrokerDB(t *testing.T, dbo *ds.Options, so session.Options) *broker {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := ds.Open(t.TempDir(), dbo)
	require.NoError(t, err)
	ctx := context.Background()
	so.Owner, so.Logger = "test-broker", logger
	store, err := session.Open(ctx, db, &so)
	if err != nil {
		db.Close()
	}
	require.NoError(t, err)
	srv := mqtt.New(&mqtt.Options{Logger: logger})
	require.NoError(t, srv.AddHook(new(auth.AllowHook), nil))
	h, err := New(Options{Server: srv, DB: db, Store: store, Logger: logger})
	require.NoError(t, err)
	require.NoError(t, srv.AddHook(h, nil))
	require.NoError(t, srv.Serve())
	// Our own listener on a free port; each connection is handed to mochi as its TCP
	// listener would.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = srv.EstablishConnection("tcp", c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
		wg.Wait()
		store.Close()
		db.Close()
	})
	return &broker{addr: "tcp://" + ln.Addr().String(), srv: srv, store: store}
}

// connect connects a client and returns it with the CONNACK's session present flag.
func connect(t *testing.T, o *paho.ClientOptions) (paho.Client, bool) {
	t.Helper()
	c := paho.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect %s: %v", o.ClientID, tok.Error())
	require.NoError(t, tok.Error(), "connect %s: %v", o.ClientID, tok.Error())
	return c, tok.(*paho.ConnectToken).SessionPresent()
}

func wait(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	require.True(t, tok.WaitTimeout(10*time.Second), "%s: timed out", what)
	require.NoError(t, tok.Error(), "%s", what)
}

// An offline durable subscriber receives every QoS 1 message of 1 KiB that 10 publishers
// sent while it was away (10,000): each publisher's in order, none twice.
func TestOfflineDurableSubscriber(t *testing.T) {
	const pubs, perPub, size = 10, 1000, 1024
	const n = pubs * perPub
	b := startBroker(t)

	type got struct {
		pub, seq int
		dup      bool
		err      error
	}
	recv := make(chan got, 2*n)
	handler := func(_ paho.Client, m paho.Message) {
		p := m.Payload()
		if len(p) != size || m.Topic() != "sensors/data" {
			recv <- got{err: fmt.Errorf("unexpected message on %q of %d bytes", m.Topic(), len(p))}
			return
		}
		recv <- got{pub: int(p[0]), seq: int(binary.BigEndian.Uint32(p[1:])), dup: m.Duplicate()}
	}
	subOpts := func() *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker(b.addr).SetClientID("durable-sub").
			SetCleanSession(false).SetAutoReconnect(false).SetDefaultPublishHandler(handler).
			SetOrderMatters(true)
	}

	// Subscribe with a durable session, then go away.
	sub, present := connect(t, subOpts())
	require.False(t, present, "session present on the first connect")
	wait(t, sub.Subscribe("sensors/+", 1, handler), "subscribe")
	// The subscription is Strata's, not in mochi's in-memory index.
	_, ok := b.srv.Topics.Subscribers("sensors/data").Subscriptions["durable-sub"]
	require.False(t, ok, "durable subscription left in mochi's topic index")
	sub.Disconnect(250)

	// Publish while it is offline: 10 publishers at once, each with many in flight.
	message := func(pub, seq int) []byte {
		p := make([]byte, size)
		p[0] = byte(pub)
		binary.BigEndian.PutUint32(p[1:], uint32(seq))
		return p
	}
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for pi := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := paho.NewClient(paho.NewClientOptions().AddBroker(b.addr).SetClientID(fmt.Sprintf("publisher-%d", pi)).
				SetCleanSession(true).SetAutoReconnect(false))
			if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("publisher %d: connect: %v", pi, tok.Error())
				return
			}
			defer c.Disconnect(250)
			toks := make([]paho.Token, 0, perPub)
			for i := range perPub {
				toks = append(toks, c.Publish("sensors/data", 1, false, message(pi, i)))
			}
			for i, tok := range toks {
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("publisher %d: publish %d: %v", pi, i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	// Come back: everything, each publisher's in order, once.
	start := time.Now()
	sub, present = connect(t, subOpts())
	require.True(t, present, "session not present on reconnect")
	defer sub.Disconnect(250)
	next := make([]int, pubs)
	timeout := time.After(60 * time.Second)
	for i := range n {
		select {
		case g := <-recv:
			require.NoError(t, g.err)
			require.Less(t, g.pub, pubs, "message %d: publisher %d sequence %d, want %d (out of order or duplicate)", i, g.pub, g.seq, next[g.pub%pubs])
			require.Equal(t, next[g.pub], g.seq, "message %d: publisher %d sequence %d, want %d (out of order or duplicate)", i, g.pub, g.seq, next[g.pub%pubs])
			require.False(t, g.dup, "message %d: DUP set on a first delivery", i)
			next[g.pub]++
		case <-timeout:
			require.Failf(t, "timed out", "received %d of %d messages", i, n)
		}
	}
	t.Logf("%d messages delivered after reconnecting in %v", n, time.Since(start))
	// No duplicate: a sentinel published now by a publisher (the session delivers a
	// publisher's messages in order) must be the very next message.
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("publisher-0").SetCleanSession(true))
	defer pub.Disconnect(250)
	wait(t, pub.Publish("sensors/data", 1, false, message(0, perPub)), "sentinel")
	select {
	case g := <-recv:
		require.NoError(t, g.err, "after all %d: got %+v, want the sentinel", n, g)
		require.Equal(t, 0, g.pub, "after all %d: got %+v, want the sentinel", n, g)
		require.Equal(t, perPub, g.seq, "after all %d: got %+v, want the sentinel", n, g)
	case <-time.After(10 * time.Second):
		require.Fail(t, "sentinel not delivered")
	}
	m := b.store.Metrics()
	require.GreaterOrEqual(t, m.Deliveries, uint64(n+1), "Strata made %d deliveries, want at least %d (were they mochi's?)", m.Deliveries, n+1)
}

// A second connection with the same client ID takes the session over: the first is
// disconnected, and a delivery it had not acknowledged goes to the second, marked DUP.
func TestSessionTakeOver(t *testing.T) {
	b := startBroker(t)
	recv1, recv2 := make(chan paho.Message, 10), make(chan paho.Message, 10)
	lost := make(chan struct{})
	o1 := paho.NewClientOptions().AddBroker(b.addr).SetClientID("tk").SetCleanSession(false).
		SetAutoReconnect(false).SetAutoAckDisabled(true). // holds its PUBACK
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { recv1 <- m }).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	c1, _ := connect(t, o1)
	wait(t, c1.Subscribe("tk/#", 1, nil), "subscribe")
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("tk-pub"))
	defer pub.Disconnect(250)
	wait(t, pub.Publish("tk/a", 1, false, "m1"), "publish m1")
	select {
	case m := <-recv1:
		require.Equal(t, "m1", string(m.Payload()), "first connection got %q dup=%v", m.Payload(), m.Duplicate())
		require.False(t, m.Duplicate(), "first connection got %q dup=%v", m.Payload(), m.Duplicate())
	case <-time.After(waitFor):
		require.Fail(t, "first connection received nothing")
	}

	o2 := paho.NewClientOptions().AddBroker(b.addr).SetClientID("tk").SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { recv2 <- m })
	c2, present := connect(t, o2)
	defer c2.Disconnect(250)
	require.True(t, present, "session not present for the second connection")
	select {
	case <-lost:
	case <-time.After(waitFor):
		require.Fail(t, "the first connection was not disconnected")
	}
	wait(t, pub.Publish("tk/a", 1, false, "m2"), "publish m2")
	for _, want := range []struct {
		payload string
		dup     bool
	}{{"m1", true}, {"m2", false}} {
		select {
		case m := <-recv2:
			require.Equal(t, want.payload, string(m.Payload()), "second connection got %q dup=%v, want %q dup=%v", m.Payload(), m.Duplicate(), want.payload, want.dup)
			require.Equal(t, want.dup, m.Duplicate(), "second connection got %q dup=%v, want %q dup=%v", m.Payload(), m.Duplicate(), want.payload, want.dup)
		case <-time.After(waitFor):
			require.Failf(t, "timed out", "second connection: %s not received", want.payload)
		}
	}
}

// A durable client that publishes QoS 2 messages to its own subscription, many in flight
// both ways, uses the same packet IDs in both directions (MQTT keeps them apart, mochi's
// inflight map does not): every publish completes and every message arrives once.
func TestPacketIDsOfBothDirections(t *testing.T) {
	const n = 300
	b := startBroker(t)
	recv := make(chan string, 2*n)
	o := paho.NewClientOptions().AddBroker(b.addr).SetClientID("both").SetCleanSession(false).
		SetAutoReconnect(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { recv <- string(m.Payload()) })
	c, _ := connect(t, o)
	defer c.Disconnect(250)
	wait(t, c.Subscribe("both/#", 2, nil), "subscribe")
	toks := make([]paho.Token, n)
	for i := range n {
		toks[i] = c.Publish("both/x", 2, false, fmt.Sprint(i))
	}
	for i, tok := range toks {
		wait(t, tok, fmt.Sprintf("publish %d", i))
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case p := <-recv:
			require.False(t, seen[p], "%q delivered twice", p)
			seen[p] = true
		case <-time.After(waitFor):
			require.Failf(t, "timed out", "received %d of %d", len(seen), n)
		}
	}
	testutil.Eventually(t, waitFor, "every exchange completed", func() error {
		if in, _ := sessionInfo(b, "both"); in.InflightQoS2 != 0 {
			return fmt.Errorf("%d QoS 2 in flight", in.InflightQoS2)
		}
		return nil
	})
}

// A QoS 1 message the DB refuses (here: over its storage quota) gets no PUBACK and reaches
// nobody: the hook rejects it and closes the publisher's connection (on MQTT 3.1.1 mochi
// would acknowledge an OnPublish error other than a rejection).
func TestStoreFailureIsNotAcknowledged(t *testing.T) {
	b := startBrokerDB(t, &ds.Options{StorageQuota: 1}, session.Options{})
	durable, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("quota-durable").SetCleanSession(false))
	defer durable.Disconnect(250)
	got := make(chan string, 10)
	wait(t, durable.Subscribe("quota/#", 1, func(_ paho.Client, m paho.Message) { got <- "durable " + string(m.Payload()) }), "subscribe")
	plain, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("quota-plain"))
	defer plain.Disconnect(250)
	wait(t, plain.Subscribe("quota/#", 1, func(_ paho.Client, m paho.Message) { got <- "plain " + string(m.Payload()) }), "subscribe")

	lost := make(chan error, 1)
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("quota-pub").SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }))
	defer pub.Disconnect(0)
	tok := pub.Publish("quota/a", 1, false, "refused")
	select {
	case <-lost:
	case <-time.After(waitFor):
		require.Fail(t, "the publisher's connection was not closed")
	}
	require.False(t, tok.WaitTimeout(waitFor) && tok.Error() == nil, "the refused message was acknowledged")
	// QoS 0 is not stored and still goes through: it arrives after anything that would
	// have been delivered of the refused message.
	p2, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("quota-pub2"))
	defer p2.Disconnect(250)
	wait(t, p2.Publish("quota/b", 0, false, "sentinel"), "sentinel")
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case m := <-got:
			require.False(t, strings.HasSuffix(m, "refused"), "the refused message was delivered: %s", m)
			seen[m] = true
		case <-time.After(waitFor):
			require.Failf(t, "timed out", "sentinels: got %v", seen)
		}
	}
}
