package raftgroup_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

// Three sites of one cluster, here in one process (normally one per machine): each is given
// the same InitialSites, and each offers the same *ds.DB API. A Store on any site returns once
// a quorum of the shard's replicas holds the message; every site reads it locally. (Tests
// that need such a local cluster can start one with raftgroup/clustertest.)
func Example() {
	root, _ := os.MkdirTemp("", "strata-example-")
	defer os.RemoveAll(root)
	addrs := []string{freePort(), freePort(), freePort()}
	sites := make([]*raftgroup.Site, 3)
	var wg sync.WaitGroup
	for i := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := raftgroup.Open(ctx, raftgroup.Config{
				Dir:          filepath.Join(root, fmt.Sprint("site-", i)),
				RaftAddress:  addrs[i],
				InitialSites: addrs, // the same list on every site
				LogDBMemory:  raftgroup.LogDBTiny,
				DB:           &ds.Options{NShards: 2},
			})
			if err != nil {
				panic(err)
			}
			sites[i] = s
		}()
	}
	wg.Wait()
	defer func() {
		for _, s := range sites {
			s.Close()
		}
	}()

	db0, _ := sites[0].DB()
	ctx := context.Background()
	if _, err := db0.Store(ctx, ds.Message{ClientID: "sensor-1", Topic: "plant/3/temp", Payload: []byte("21.5")}); err != nil {
		panic(err) // ds.ErrUnavailable (retryable) if the shard has no quorum
	}

	// Read on another site: its replica may lag a moment behind the leader's. StreamsChanged
	// fires once it has applied the entry that created the stream.
	db2, _ := sites[2].DB()
	for {
		changed := db2.StreamsChanged() // before Streams, so that no change is missed
		streams, _ := db2.Streams("plant/+/temp", time.Time{})
		if len(streams) > 0 {
			it, _ := db2.Iterator(streams[0], "plant/+/temp", time.Time{})
			msgs, _, _ := db2.Next(ctx, it, 10)
			fmt.Printf("%s %s %s\n", msgs[0].ClientID, msgs[0].Topic, msgs[0].Payload)
			break
		}
		<-changed
	}
	// Output: sensor-1 plant/3/temp 21.5
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
