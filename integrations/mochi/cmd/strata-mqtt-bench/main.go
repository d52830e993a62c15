// Command strata-mqtt-bench compares mochi-mqtt v2 alone with mochi on Strata (the hook of
// package mochi over an embedded ds.DB in a temporary directory), both in this process in the
// same run, driven by real MQTT 3.1.1 clients (paho.mqtt.golang) over TCP on 127.0.0.1.
//
//	go run ./cmd/strata-mqtt-bench                       # every scenario, once
//	go run ./cmd/strata-mqtt-bench -runs 3               # median and min–max of 3 runs
//	go run ./cmd/strata-mqtt-bench -scenarios anchor,drain -drain-messages 20000
//
// Scenarios (-scenarios, a comma list; default all). Every message's payload carries its
// publisher's id and sequence number; every delivery is checked, and duplicates and
// out-of-order deliveries (per publisher) are counted and printed.
//
//   - ingest: QoS 1 publish throughput with -publishers connections (default 1000 and 10),
//     each sending one PUBLISH and waiting for its PUBACK before the next (as a device does),
//     for -duration (or -ingest-messages in all). -subscribers durable (clean session =
//     false) QoS 1 subscribers are connected and consume everything: with mochi alone they
//     are mochi's in-memory sessions; on Strata the hook stores each message in the DB
//     (fsync'd) before the PUBACK. Printed: msgs/s, Publish-to-PUBACK latency p50/p99, what
//     the subscribers received (missing, duplicates, out of order), mochi's drop counters,
//     and the Strata/mochi ratios of the same run. The publishers are connected (in parallel,
//     -connect-parallel at a time) before the timer starts.
//   - drain: a durable QoS 1 subscriber subscribes and disconnects; -drain-messages messages
//     are published by -drain-publishers clients; the subscriber reconnects and the time
//     until it has received them all is measured (delivered msgs/s). Meaningful on Strata;
//     mochi alone keeps at most 8192 (MaximumInflight) messages for an offline client and
//     drops the rest, so its row shows what it delivers.
//   - anchor: as drain with one publisher and -anchor-messages messages, (a) reconnecting to
//     the same broker and (b) after a broker restart (Strata: server, session store and DB
//     closed and reopened on the same directory; mochi alone: a new server); delivered and
//     missing messages side by side.
//
// Tables go to stdout, progress to stderr. Clients and brokers share the machine's cores
// (GOMAXPROCS), so the figures are those of the whole system, clients included; the load
// average is printed at the start and end, as other processes skew the figures.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "strata-mqtt-bench:", err)
		os.Exit(1)
	}
}

var allScenarios = []string{"ingest", "drain", "anchor"}

// config is the benchmark's configuration (from the flags).
type config struct {
	Scenarios       []string
	Runs            int
	Payload         int
	Publishers      []int // ingest rows
	Subscribers     int
	Duration        time.Duration // of an ingest row, unless IngestMessages > 0
	IngestMessages  int
	ConnectParallel int
	DrainMessages   int
	DrainPublishers int
	Window          int // PUBLISHes awaiting their PUBACK per drain/anchor publisher
	AnchorMessages  int
	Idle            time.Duration // waiting for deliveries ends when none came for Idle
	Limit           time.Duration // or after Limit
	Dir             string        // parent of the temporary DB directories
	CPUProfile      string

	Log      *slog.Logger
	Progress io.Writer
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{Progress: stderr}
	fs := flag.NewFlagSet("strata-mqtt-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", strings.Join(allScenarios, ","), "comma list of scenarios: "+strings.Join(allScenarios, ", "))
	publishers := fs.String("publishers", "1000,10", "ingest: comma list of publisher connection counts, one row each")
	verbose := fs.Bool("v", false, "log the brokers' warnings to stderr")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.IntVar(&cfg.Runs, "runs", 1, "repeat each scenario this many times (median and min–max printed)")
	fs.IntVar(&cfg.Payload, "payload", 1024, "payload size in bytes (at least 8)")
	fs.IntVar(&cfg.Subscribers, "subscribers", 4, "ingest: durable subscribers, each subscribed to a share of the publishers' topics")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "ingest: how long each row publishes")
	fs.IntVar(&cfg.IngestMessages, "ingest-messages", 0, "ingest: publish this many messages per row instead of for -duration")
	fs.IntVar(&cfg.ConnectParallel, "connect-parallel", 32, "clients connected (and disconnected) at once")
	fs.IntVar(&cfg.DrainMessages, "drain-messages", 100_000, "drain: messages published while the subscriber is offline")
	fs.IntVar(&cfg.DrainPublishers, "drain-publishers", 4, "drain: publisher connections")
	fs.IntVar(&cfg.Window, "window", 64, "drain, anchor: PUBLISHes awaiting their PUBACK per publisher")
	fs.IntVar(&cfg.AnchorMessages, "anchor-messages", 10_000, "anchor: messages published while the subscriber is offline")
	fs.DurationVar(&cfg.Idle, "idle", 3*time.Second, "a subscriber is done when nothing arrived for this long")
	fs.DurationVar(&cfg.Limit, "limit", 5*time.Minute, "longest wait for a subscriber's deliveries")
	fs.StringVar(&cfg.Dir, "dir", "", "where the temporary DB directories are created (default: the system's temporary directory)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, s := range strings.Split(*scenarios, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		known := false
		for _, a := range allScenarios {
			known = known || a == s
		}
		if !known {
			return nil, fmt.Errorf("-scenarios: unknown scenario %q", s)
		}
		cfg.Scenarios = append(cfg.Scenarios, s)
	}
	for _, s := range strings.Split(*publishers, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-publishers: %q is not a positive count", s)
		}
		cfg.Publishers = append(cfg.Publishers, n)
	}
	switch {
	case cfg.Runs < 1:
		return nil, errors.New("-runs must be at least 1")
	case cfg.Payload < 8:
		return nil, errors.New("-payload must be at least 8 (publisher id and sequence number)")
	case cfg.Subscribers < 1 || cfg.DrainPublishers < 1 || cfg.Window < 1 || cfg.ConnectParallel < 1:
		return nil, errors.New("-subscribers, -drain-publishers, -window and -connect-parallel must be at least 1")
	case cfg.DrainMessages < 1 || cfg.AnchorMessages < 1:
		return nil, errors.New("-drain-messages and -anchor-messages must be at least 1")
	case cfg.Duration <= 0 && cfg.IngestMessages <= 0:
		return nil, errors.New("-duration or -ingest-messages must be positive")
	}
	level := slog.LevelError + 1 // nothing
	if *verbose {
		level = slog.LevelWarn
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return cfg, nil
}

