package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
)

func RunStrata(c Config) ([]Result, error) {
	dir := c.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "ds-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	storage := "shared"
	if c.PerShard {
		storage = "per-shard"
	}
	opts := &ds.Options{
		NShards:       c.Shards,
		Durability:    c.Durability,
		Layout:        c.Layout,
		FlushInterval: c.Flush,
		Retention:     ds.RetainForever,
		Expert:        ds.ExpertOptions{PebblePerShard: c.PerShard},
	}
	db, err := ds.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	name := fmt.Sprintf("ingest (%s, %s)", storage, c.Durability)
	mem := startMemory()
	elapsed, lats, series, err := runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
		_, err := db.Store(ctx, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m, err := db.Metrics()
	if err != nil {
		return nil, err
	}
	t := m.Totals()
	if c.Metrics {
		fmt.Println(m)
		for _, pm := range m.Pebble {
			fmt.Println(pm)
		}
	}
	heap, rss := mem.finish()
	ingest := Result{
		Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
		MsgsPerCommit:   float64(t.Messages) / float64(max(t.Batches, 1)),
		DiskBytesPerMsg: float64(m.DiskBytes) / float64(c.N),
		WriteAmp:        float64(m.BytesWritten) / float64(max(t.Bytes, 1)),
		PeakHeapBytes:   heap, PeakRSSBytes: rss,
	}
	ingest.setRun(lats, series)
	ingest.Note = fmt.Sprintf("%.0f msgs/commit, %.0f B on disk/msg, write amp %.2f, heap %d MiB, RSS %d MiB",
		ingest.MsgsPerCommit, ingest.DiskBytesPerMsg, ingest.WriteAmp, heap>>20, rss>>20)
	results := []Result{ingest}

	if !c.Replay {
		return results, db.Close()
	}
	for _, q := range []struct{ name, filter string }{
		{"replay all (#)", "#"},
		{"replay wildcard " + regionFilter(3), regionFilter(3)},
		{"replay one publisher", publisherFilter(c.Publishers / 2)},
	} {
		r, err := replay(ctx, db, q.name+" ("+storage+")", q.filter, c.Progress)
		if err != nil {
			return nil, err
		}
		r.Note = q.filter
		results = append(results, r)
	}
	return results, db.Close()
}

// replay reads every stream matching filter to its end, with GOMAXPROCS readers in parallel, in
// batches of 1000.
func replay(ctx context.Context, db *ds.DB, name, filter string, progress bool) (Result, error) {
	start := time.Now()
	streams, err := db.Streams(filter, time.Time{})
	if err != nil {
		return Result{}, err
	}
	work := make(chan ds.Stream, len(streams))
	for _, s := range streams {
		work <- s
	}
	close(work)
	var msgs, bytes atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				it, err := db.Iterator(s, filter, time.Time{})
				for err == nil {
					var batch []ds.Message
					batch, it, err = db.Next(ctx, it, 1000)
					if len(batch) == 0 && err == nil {
						break // everything durable has been read
					}
					msgs.Add(int64(len(batch)))
					for i := range batch {
						bytes.Add(int64(len(batch[i].Payload)))
					}
				}
				if err != nil && !errors.Is(err, ds.ErrEndOfStream) {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return Result{}, fmt.Errorf("%s: %w", name, *e)
	}
	return Result{Name: name, Msgs: int(msgs.Load()), Bytes: bytes.Load(), Elapsed: time.Since(start)}, nil
}
