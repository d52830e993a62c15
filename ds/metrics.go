package ds

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/strata-mq/strata/shard"
)

// Metrics is a snapshot of the DB's counters.
type Metrics struct {
	Shards []ShardMetrics
	// DiskBytes is the size of the DB's Pebble files.
	DiskBytes uint64
	// BytesWritten counts what Pebble wrote since Open: WAL, flushes and compactions (tables and
	// blob files). Divided by the message bytes stored it is the write amplification.
	BytesWritten uint64
	// Pebble is Pebble's own report, one per instance (levels, compactions, WAL).
	//
	// DiskBytes, BytesWritten and Pebble come from the Backend's StorageStats; they stay zero
	// with a Backend that does not implement StorageStatser.
	Pebble []string
	// Subscriptions are the figures of the DB's subscriptions.
	Subscriptions SubscriptionMetrics
}

// ShardMetrics are one shard's counters.
type ShardMetrics struct {
	Shard      ShardID
	Messages   uint64 // stored since Open
	Bytes      uint64 // message bytes stored since Open
	Batches    uint64 // group commits since Open
	QueueDepth int64  // Store calls waiting for the writer
	// Forwarded and ForwardedBatches: messages of Stores made through this DB that another
	// replicated site stored, and the calls that carried them (a site without a replica of
	// the shard forwards its Stores; see raftgroup). They are not in Messages here: the site
	// that stored them counts them there. Always 0 for an embedded DB.
	Forwarded        uint64
	ForwardedBatches uint64
	Generations      int
	Streams          int // in the current generation
	// Held and DiskBytes: messages in the shard's generations (not yet expired or dropped;
	// generations created before counts existed are not included), and Pebble's estimate of
	// their bytes on disk (see GenerationUsage).
	Held      uint64
	DiskBytes uint64
	// Unavailable: a replicated site holds no open replica of the shard right now, so
	// Generations and Streams are 0 (see ErrUnavailable).
	Unavailable bool
	// CommitLatency[i] counts commits that took at most shard.LatencyBuckets[i]; the last
	// element counts the slower ones.
	CommitLatency []uint64
	CommitTotal   time.Duration
	// BatchSize[i] counts group commits of at most shard.BatchBuckets[i] messages; the last
	// element counts the larger ones. Its sum is Batches, and Messages the messages in them.
	BatchSize []uint64
	// Stages[s] sums, over the messages stored, the time each spent in stage s between Store
	// and its acknowledgement (shard.StageNames: queue, apply, commit, sync, wake); divided by
	// Messages it is where a message's latency goes. On a replicated site (the shard's
	// proposer there) apply is building the Raft entry, commit the Raft round to a committed
	// and applied entry (its log fsyncs included), and sync 0.
	Stages [shard.NumStages]time.Duration
}

// StagesPerMessage returns the mean time a stored message spent in each stage (Stages /
// Messages).
func (s ShardMetrics) StagesPerMessage() (out [shard.NumStages]time.Duration) {
	if s.Messages == 0 {
		return out
	}
	for i, d := range s.Stages {
		out[i] = d / time.Duration(s.Messages)
	}
	return out
}

// Totals sums the shards' counters.
func (m Metrics) Totals() ShardMetrics {
	var t ShardMetrics
	t.Shard = ShardID(len(m.Shards))
	t.CommitLatency = make([]uint64, len(shard.LatencyBuckets)+1)
	t.BatchSize = make([]uint64, len(shard.BatchBuckets)+1)
	for _, s := range m.Shards {
		t.Messages += s.Messages
		t.Bytes += s.Bytes
		t.Batches += s.Batches
		t.QueueDepth += s.QueueDepth
		t.Forwarded += s.Forwarded
		t.ForwardedBatches += s.ForwardedBatches
		t.Generations += s.Generations
		t.Held += s.Held
		t.DiskBytes += s.DiskBytes
		t.Streams += s.Streams
		t.CommitTotal += s.CommitTotal
		for i, c := range s.CommitLatency {
			t.CommitLatency[i] += c
		}
		for i, c := range s.BatchSize {
			t.BatchSize[i] += c
		}
		for i, d := range s.Stages {
			t.Stages[i] += d
		}
	}
	return t
}

