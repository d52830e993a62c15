// Package bench holds Strata's benchmark scenarios, used by cmd/ds-bench and by go test -bench:
// ingest from many concurrent publishers, replays (everything, a wildcard, one publisher),
// fan-out (many readers of one stream), retention under load (rotation and drops while
// ingesting), and raw Pebble writing the same bytes as the floor under Strata.
package bench

import (
	"fmt"
	"time"

	"github.com/strata-mq/strata/ds"
)

// Config describes a benchmark run.
type Config struct {
	N          int
	Publishers int
	Payload    int
	Shards     int
	Durability ds.Durability
	PerShard   bool
	Layout     ds.LayoutKind
	Dir        string
	Raw        bool
	Progress   bool
	Flush      time.Duration
	Replay     bool
	Metrics    bool
	Quick      bool
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
}

// MsgsPerSec is Msgs / Elapsed.
func (r Result) MsgsPerSec() float64 { return float64(r.Msgs) / r.Elapsed.Seconds() }

func (r *Result) setLatency(lats []time.Duration) { r.P50, r.P99, r.P999 = percentiles(lats) }

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
