// Command ds-bench measures Strata on this machine: it opens an embedded DB in a temporary
// directory, ingests messages from many concurrent publishers over a topic tree, replays them
// (everything, a wildcard filter, one publisher's topic) and writes the same bytes to raw Pebble
// for comparison, so the engine's overhead shows as a ratio.
//
//	go run ./cmd/ds-bench                 # 1M × 1 KiB messages from 1,000 publishers, Sync
//	go run ./cmd/ds-bench -n 200000 -durability nosync -storage per-shard
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-mq/strata/ds"
)

type config struct {
	n          int
	publishers int
	payload    int
	shards     int
	durability ds.Durability
	perShard   bool
	layout     ds.LayoutKind
	dir        string
	raw        bool
	progress   bool
	flush      time.Duration
	replay     bool
	metrics    bool
	quick      bool
}

func main() {
	var c config
	var durability, storage, lay string
	flag.IntVar(&c.n, "n", 1_000_000, "messages to ingest")
	flag.IntVar(&c.publishers, "publishers", 1000, "concurrent publishers (one goroutine and client ID each)")
	flag.IntVar(&c.payload, "payload", 1024, "payload bytes")
	flag.IntVar(&c.shards, "shards", 16, "NShards")
	flag.StringVar(&durability, "durability", "sync", "sync or nosync")
	flag.StringVar(&storage, "storage", "shared", "shared (one Pebble, shard-prefixed keys), per-shard (one Pebble per shard), or both")
	flag.StringVar(&lay, "layout", "lts", "lts or reference")
	flag.StringVar(&c.dir, "dir", "", "directory for the DB (default: a temporary directory, removed afterwards)")
	flag.BoolVar(&c.raw, "raw", true, "also write the same bytes to raw Pebble")
	flag.BoolVar(&c.progress, "progress", true, "print a progress line on stderr")
	flag.BoolVar(&c.metrics, "metrics", false, "print Strata's and Pebble's metrics after ingest")
	flag.BoolVar(&c.replay, "replay", true, "run the replay scenarios after ingest")
	flag.DurationVar(&c.flush, "flush", 0, "Options.FlushInterval (0: the default)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	asJSON := flag.Bool("json", false, "print the results as JSON instead of a table")
	flag.BoolVar(&c.quick, "quick", false, "a short run (300k messages, no default-options Pebble baseline), well under a minute")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail("%v", err)
		}
		defer pprof.StopCPUProfile()
	}

	if c.quick {
		nSet := false
		flag.Visit(func(f *flag.Flag) { nSet = nSet || f.Name == "n" })
		if !nSet {
			c.n = 300_000
		}
	}
	switch durability {
	case "sync":
		c.durability = ds.Sync
	case "nosync":
		c.durability = ds.NoSync
	default:
		fail("unknown -durability %q", durability)
	}
	switch lay {
	case "lts":
		c.layout = ds.LayoutLTS
	case "reference":
		c.layout = ds.LayoutReference
	default:
		fail("unknown -layout %q", lay)
	}
	if c.n < c.publishers || c.publishers < 1 || c.payload < 0 {
		fail("need -n >= -publishers >= 1 and -payload >= 0")
	}
	modes := map[string][]bool{"shared": {false}, "per-shard": {true}, "both": {false, true}}[storage]
	if modes == nil {
		fail("unknown -storage %q", storage)
	}

	if !*asJSON {
		fmt.Printf("ds-bench: %d messages × %d B payload from %d publishers, %d shards, %s, layout %s; GOMAXPROCS %d\n\n",
			c.n, c.payload, c.publishers, c.shards, c.durability, c.layout, runtime.GOMAXPROCS(0))
	}
	var results []result
	for _, perShard := range modes {
		c.perShard = perShard
		rs, err := runStrata(c)
		if err != nil {
			fail("%v", err)
		}
		results = append(results, rs...)
	}
	if c.raw {
		rs, err := runRawPebble(c)
		if err != nil {
			fail("raw pebble: %v", err)
		}
		results = append(results, rs...)
	}
	for i := range results {
		results[i].Rate = results[i].rate()
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			fail("%v", err)
		}
		return
	}
	printResults(results)
}

// result is one line of the report (and one object of the -json output).
type result struct {
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

func (r result) rate() float64 { return float64(r.Msgs) / r.Elapsed.Seconds() }

func (r *result) setLatency(lats []time.Duration) { r.P50, r.P99, r.P999 = percentiles(lats) }

func printResults(rs []result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tmessages\ttime\tmsgs/s\tMB/s\tp50\tp99\tp99.9\t\tnote")
	lat := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return d.Round(10 * time.Microsecond).String()
	}
	for _, r := range rs {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%.1f\t%s\t%s\t%s\t\t%s\n", r.Name, r.Msgs, r.Elapsed.Round(time.Millisecond),
			human(r.rate()), float64(r.Bytes)/r.Elapsed.Seconds()/1e6, lat(r.P50), lat(r.P99), lat(r.P999), r.Note)
	}
	w.Flush()
	// Ratios of Strata's ingest to raw Pebble's, when both ran.
	var raw float64
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "raw pebble, 1 batch/msg") && raw == 0 {
			raw = r.rate()
		}
	}
	if raw > 0 {
		fmt.Println()
		for _, r := range rs {
			if strings.HasPrefix(r.Name, "ingest") {
				fmt.Printf("%s / raw pebble 1 batch/msg (same options, same publishers): %.2f×\n", r.Name, r.rate()/raw)
			}
		}
	}
}

func human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ds-bench: "+format+"\n", args...)
	os.Exit(2)
}
