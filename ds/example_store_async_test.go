package ds_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/strata-mq/strata/ds"
)

// A broker connection's read loop hands each QoS 1 PUBLISH to StoreAsync and goes on reading;
// the PUBACKs are written as the messages become durable, in the order the PUBLISHes came (the
// done calls of one publisher come in that order). done runs on the shard's goroutine, so it
// only hands the packet ID to the connection's writer.
func ExampleDB_StoreAsync() {
	dir, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(dir)
	db, err := ds.Open(dir, &ds.Options{NShards: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	const inFlight = 3 // the client's Receive Maximum
	pubacks := make(chan uint16, inFlight)
	for packetID := uint16(1); packetID <= 3; packetID++ {
		m := ds.Message{ClientID: "sensor-17", Topic: "building/1/temp", QoS: 1, Payload: []byte("21°C")}
		err := db.StoreAsync(context.Background(), m, func(_ ds.Ref, err error) {
			if err != nil {
				log.Printf("packet %d not stored: %v", packetID, err) // a broker closes the connection
				return
			}
			pubacks <- packetID // to the connection's writer
		})
		if err != nil {
			log.Fatal(err) // not queued: done will not be called
		}
	}
	for range 3 {
		fmt.Println("PUBACK", <-pubacks)
	}
	// Output:
	// PUBACK 1
	// PUBACK 2
	// PUBACK 3
}