// Metrics returns a snapshot of the DB's counters.
func (db *DB) Metrics() (Metrics, error) {
	exit, err := db.enter()
	if err != nil {
		return Metrics{}, err
	}
	defer exit()
	var m Metrics
	for _, s := range db.shards {
		c := s.ShardMetrics()
		sm := ShardMetrics{
			Shard:            s.ID(),
			Messages:         c.Messages.Load(),
			Bytes:            c.Bytes.Load(),
			Batches:          c.Batches.Load(),
			QueueDepth:       c.QueueDepth.Load(),
			Forwarded:        c.ForwardedMessages.Load(),
			ForwardedBatches: c.ForwardedBatches.Load(),
			CommitTotal:      time.Duration(c.CommitNanos.Load()),
			CommitLatency:    make([]uint64, len(c.CommitLatency)),
		}
		for i := range c.CommitLatency {
			sm.CommitLatency[i] = c.CommitLatency[i].Load()
		}
		sm.BatchSize = make([]uint64, len(c.BatchSize))
		for i := range c.BatchSize {
			sm.BatchSize[i] = c.BatchSize[i].Load()
		}
		for i := range c.StageNanos {
			sm.Stages[i] = time.Duration(c.StageNanos[i].Load())
		}
		// A replicated site may hold no open replica of a shard for a moment (starting,
		// receiving a snapshot, left the cluster): then it reports the shard unavailable.
		gens, err := s.Generations()
		sm.Generations = len(gens)
		sm.Unavailable = err != nil
		for _, g := range gens {
			if u, err := s.GenerationUsage(g.ID); err == nil {
				sm.Held += u.Messages
				sm.DiskBytes += u.DiskBytes
			}
		}
		if len(gens) > 0 {
			if l, ok := s.Layout(gens[len(gens)-1].ID); ok {
				sm.Streams = l.StreamCount()
			}
		}
		m.Shards = append(m.Shards, sm)
	}
	m.Subscriptions = db.subscriptionMetrics()
	if db.stats != nil {
		st := db.stats.StorageStats()
		m.DiskBytes, m.BytesWritten, m.Pebble = st.DiskBytes, st.BytesWritten, st.Pebble
	}
	return m, nil
}

// String renders the metrics as an aligned table, one line per shard and a total.
func (m Metrics) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s %12s %14s %10s %9s %6s %8s %12s %12s %14s\n",
		"shard", "messages", "bytes", "batches", "msgs/batch", "queue", "gens", "avg commit", "held", "disk bytes")
	row := func(name string, s ShardMetrics) {
		perBatch, avg := 0.0, time.Duration(0)
		if s.Batches > 0 {
			perBatch = float64(s.Messages) / float64(s.Batches)
		}
		var commits uint64
		for _, c := range s.CommitLatency {
			commits += c
		}
		if commits > 0 {
			avg = s.CommitTotal / time.Duration(commits)
		}
		gens := strconv.Itoa(s.Generations)
		if s.Unavailable {
			gens = "n/a" // no open replica on this site
		}
		fmt.Fprintf(&b, "%-6s %12d %14d %10d %9.1f %6d %8s %12s %12d %14d\n",
			name, s.Messages, s.Bytes, s.Batches, perBatch, s.QueueDepth, gens, avg.Round(time.Microsecond), s.Held, s.DiskBytes)
	}
	for _, s := range m.Shards {
		row(fmt.Sprint(s.Shard), s)
	}
	row("total", m.Totals())
	fmt.Fprintf(&b, "disk bytes: %d, bytes written: %d\n", m.DiskBytes, m.BytesWritten)
	sm := m.Subscriptions
	fmt.Fprintf(&b, "subscriptions: %d (%d at the tail, %d parked), delivered %d, storage reads %d, fed %d, demoted %d, losses %d, max lag %s\n",
		sm.Subscriptions, sm.Tail, sm.Parked, sm.Delivered, sm.Reads, sm.Fed, sm.Demoted, sm.Losses, time.Duration(sm.MaxLag)*time.Microsecond)
	return b.String()
}

// DumpLayout renders the learned topic structure of one shard-generation (ds-info's trie view).
func (db *DB) DumpLayout(sh ShardID, gen GenerationID) (string, error) {
	exit, err := db.enter()
	if err != nil {
		return "", err
	}
	defer exit()
	if int(sh) >= len(db.shards) {
		return "", fmt.Errorf("%w: shard %d of %d", ErrShardNotFound, sh, len(db.shards))
	}
	l, ok := db.shards[sh].Layout(gen)
	if !ok {
		return "", fmt.Errorf("%w: shard %d generation %d", ErrGenerationNotFound, sh, gen)
	}
	return l.Dump(), nil
}
