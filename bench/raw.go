package bench

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/pebbleopts"
)

// rawVariant is one way of writing the benchmark's bytes to a bare Pebble.
type rawVariant struct {
	name     string
	options  func() *pebble.Options
	perMsg   bool // one batch per message from the publisher goroutines; else batches of 1000
	optsNote string
}

func rawVariants() []rawVariant {
	strata := func() *pebble.Options {
		return pebbleopts.New(pebbleopts.Config{FS: vfs.Default, MemTableBytes: ds.DefaultOptions().Expert.MemTableBytes, Logger: quietLogger{}})
	}
	defaults := func() *pebble.Options {
		return &pebble.Options{FormatMajorVersion: pebble.FormatNewest, Logger: quietLogger{}}
	}
	return []rawVariant{
		{"raw pebble, 1 batch/msg", strata, true, "Strata's Pebble options"},
		{"raw pebble, batched", strata, false, "Strata's Pebble options"},
		{"raw pebble, batched, defaults", defaults, false, "Pebble's default options"},
	}
}

// runRawPebble writes the same bytes as the Strata ingest to a bare Pebble: the floor under
// Strata. Keys are shard | publisher | sequence (big-endian), values hold client ID, topic and
// payload. "1 batch/msg" uses the same publisher goroutines as Strata's ingest, each committing
// its own one-message batch (Pebble's commit pipeline groups the concurrent WAL syncs);
// "batched" uses one writer per shard committing 1000 messages at a time, which is what
// Strata's group commit turns the publishers into, minus queueing and layout.
func RunRawPebble(c Config) ([]Result, error) {
	var results []Result
	for _, v := range rawVariants() {
		if c.Quick && v.name == "raw pebble, batched, defaults" {
			continue // the slowest run, and only there to show why Strata tunes Pebble
		}
		r, err := runRawVariant(c, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

func runRawVariant(c Config, v rawVariant) (Result, error) {
	dir, err := os.MkdirTemp("", "ds-bench-raw-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	db, err := pebble.Open(dir, v.options())
	if err != nil {
		return Result{}, err
	}
	defer db.Close()
	wo := pebble.Sync
	if c.Durability == ds.NoSync {
		wo = pebble.NoSync
	}
	pl := payloads(64, c.Payload)
	value := func(p, i int) []byte {
		client, topic := clientID(p), topicOf(p, i)
		val := make([]byte, 0, len(client)+len(topic)+c.Payload)
		return append(append(append(val, client...), topic...), pl[(p+i)%len(pl)]...)
	}
	key := func(p int, seq uint64) []byte {
		k := binary.BigEndian.AppendUint16(nil, uint16(ds.ShardOf(clientID(p), c.Shards)))
		k = binary.BigEndian.AppendUint32(k, uint32(p))
		return binary.BigEndian.AppendUint64(k, seq)
	}
	name := fmt.Sprintf("%s (%s)", v.name, c.Durability)
	if v.perMsg {
		elapsed, lats, series, err := runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
			b := db.NewBatch()
			defer b.Close()
			if err := b.Set(key(p, uint64(i)), value(p, i), nil); err != nil {
				return err
			}
			return b.Commit(wo)
		})
		r := Result{Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
			Note: v.optsNote + ", publisher goroutines"}
		r.setRun(lats, series)
		return r, err
	}
	// 1000 messages per commit, fewer for large payloads (at most ~4 MiB per commit) or few
	// messages (at least one round per writer).
	batch := max(1, min(1000, (4<<20)/max(c.Payload, 1), c.N/c.Shards))
	rounds := c.N / batch / c.Shards
	elapsed, _, _, err := runPublishers(name, rounds*c.Shards, c.Shards, c.Progress, func(w, r int) error {
		b := db.NewBatch()
		defer b.Close()
		for j := 0; j < batch; j++ {
			p := (w + (r*batch+j)*c.Shards) % c.Publishers
			if err := b.Set(key(p, uint64(r*batch+j)<<8|uint64(w)), value(p, r), nil); err != nil {
				return err
			}
		}
		return b.Commit(wo)
	})
	n := rounds * c.Shards * batch
	return Result{Name: name, Msgs: n, Bytes: int64(n * c.Payload), Elapsed: elapsed,
		Note: fmt.Sprintf("%s, %d writers × %d msgs/commit", v.optsNote, c.Shards, batch)}, err
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
