package ds_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/strata-mq/strata/ds"
)

// A broker stores messages as they are published and a durable session reads the ones that
// match its subscription, in batches, keeping its position as bytes.
func Example() {
	dir, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(dir)

	db, err := ds.Open(dir, &ds.Options{NShards: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	// The publish path: Store returns once the message is durable.
	for i := 0; i < 3; i++ {
		_, err := db.Store(ctx, ds.Message{
			ClientID: "sensor-17",
			Topic:    fmt.Sprintf("building/1/room/%d/temp", i),
			QoS:      1,
			Payload:  []byte(fmt.Sprintf("%d°C", 20+i)),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	// A session subscribed to building/1/room/+/temp since the beginning.
	filter := "building/1/room/+/temp"
	streams, err := db.Streams(filter, time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range streams {
		it, err := db.Iterator(s, filter, time.Time{})
		if err != nil {
			log.Fatal(err)
		}
		for {
			msgs, next, err := db.Next(ctx, it, 100)
			if errors.Is(err, ds.ErrEndOfStream) {
				break // sealed generation read to its end: ask Streams again
			}
			if err != nil {
				log.Fatal(err)
			}
			if len(msgs) == 0 {
				break // nothing more yet: wait for the broker's publish signal or a timer
			}
			for _, m := range msgs {
				fmt.Printf("%s %s\n", m.Topic, m.Payload)
			}
			it = next
			// Persist the position with the session; resume with ds.UnmarshalIterator.
			if _, err := it.MarshalBinary(); err != nil {
				log.Fatal(err)
			}
		}
	}
	// Output:
	// building/1/room/0/temp 20°C
	// building/1/room/1/temp 21°C
	// building/1/room/2/temp 22°C
}

// Iterators are values: a session keeps the bytes and resumes after a restart.
func ExampleUnmarshalIterator() {
	dir, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(dir)
	ctx := context.Background()

	db, _ := ds.Open(dir, &ds.Options{NShards: 1})
	db.Store(ctx, ds.Message{ClientID: "c", Topic: "a/b", Payload: []byte("one")},
		ds.Message{ClientID: "c", Topic: "a/b", Payload: []byte("two")})
	streams, _ := db.Streams("a/#", time.Time{})
	it, _ := db.Iterator(streams[0], "a/#", time.Time{})
	msgs, it, _ := db.Next(ctx, it, 1)
	fmt.Printf("read %s\n", msgs[0].Payload)
	saved, _ := it.MarshalBinary()
	db.Close()

	db, _ = ds.Open(dir, nil) // NShards comes from the DB
	defer db.Close()
	it, err := ds.UnmarshalIterator(saved)
	if err != nil {
		log.Fatal(err)
	}
	msgs, _, _ = db.Next(ctx, it, 10)
	fmt.Printf("after restart %s\n", msgs[0].Payload)
	// Output:
	// read one
	// after restart two
}
