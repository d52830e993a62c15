package mochi

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
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
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := ds.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	so.Owner, so.Logger = "test-broker", logger
	store, err := session.Open(ctx, db, &so)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{Logger: logger})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	h, err := New(Options{Server: srv, DB: db, Store: store, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	// Our own listener on a free port; each connection is handed to mochi as its TCP
	// listener would.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", o.ClientID, tok.Error())
	}
	return c, tok.(*paho.ConnectToken).SessionPresent()
}

func wait(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("%s: timed out", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// An offline durable subscriber receives every QoS 1 message published while it was away,
// in order, once.
func TestOfflineDurableSubscriber(t *testing.T) {
	const n, size = 1000, 1024
	b := startBroker(t)

	type got struct {
		seq int
		err error
	}
	recv := make(chan got, 2*n)
	handler := func(_ paho.Client, m paho.Message) {
		p := m.Payload()
		if len(p) != size || m.Topic() != "sensors/data" {
			recv <- got{err: fmt.Errorf("unexpected message on %q of %d bytes", m.Topic(), len(p))}
			return
		}
		recv <- got{seq: int(binary.BigEndian.Uint32(p))}
	}
	subOpts := func() *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker(b.addr).SetClientID("durable-sub").
			SetCleanSession(false).SetAutoReconnect(false).SetDefaultPublishHandler(handler).
			SetOrderMatters(true)
	}

	// Subscribe with a durable session, then go away.
	sub, present := connect(t, subOpts())
	if present {
		t.Fatal("session present on the first connect")
	}
	wait(t, sub.Subscribe("sensors/+", 1, handler), "subscribe")
	// The subscription is Strata's, not in mochi's in-memory index.
	if _, ok := b.srv.Topics.Subscribers("sensors/data").Subscriptions["durable-sub"]; ok {
		t.Fatal("durable subscription left in mochi's topic index")
	}
	sub.Disconnect(250)

	// Publish while it is offline.
	pub, _ := connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("publisher").SetCleanSession(true))
	payload := make([]byte, size)
	toks := make([]paho.Token, 0, n)
	for i := range n {
		p := append([]byte(nil), payload...)
		binary.BigEndian.PutUint32(p, uint32(i))
		toks = append(toks, pub.Publish("sensors/data", 1, false, p))
	}
	for i, tok := range toks {
		wait(t, tok, fmt.Sprintf("publish %d", i))
	}
	pub.Disconnect(250)

	// Come back: everything, in order, once.
	start := time.Now()
	sub, present = connect(t, subOpts())
	if !present {
		t.Fatal("session not present on reconnect")
	}
	defer sub.Disconnect(250)
	timeout := time.After(15 * time.Second)
	for i := range n {
		select {
		case g := <-recv:
			if g.err != nil {
				t.Fatal(g.err)
			}
			if g.seq != i {
				t.Fatalf("message %d: got sequence %d (out of order or duplicate)", i, g.seq)
			}
		case <-timeout:
			t.Fatalf("received %d of %d messages", i, n)
		}
	}
	t.Logf("%d messages delivered after reconnecting in %v", n, time.Since(start))
	// No duplicate: a sentinel published now by the same publisher (the session delivers a
	// publisher's messages in order) must be the very next message.
	pub, _ = connect(t, paho.NewClientOptions().AddBroker(b.addr).SetClientID("publisher").SetCleanSession(true))
	defer pub.Disconnect(250)
	p := append([]byte(nil), payload...)
	binary.BigEndian.PutUint32(p, uint32(n))
	wait(t, pub.Publish("sensors/data", 1, false, p), "sentinel")
	select {
	case g := <-recv:
		if g.err != nil || g.seq != n {
			t.Fatalf("after all %d: got %+v, want the sentinel %d", n, g, n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sentinel not delivered")
	}
	if m := b.store.Metrics(); m.Deliveries < n+1 {
		t.Fatalf("Strata made %d deliveries, want at least %d (were they mochi's?)", m.Deliveries, n+1)
	}
}
