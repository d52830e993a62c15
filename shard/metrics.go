package shard

import (
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds of the commit latency histogram.
var LatencyBuckets = []time.Duration{
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, time.Second,
}

// BatchBuckets are the upper bounds of the batch size histogram (messages per group commit).
var BatchBuckets = []int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

// Metrics are a shard's counters. All fields are safe for concurrent use.
type Metrics struct {
	Messages   atomic.Uint64 // messages stored
	Bytes      atomic.Uint64 // message bytes stored
	Batches    atomic.Uint64 // group commits of messages
	QueueDepth atomic.Int64  // requests waiting for the writer
	// ForwardedMessages and ForwardedBatches count the messages, and the batches that carried
	// them, of Stores made through this shard that another site stored (a replicated site
	// without a replica of the shard, or with Config.LeaderBatching): that site counts them in
	// its Messages, this one only here.
	ForwardedMessages atomic.Uint64
	ForwardedBatches  atomic.Uint64
	// CommitLatency counts commits by duration, from the start of Apply to durability;
	// bucket i counts durations <= LatencyBuckets[i], the last one everything slower.
	CommitLatency [12]atomic.Uint64
	CommitNanos   atomic.Uint64 // sum of commit durations
	// BatchSize counts group commits of messages by their number of messages; bucket i
	// counts sizes <= BatchBuckets[i], the last one the larger ones.
	BatchSize [12]atomic.Uint64
	// StageNanos[s] sums, over the messages stored, the time each spent in stage s on its way
	// from Store to its acknowledgement (divided by Messages: the mean per message). Filled by
	// the shard's writer and syncer, or by a replicated shard's proposer (ObserveStages).
	StageNanos [NumStages]atomic.Uint64
}

// Stage is a step of a stored message's way from Store to its acknowledgement.
type Stage int

const (
	StageQueue  Stage = iota // waiting for the shard's writer, behind earlier batches
	StageApply               // the shard's apply: timestamps, keys, learned layout, into a batch
	StageCommit              // Pebble's commit of the batch: WAL record, memtable inserts
	StageSync                // waiting for the WAL's fsync, behind earlier batches' syncs
	StageWake                // publishing the new view and OnDurable, before the Store calls are woken
	NumStages
)

// StageNames name the stages (metric labels, reports).
var StageNames = [NumStages]string{"queue", "apply", "commit", "sync", "wake"}

// observeStages adds one batch's stage times: queue is already summed over its messages, the
// others are the batch's and count once per message.
func (m *Metrics) observeStages(msgs int, queue time.Duration, start, applied, committed, synced, woken time.Time) {
	m.ObserveStages(msgs, [NumStages]time.Duration{
		StageQueue: queue, StageApply: applied.Sub(start), StageCommit: committed.Sub(applied),
		StageSync: synced.Sub(committed), StageWake: woken.Sub(synced),
	})
}

// ObserveStages adds the stage times of one batch of msgs messages: d[StageQueue] is already
// summed over the messages, the other stages are the batch's and count once per message. For
// writers of these Metrics other than the shard's own (a replicated shard's proposer, whose
// commit stage is the Raft round).
func (m *Metrics) ObserveStages(msgs int, d [NumStages]time.Duration) {
	n := time.Duration(msgs)
	for st := range NumStages {
		v := d[st]
		if st != StageQueue {
			v *= n
		}
		m.StageNanos[st].Add(uint64(max(v, 0)))
	}
}

// ObserveCommit records one commit of msgs messages (bytes in total) that took d.
func (m *Metrics) ObserveCommit(d time.Duration, msgs, bytes int) {
	if msgs > 0 {
		m.Messages.Add(uint64(msgs))
		m.Bytes.Add(uint64(bytes))
		m.Batches.Add(1)
		b := 0
		for b < len(BatchBuckets) && msgs > BatchBuckets[b] {
			b++
		}
		m.BatchSize[b].Add(1)
	}
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	m.CommitLatency[i].Add(1)
	m.CommitNanos.Add(uint64(d.Nanoseconds()))
}
