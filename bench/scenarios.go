package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/strata-mq/strata/ds"
)

// openTemp opens a DB in c.Dir or a new temporary directory; cleanup closes it and removes the
// temporary directory.
func openTemp(c Config, opts *ds.Options) (*ds.DB, func(), error) {
	dir := c.Dir
	remove := func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "ds-bench-")
		if err != nil {
			return nil, nil, err
		}
		dir, remove = tmp, func() { os.RemoveAll(tmp) }
	} else {
		dir = fmt.Sprintf("%s/%d", dir, time.Now().UnixNano())
	}
	opts.NShards, opts.Durability, opts.Layout = c.Shards, c.Durability, c.Layout
	opts.Expert.PebblePerShard = c.PerShard
	db, err := ds.Open(dir, opts)
	if err != nil {
		remove()
		return nil, nil, err
	}
	return db, func() { db.Close(); remove() }, nil
}

// RunFanOut stores n messages of one publisher on one topic (one stream), then readers
// sessions read the whole stream at once, each with its own iterator, in batches of 1000: the
// case of many durable sessions subscribed to one busy topic. The rate is messages delivered
// (n × readers) per second.
func RunFanOut(c Config, n, readers int) (Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{Retention: ds.RetainForever})
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	ctx := context.Background()
	pl := payloads(16, c.Payload)
	batch := make([]ds.Message, 0, 500)
	for i := 0; i < n; i++ {
		batch = append(batch, ds.Message{ClientID: "fan-publisher", Topic: "fanout/news", QoS: 1, Payload: pl[i%len(pl)]})
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := db.Store(ctx, batch...); err != nil {
				return Result{}, err
			}
			batch = batch[:0]
		}
	}
	streams, err := db.Streams("fanout/news", time.Time{})
	if err != nil {
		return Result{}, err
	}
	if len(streams) != 1 {
		return Result{}, fmt.Errorf("fan-out: %d streams, want 1", len(streams))
	}
	start := time.Now()
	d, _, err := readParallel(ctx, db, slices.Repeat(streams, readers), "fanout/#", readers)
	if err != nil {
		return Result{}, err
	}
	if d != int64(n*readers) {
		return Result{}, fmt.Errorf("fan-out: delivered %d, want %d", d, n*readers)
	}
	return Result{Name: fmt.Sprintf("fan-out: %d readers of one stream", readers), Msgs: int(d),
		Bytes: d * int64(c.Payload), Elapsed: time.Since(start), Note: fmt.Sprintf("%d messages each", n)}, nil
}

// RunRetentionUnderLoad ingests like RunStrata while generations rotate every span and are
// dropped once span×2 old, so rotation, range deletions and their compactions run under the
// write load. It reports the ingest rate and how many generations were added and dropped.
func RunRetentionUnderLoad(c Config, span time.Duration) (Result, error) {
	db, cleanup, err := openTemp(c, &ds.Options{GenerationSpan: span, Retention: 2 * span})
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	name := fmt.Sprintf("ingest with retention (span %v)", span)
	elapsed, lats, series, err := runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
		_, err := db.Store(ctx, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]})
		return err
	})
	if err != nil {
		return Result{}, err
	}
	gens, err := db.Generations()
	if err != nil {
		return Result{}, err
	}
	var last ds.GenerationID
	kept := 0
	for _, g := range gens {
		if g.Shard == 0 {
			last, kept = g.ID, kept+1
		}
	}
	m, err := db.Metrics()
	if err != nil {
		return Result{}, err
	}
	added, dropped := int(last)-1, int(last)-kept
	r := Result{Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
		Note: fmt.Sprintf("%d generations added and %d dropped (shard 0), %d MiB on disk at the end", added, dropped, m.DiskBytes>>20)}
	r.setRun(lats, series)
	return r, nil
}
