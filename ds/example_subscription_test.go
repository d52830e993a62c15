package ds_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/strata-mq/strata/ds"
)

// A durable session subscribes to a filter: Next waits for matching messages (a Store wakes
// it once they are durable), Ack releases them, and Position is what to keep with the
// session to resume after a restart without missing an unacknowledged message.
func ExampleDB_Subscribe() {
	dir, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, &ds.Options{NShards: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	// From now on: messages stored before this point are not delivered.
	from, err := db.TailPosition()
	if err != nil {
		log.Fatal(err)
	}
	sub, err := db.Subscribe("building/+/room/+/temp", from, &ds.SubscribeOptions{MaxUnacked: 100})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	// The publish path, elsewhere in the broker.
	go func() {
		for i := 0; i < 3; i++ {
			db.Store(ctx, ds.Message{ClientID: "sensor-17", Topic: fmt.Sprintf("building/1/room/%d/temp", i), QoS: 1, Payload: []byte("21°C")})
			db.Store(ctx, ds.Message{ClientID: "sensor-17", Topic: "building/1/door", Payload: []byte("open")})
		}
	}()

	for n := 0; n < 3; {
		msgs, err := sub.Next(ctx, 10) // waits; a *ds.LossError would report data dropped unread
		if err != nil {
			log.Fatal(err)
		}
		for _, m := range msgs {
			fmt.Println(m.Topic, string(m.Payload))
			// ... send to the client; on its PUBACK:
			if err := sub.Ack(ds.RefOf(m)); err != nil {
				log.Fatal(err)
			}
		}
		n += len(msgs)
	}

	// Keep the position with the session; resume from it after a restart.
	saved, _ := sub.Position().MarshalBinary()
	pos, err := ds.UnmarshalPosition(saved)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("position covers", pos.NShards(), "shards")
	// Output:
	// building/1/room/0/temp 21°C
	// building/1/room/1/temp 21°C
	// building/1/room/2/temp 21°C
	// position covers 4 shards
}

// A reader of iterators waits for new durable messages with a Watcher instead of polling: it
// names the streams that changed, up to which timestamp.
func ExampleDB_Watch() {
	dir, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, &ds.Options{NShards: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	w, err := db.Watch()
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	go db.Store(context.Background(), ds.Message{ClientID: "c", Topic: "a/b", Payload: []byte("x")})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	changes, err := w.Next(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range changes {
		for _, sc := range c.Streams {
			it, _ := db.Iterator(sc.Stream, "a/#", time.Time{})
			msgs, _, _ := db.Next(ctx, it, 10)
			fmt.Println("shard", c.Shard, "stream", sc.Stream.Pattern, "read", len(msgs), "message(s)")
		}
	}
	// Output:
	// shard 0 stream a/b read 1 message(s)
}
