package session_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/session"
)

// A broker's hooks, reduced to calls: a client connects with a durable session, subscribes,
// receives what was published while it was away, and acknowledges it.
func Example() {
	dir, _ := os.MkdirTemp("", "strata-session-example")
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	store, err := session.Open(ctx, db, &session.Options{Owner: "broker-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	// CONNECT with clean start = false and a session expiry interval.
	s, present, err := store.Connect(ctx, "sensor-reader", session.ConnectOptions{Expiry: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("session present:", present)
	// SUBSCRIBE.
	if err := s.Subscribe(ctx, "sensors/+/temp", session.SubscribeOptions{QoS: 1}); err != nil {
		log.Fatal(err)
	}
	// A PUBLISH from another client: stored only if a durable session wants it.
	m := ds.Message{ClientID: "sensor-7", Topic: "sensors/7/temp", QoS: 1, Payload: []byte("21.5")}
	if store.Wanted(m.Topic) {
		if _, err := db.Store(ctx, m); err != nil {
			log.Fatal(err)
		}
	}
	// The connection's write loop: deliver, then the read loop acknowledges.
	batch, err := s.Next(ctx, 100)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range batch {
		fmt.Printf("PUBLISH %s %q qos=%d packet=%d dup=%v\n", d.Message.Topic, d.Message.Payload, d.QoS, d.PacketID, d.Dup)
		if err := s.Ack(d.PacketID); err != nil { // PUBACK
			log.Fatal(err)
		}
	}
	// DISCONNECT: the session stays for an hour.
	if err := s.Disconnect(ctx); err != nil {
		log.Fatal(err)
	}
	s, present, err = store.Connect(ctx, "sensor-reader", session.ConnectOptions{Expiry: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("session present:", present, "subscriptions:", len(s.Subscriptions()))
	// Output:
	// session present: false
	// PUBLISH sensors/7/temp "21.5" qos=1 packet=1 dup=false
	// session present: true subscriptions: 1
}
