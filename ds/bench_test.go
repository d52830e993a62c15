package ds_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-mq/strata/ds"
)

// BenchmarkStore stores 1 KiB messages from 128 concurrent publishers (64 per core on 2 cores),
// one message per Store call, as a broker's connection goroutines do.
func BenchmarkStore(b *testing.B) {
	for _, d := range []ds.Durability{ds.Sync, ds.NoSync} {
		b.Run(d.String(), func(b *testing.B) {
			db, err := ds.Open(b.TempDir(), &ds.Options{NShards: 4, Durability: d})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			payload := make([]byte, 1024)
			var publishers atomic.Int64
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.SetParallelism(64)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := publishers.Add(1)
				client := fmt.Sprintf("client-%d", p)
				ctx := context.Background()
				for i := 0; pb.Next(); i++ {
					_, err := db.Store(ctx, ds.Message{ClientID: client, Topic: fmt.Sprintf("t/%d/%s/m%d", p%8, client, i%4), Payload: payload})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkNext reads 100k stored 1 KiB messages back through every stream, in batches of 1000.
func BenchmarkNext(b *testing.B) {
	db, err := ds.Open(b.TempDir(), &ds.Options{NShards: 4, Durability: ds.NoSync})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	payload := make([]byte, 1024)
	const n = 100_000
	batch := make([]ds.Message, 0, 100)
	for i := 0; i < n; i++ {
		client := fmt.Sprintf("client-%d", i%1000)
		batch = append(batch, ds.Message{ClientID: client, Topic: fmt.Sprintf("t/%d/%s/m%d", i%8, client, i%4), Payload: payload})
		if len(batch) == cap(batch) {
			if _, err := db.Store(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	streams, err := db.Streams("#", time.Time{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n * int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		read := 0
		for _, s := range streams {
			it, _ := db.Iterator(s, "#", time.Time{})
			for {
				msgs, next, err := db.Next(ctx, it, 1000)
				if err != nil && !errors.Is(err, ds.ErrEndOfStream) {
					b.Fatal(err)
				}
				if len(msgs) == 0 {
					break
				}
				read += len(msgs)
				it = next
			}
		}
		if read != n {
			b.Fatalf("read %d of %d", read, n)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
}
