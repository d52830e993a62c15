// Package bench holds Strata's benchmark scenarios, used by cmd/ds-bench and by go test -bench:
// ingest from many concurrent publishers, replays (everything, a wildcard, one publisher),
// fan-out (many readers of one stream), retention under load (rotation and drops while
// ingesting), subscriptions (fan-out at the tail, Store → delivery latency, catch-up), durable
// sessions (ingest with and without 10,000 of them, resume), and raw Pebble writing the same
// bytes as the floor under Strata.
package bench

import (
	"fmt"
	"slices"
	"time"

	"github.com/strata-mq/strata/ds"
)

// Config describes a benchmark run.
type Config struct {
	MemTableBytes          int // Options.Expert.MemTableBytes; 0: the default
	N                      int
	Publishers             int
	Window                 int // ingest: also through StoreAsync with this many messages in flight per publisher; 0: not
	Payload                int
	Shards                 int
	Durability             ds.Durability
	PerShard               bool
	Layout                 ds.LayoutKind
	Dir                    string
	Raw                    bool
	Progress               bool
	Flush                  time.Duration
	Replay                 bool
	SubCatchUp             bool // after the replays, read everything through one subscription (ds.Subscribe)
	Metrics                bool
	Quick                  bool
	RaftWindow             int    // replicated: through StoreAsync with this many messages in flight per publisher; 0: Store
	RaftInFlight           int    // replicated: raftgroup.Config.MaxInFlight (0: its default)
	RaftLogShards          int    // replicated: raftgroup.Config.LogShards (0: its default)
	RaftLeaderBatching     bool   // replicated: raftgroup.Config.LeaderBatching
	RaftSnapshotEntries    uint64 // replicated: raftgroup.Config.SnapshotEntries (0: its default)
	RaftCompactionOverhead uint64 // replicated: raftgroup.Config.CompactionOverhead (0: its default)
}

// Result is one line of the report (and one object of the -json output).
type Result struct {
	Name    string        `json:"scenario"`
	Msgs    int           `json:"messages"`
	Bytes   int64         `json:"payload_bytes"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Rate    float64       `json:"msgs_per_sec"`
	// Store latency, for ingest scenarios with one call per message.
	P50  time.Duration `json:"p50_ns,omitempty"`
	P99  time.Duration `json:"p99_ns,omitempty"`
	P999 time.Duration `json:"p999_ns,omitempty"`
	// Strata ingest only.
	MsgsPerCommit   float64 `json:"msgs_per_commit,omitempty"`
	DiskBytesPerMsg float64 `json:"disk_bytes_per_msg,omitempty"`
	WriteAmp        float64 `json:"write_amp,omitempty"`
	PeakHeapBytes   uint64  `json:"peak_heap_bytes,omitempty"`
	PeakRSSBytes    uint64  `json:"peak_rss_bytes,omitempty"`
	Note            string  `json:"note"`
	// Series is the throughput (msgs/s) every SampleInterval of a publisher run.
	Series []float64 `json:"msgs_per_sec_over_time,omitempty"`
	// LatencyHist counts Store latencies per LatencyBounds bucket.
	LatencyHist []int `json:"latency_histogram,omitempty"`
	// Figures are a scenario's other measurements, by name (the sessions scenario's ratios,
	// delivery rate, state writes per delivery, ...).
	Figures map[string]float64 `json:"figures,omitempty"`
}

// MsgsPerSec is Msgs / Elapsed.
func (r Result) MsgsPerSec() float64 { return float64(r.Msgs) / r.Elapsed.Seconds() }

// setRun records a publisher run: latency percentiles and histogram, and the throughput series.
func (r *Result) setRun(lats []time.Duration, series []float64) {
	r.P50, r.P99, r.P999 = percentiles(lats)
	r.Series = series
	r.LatencyHist = make([]int, len(LatencyBounds)+1)
	for _, l := range lats {
		i, _ := slices.BinarySearch(LatencyBounds, l)
		r.LatencyHist[i]++
	}
}

// LatencyBounds are the upper bounds of Result.LatencyHist's buckets (the last bucket counts
// what is slower): 100µs to 1s, four buckets per decade.
var LatencyBounds = func() []time.Duration {
	var b []time.Duration
	for d := 100.0; d <= 1e6; d *= 1.7782794 { // 10^(1/4)
		b = append(b, time.Duration(d*float64(time.Microsecond)).Round(time.Microsecond))
	}
	return b
}()

// Human renders a rate as 12.3k or 1.23M.
func Human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
