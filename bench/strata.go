package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/shard"
)

// RunStrata measures durable ingest through Store from c.Publishers publishers (one goroutine
// each, one message at a time), then the replays of what it stored; with c.Window > 0, also
// ingest through StoreAsync with c.Window messages in flight per publisher, into a DB of its own.
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
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	message := func(p, i int) ds.Message {
		return ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]}
	}
	name := fmt.Sprintf("ingest (%s, %s)", storage, c.Durability)
	db, err := openIngestDB(c, dir)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	ingest, err := measureIngest(c, db, name, func() (time.Duration, []time.Duration, []float64, error) {
		return runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
			_, err := db.Store(ctx, message(p, i))
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	results := []Result{ingest}
	if c.Replay {
		rs, err := replays(ctx, c, db, storage)
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	if c.Window > 0 {
		r, err := ingestAsync(c, storage, message)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	return results, nil
}

// replays reads back what the ingest run stored in db: everything, a wildcard, one publisher,
// and with c.SubCatchUp everything through one subscription.
func replays(ctx context.Context, c Config, db *ds.DB, storage string) ([]Result, error) {
	var results []Result
	for _, q := range []struct{ name, filter string }{
		{"replay all (#)", "#"},
		{"replay wildcard " + regionFilter(3), regionFilter(3)},
		{"replay one publisher", publisherFilter(c.Publishers / 2)},
	} {
		r, err := Replay(ctx, db, q.name+" ("+storage+")", q.filter, 0)
		if err != nil {
			return nil, err
		}
		r.Note = q.filter
		results = append(results, r)
	}
	if c.SubCatchUp {
		rs, err := catchUpVsReplay(ctx, db, c.N, "#", " ("+storage+")", &results[0])
		if err != nil {
			return nil, err
		}
		results = append(results, rs...)
	}
	return results, nil
}

// ingestAsync measures ingest through StoreAsync, c.Window messages in flight per publisher,
// into a DB of its own in a temporary directory.
func ingestAsync(c Config, storage string, message func(p, i int) ds.Message) (Result, error) {
	parent := "" // beside -dir's DB when one was given: on the same disk
	if c.Dir != "" {
		parent = filepath.Dir(filepath.Clean(c.Dir))
	}
	dir, err := os.MkdirTemp(parent, "ds-bench-async-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	db, err := openIngestDB(c, dir)
	if err != nil {
		return Result{}, err
	}
	defer db.Close()
	ctx := context.Background()
	name := fmt.Sprintf("ingest StoreAsync ×%d (%s, %s)", c.Window, storage, c.Durability)
	r, err := measureIngest(c, db, name, func() (time.Duration, []time.Duration, []float64, error) {
		return runWindowed(name, c.N, c.Publishers, c.Window, c.Progress, func(p, i int, done func(error)) error {
			return db.StoreAsync(ctx, message(p, i), func(_ ds.Ref, err error) { done(err) })
		})
	})
	if err != nil {
		return Result{}, err
	}
	r.Note = fmt.Sprintf("%d in flight per publisher; %s", c.Window, r.Note)
	return r, db.Close()
}

// Replay reads every stream matching filter to its end, with readers goroutines in parallel
// (GOMAXPROCS when readers <= 0), in batches of 1000.
func Replay(ctx context.Context, db *ds.DB, name, filter string, readers int) (Result, error) {
	if readers <= 0 {
		readers = runtime.GOMAXPROCS(0)
	}
	start := time.Now()
	streams, err := db.Streams(filter, time.Time{})
	if err != nil {
		return Result{}, err
	}
	msgs, bytes, err := readParallel(ctx, db, streams, filter, readers)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	return Result{Name: name, Msgs: int(msgs), Bytes: bytes, Elapsed: time.Since(start)}, nil
}

// readParallel reads every stream of streams to its end (a stream listed twice is read twice),
// with readers goroutines taking streams from a queue, and returns the messages and payload
// bytes read and the first error.
func readParallel(ctx context.Context, db *ds.DB, streams []ds.Stream, filter string, readers int) (int64, int64, error) {
	work := make(chan ds.Stream, len(streams))
	for _, s := range streams {
		work <- s
	}
	close(work)
	var msgs, bytes atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for s := range work {
				n, b, err := readStream(ctx, db, s, filter)
				msgs.Add(n)
				bytes.Add(b)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return msgs.Load(), bytes.Load(), *e
	}
	return msgs.Load(), bytes.Load(), nil
}

// readStream reads one stream from the beginning until nothing more is durable or the sealed
// generation ends, and returns the messages and payload bytes read.
func readStream(ctx context.Context, db *ds.DB, s ds.Stream, filter string) (msgs, bytes int64, err error) {
	it, err := db.Iterator(s, filter, time.Time{})
	for err == nil {
		var batch []ds.Message
		batch, it, err = db.Next(ctx, it, 1000)
		if len(batch) == 0 && err == nil {
			break // everything durable has been read
		}
		msgs += int64(len(batch))
		for i := range batch {
			bytes += int64(len(batch[i].Payload))
		}
	}
	if errors.Is(err, ds.ErrEndOfStream) {
		err = nil
	}
	return msgs, bytes, err
}

// stageNote renders where a stored message's latency went, by stage (shard.StageNames), as
// means per message over the counters of t, and records them in figures.
func stageNote(t ds.ShardMetrics, figures map[string]float64) string {
	var parts []string
	for st, d := range t.StagesPerMessage() {
		figures["stage_"+shard.StageNames[st]+"_us"] = d.Seconds() * 1e6
		parts = append(parts, fmt.Sprintf("%s %s", shard.StageNames[st], fmtStage(d)))
	}
	return strings.Join(parts, ", ")
}

// fmtStage renders a stage's mean time per message: µs below 10 ms, else ms.
func fmtStage(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

// openIngestDB opens the DB of an ingest run in dir with c's options.
func openIngestDB(c Config, dir string) (*ds.DB, error) {
	return ds.Open(dir, &ds.Options{
		NShards:       c.Shards,
		Durability:    c.Durability,
		Layout:        c.Layout,
		FlushInterval: c.Flush,
		Retention:     ds.RetainForever,
		Expert:        ds.ExpertOptions{PebblePerShard: c.PerShard, MemTableBytes: c.MemTableBytes},
	})
}

// measureIngest runs the publishers (run) against db and returns the row: throughput, latency,
// messages per commit, disk bytes, write amplification, memory, CPU and the stages.
func measureIngest(c Config, db *ds.DB, name string, run func() (time.Duration, []time.Duration, []float64, error)) (Result, error) {
	mem := startMemory()
	cpu0 := processCPU()
	elapsed, lats, series, err := run()
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	m, err := db.Metrics()
	if err != nil {
		return Result{}, err
	}
	t := m.Totals()
	if c.Metrics {
		fmt.Println(m)
		for _, pm := range m.Pebble {
			fmt.Println(pm)
		}
	}
	heap, rss := mem.finish()
	cpu := processCPU() - cpu0
	r := Result{
		Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
		MsgsPerCommit:   float64(t.Messages) / float64(max(t.Batches, 1)),
		DiskBytesPerMsg: float64(m.DiskBytes) / float64(c.N),
		WriteAmp:        float64(m.BytesWritten) / float64(max(t.Bytes, 1)),
		PeakHeapBytes:   heap, PeakRSSBytes: rss,
	}
	r.setRun(lats, series)
	// CPU of the whole process (the publishers' goroutines included) per message, and where a
	// message's latency went, by stage (shard.StageNames), as means per message.
	cpuPerMsg := cpu.Seconds() * 1e6 / float64(c.N)
	r.Figures = map[string]float64{"cpu_us_per_msg": cpuPerMsg}
	r.Note = fmt.Sprintf("%.0f msgs/commit, %.0f B on disk/msg, write amp %.2f, %.1f CPU-µs/msg, per msg: %s; heap %d MiB, RSS %d MiB",
		r.MsgsPerCommit, r.DiskBytesPerMsg, r.WriteAmp, cpuPerMsg, stageNote(t, r.Figures), heap>>20, rss>>20)
	return r, nil
}