func (cfg *config) has(scenario string) bool {
	for _, s := range cfg.Scenarios {
		if s == scenario {
			return true
		}
	}
	return false
}

func (cfg *config) progress(format string, args ...any) {
	fmt.Fprintf(cfg.Progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// dbDir returns a new temporary directory for a DB (used by the Strata broker only).
func (cfg *config) dbDir() (string, error) { return os.MkdirTemp(cfg.Dir, "strata-mqtt-bench-*") }

func (cfg *config) removeDir(dir string) error { return os.RemoveAll(dir) }

// results are every scenario's results, of every run.
type results struct {
	Ingest []*ingestResult
	Drain  []*drainResult
	Anchor []*anchorResult
}

// bench runs the configured scenarios cfg.Runs times.
func bench(cfg *config) (*results, error) {
	res := &results{}
	for run := 1; run <= cfg.Runs; run++ {
		if cfg.has("ingest") {
			for _, n := range cfg.Publishers {
				for _, v := range variants {
					cfg.progress("run %d/%d: ingest, %s, %d publishers", run, cfg.Runs, v, n)
					r, err := runIngest(cfg, v, n)
					if err != nil {
						return nil, fmt.Errorf("ingest, %s, %d publishers: %w", v, n, err)
					}
					cfg.progress("  %.0f msgs/s, p50 %.2f ms, p99 %.2f ms; received %d of %d", r.Rate, ms(r.P50), ms(r.P99), r.Got.Unique, r.Sent)
					res.Ingest = append(res.Ingest, r)
				}
			}
		}
		if cfg.has("drain") {
			for _, v := range variants {
				cfg.progress("run %d/%d: drain, %s, %d messages", run, cfg.Runs, v, cfg.DrainMessages)
				r, err := runDrain(cfg, v)
				if err != nil {
					return nil, fmt.Errorf("drain, %s: %w", v, err)
				}
				cfg.progress("  delivered %d of %d in %v", r.Got.Unique, r.Published, r.DrainTime.Round(time.Millisecond))
				res.Drain = append(res.Drain, r)
			}
		}
		if cfg.has("anchor") {
			for _, restart := range []bool{false, true} {
				for _, v := range variants {
					cfg.progress("run %d/%d: anchor, %s, restart %v", run, cfg.Runs, v, restart)
					r, err := runAnchor(cfg, v, restart)
					if err != nil {
						return nil, fmt.Errorf("anchor, %s, restart %v: %w", v, restart, err)
					}
					cfg.progress("  delivered %d of %d", r.Got.Unique, r.Published)
					res.Anchor = append(res.Anchor, r)
				}
			}
		}
	}
	return res, nil
}

func (res *results) print(cfg *config, w io.Writer) {
	var tables []*table
	if len(res.Ingest) > 0 {
		tables = append(tables, ingestTables(cfg, res.Ingest)...)
	}
	if len(res.Drain) > 0 {
		tables = append(tables, drainTable(cfg, res.Drain))
	}
	if len(res.Anchor) > 0 {
		tables = append(tables, anchorTable(cfg, res.Anchor))
	}
	for _, t := range tables {
		t.print(w)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# strata-mqtt-bench: %s, GOMAXPROCS %d, %s/%s, load average at start: %s\n",
		runtime.Version(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, loadAverage())
	fmt.Fprintf(stdout, "# %s\n", strings.Join(args, " "))
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	res, err := bench(cfg)
	if err != nil {
		return err
	}
	res.print(cfg, stdout)
	fmt.Fprintf(stdout, "\n# took %v; load average at end: %s\n", time.Since(start).Round(time.Second), loadAverage())
	return nil
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute figures, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
