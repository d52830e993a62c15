package inspect

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/shard"
)

// Collector returns a prometheus.Collector of db's metrics (ds.DB.Metrics), for a broker to
// register in its own registry (prometheus.MustRegister(inspect.Collector(db))); Handler's
// /metrics serves the same. The names and labels below are a public interface and stable.
//
// Per shard, with the label shard="N":
//
//	strata_messages_stored_total      counter   messages stored since the DB was opened
//	strata_bytes_stored_total         counter   message bytes stored since the DB was opened
//	strata_commits_total              counter   group commits since the DB was opened
//	strata_queue_depth                gauge     Store calls waiting for the shard's writer
//	strata_generations                gauge     generations held
//	strata_streams                    gauge     streams of the current generation
//	strata_messages_held              gauge     messages in its generations (not expired)
//	strata_shard_disk_bytes           gauge     estimate of its generations' bytes on disk
//	strata_shard_available            gauge     1, or 0 where a replicated site holds no
//	                                            open replica of the shard right now
//	strata_commit_latency_seconds     histogram commit latency (buckets: shard.LatencyBuckets)
//	strata_batch_messages             histogram messages per group commit (shard.BatchBuckets)
//	strata_store_stage_seconds_total  counter   time stored messages spent in each stage between
//	                                            Store and acknowledgement, summed over them, with
//	                                            the label stage="queue|apply|commit|sync|wake"
//	                                            (shard.StageNames; on a replicated site commit
//	                                            is the Raft round and sync is 0)
//
// For the whole DB, without labels:
//
//	strata_disk_bytes                 gauge     size of the storage's files
//	strata_bytes_written_total        counter   bytes the storage wrote since it was opened
//	strata_subscriptions              gauge     open subscriptions
//	strata_subscriptions_tail         gauge     of them fed from commits on every shard
//	strata_subscriptions_parked       gauge     Next calls waiting for an Ack
//	strata_subscription_lag_seconds   gauge     largest distance of a subscription behind a
//	                                            shard's read limit
//	strata_subscription_delivered_total counter messages returned by Subscription.Next
//	strata_subscription_reads_total   counter   storage reads by subscriptions behind the tail
//	strata_subscription_fed_total     counter   messages the feeds handed to tail groups
//	strata_subscription_demoted_total counter   tail subscriptions sent back to reading
//	strata_subscription_losses_total  counter   losses by retention reported
//
// A DB that cannot report (closed) yields an invalid metric: the registry's Gather fails, and
// Handler's /metrics answers with the error's status (a closed DB: 503, retryable).
func Collector(db *ds.DB) prometheus.Collector { return dbCollector{db} }

type dbCollector struct{ db *ds.DB }

// shardMetric is a per-shard gauge or counter and how to read it.
type shardMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(ds.ShardMetrics) float64
}

// dbMetric is a DB-wide gauge or counter and how to read it.
type dbMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(ds.Metrics) float64
}

var (
	shardLabel = []string{"shard"}

	shardMetrics = []shardMetric{
		{newDesc("strata_messages_stored_total", "Messages stored since the DB was opened.", shardLabel), prometheus.CounterValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Messages) }},
		{newDesc("strata_bytes_stored_total", "Message bytes stored since the DB was opened.", shardLabel), prometheus.CounterValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Bytes) }},
		{newDesc("strata_commits_total", "Group commits since the DB was opened.", shardLabel), prometheus.CounterValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Batches) }},
		{newDesc("strata_messages_forwarded_total", "Messages of Stores made through this site that another replicated site stored (not in strata_messages_stored_total here).", shardLabel), prometheus.CounterValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Forwarded) }},
		{newDesc("strata_forwarded_batches_total", "Calls that forwarded the Stores counted in strata_messages_forwarded_total.", shardLabel), prometheus.CounterValue,
			func(s ds.ShardMetrics) float64 { return float64(s.ForwardedBatches) }},
		{newDesc("strata_queue_depth", "Store calls waiting for the shard's writer.", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return float64(s.QueueDepth) }},
		{newDesc("strata_generations", "Generations the shard holds.", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Generations) }},
		{newDesc("strata_streams", "Streams of the shard's current generation.", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Streams) }},
		{newDesc("strata_messages_held", "Messages in the shard's generations (stored, not yet expired or dropped).", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return float64(s.Held) }},
		{newDesc("strata_shard_disk_bytes", "Pebble's estimate of the bytes the shard's generations take on disk.", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return float64(s.DiskBytes) }},
		{newDesc("strata_shard_available", "1 if the shard can be read here (a replicated site holds an open replica), else 0.", shardLabel), prometheus.GaugeValue,
			func(s ds.ShardMetrics) float64 { return gauge(!s.Unavailable) }},
	}
	commitLatency = newDesc("strata_commit_latency_seconds", "Commit latency, from the start of a group commit to durability.", shardLabel)
	batchMessages = newDesc("strata_batch_messages", "Messages per group commit.", shardLabel)
	storeStages   = newDesc("strata_store_stage_seconds_total",
		"Time stored messages spent in each stage between Store and acknowledgement, summed over them.", []string{"shard", "stage"})

	dbMetrics = []dbMetric{
		{newDesc("strata_disk_bytes", "Size of the storage's files.", nil), prometheus.GaugeValue,
			func(m ds.Metrics) float64 { return float64(m.DiskBytes) }},
		{newDesc("strata_bytes_written_total", "Bytes the storage wrote since it was opened (WAL, flushes, compactions).", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.BytesWritten) }},
		{newDesc("strata_subscriptions", "Open subscriptions.", nil), prometheus.GaugeValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Subscriptions) }},
		{newDesc("strata_subscriptions_tail", "Subscriptions fed from commits on every shard.", nil), prometheus.GaugeValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Tail) }},
		{newDesc("strata_subscriptions_parked", "Subscription Next calls waiting for an Ack.", nil), prometheus.GaugeValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Parked) }},
		{newDesc("strata_subscription_lag_seconds", "Largest distance of a subscription behind a shard's read limit.", nil), prometheus.GaugeValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.MaxLag) / 1e6 }},
		{newDesc("strata_subscription_delivered_total", "Messages returned by Subscription.Next.", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Delivered) }},
		{newDesc("strata_subscription_reads_total", "Storage reads by subscriptions behind the tail.", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Reads) }},
		{newDesc("strata_subscription_fed_total", "Messages the shards' feeds handed to groups of tail subscriptions.", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Fed) }},
		{newDesc("strata_subscription_demoted_total", "Tail subscriptions sent back to reading the storage.", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Demoted) }},
		{newDesc("strata_subscription_losses_total", "Losses by retention reported to subscriptions.", nil), prometheus.CounterValue,
			func(m ds.Metrics) float64 { return float64(m.Subscriptions.Losses) }},
	}
)

func newDesc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range shardMetrics {
		ch <- m.desc
	}
	ch <- commitLatency
	ch <- batchMessages
	ch <- storeStages
	for _, m := range dbMetrics {
		ch <- m.desc
	}
}

func (c dbCollector) Collect(ch chan<- prometheus.Metric) {
	m, err := c.db.Metrics()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dbMetrics[0].desc, err)
		return
	}
	for _, sm := range shardMetrics {
		for _, s := range m.Shards {
			ch <- prometheus.MustNewConstMetric(sm.desc, sm.kind, sm.value(s), strconv.Itoa(int(s.Shard)))
		}
	}
	for _, s := range m.Shards {
		label := strconv.Itoa(int(s.Shard))
		bounds := make([]float64, len(shard.LatencyBuckets))
		for i, b := range shard.LatencyBuckets {
			bounds[i] = b.Seconds()
		}
		ch <- histogram(commitLatency, bounds, s.CommitLatency, s.CommitTotal.Seconds(), label)
		bounds = make([]float64, len(shard.BatchBuckets))
		for i, b := range shard.BatchBuckets {
			bounds[i] = float64(b)
		}
		ch <- histogram(batchMessages, bounds, s.BatchSize, float64(s.Messages), label)
		for st, d := range s.Stages {
			ch <- prometheus.MustNewConstMetric(storeStages, prometheus.CounterValue, d.Seconds(), label, shard.StageNames[st])
		}
	}
	for _, dm := range dbMetrics {
		ch <- prometheus.MustNewConstMetric(dm.desc, dm.kind, dm.value(m))
	}
}

// histogram builds a constant histogram from per-bucket counts (counts[i] for bounds[i]; any
// counts past the bounds are above the last one, in +Inf only).
func histogram(desc *prometheus.Desc, bounds []float64, counts []uint64, sum float64, label string) prometheus.Metric {
	cum := map[float64]uint64{}
	var total uint64
	for i, b := range bounds {
		if i < len(counts) {
			total += counts[i]
		}
		cum[b] = total
	}
	for i := len(bounds); i < len(counts); i++ {
		total += counts[i]
	}
	return prometheus.MustNewConstHistogram(desc, total, sum, cum, label)
}
