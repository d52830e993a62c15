// Command ds-bench measures Strata on this machine: it opens an embedded DB in a temporary
// directory, ingests messages from many concurrent publishers over a topic tree, replays them
// (everything, a wildcard filter, one publisher's topic) and writes the same bytes to raw Pebble
// for comparison, so the engine's overhead shows as a ratio. The subscription scenarios
// measure ds.Subscribe: fan-out at the tail (one filter, disjoint filters), Store → delivery
// latency at half the maximum ingest (embedded, and on a 3-site cluster), and catch-up from the
// oldest message next to the raw replay. The sessions scenario measures ingest with 10,000
// durable sessions (package session) taking every message, against ingest without, and the
// resume of a session with 100,000 unacknowledged messages.
//
//	go run ./cmd/ds-bench                 # 1M × 1 KiB messages from 1,000 publishers, Sync
//	go run ./cmd/ds-bench -n 200000 -durability nosync -storage per-shard
//	go run ./cmd/ds-bench -scenarios subscribe -sub-fanout-subs 10000 -sub-fanout-n 2000
//	go run ./cmd/ds-bench -scenarios sessions  # ingest with 10,000 durable sessions vs without; resume
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-mq/strata/bench"
	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
)

func main() {
	var c bench.Config
	var durability, storage, lay string
	flag.IntVar(&c.N, "n", 1_000_000, "messages to ingest")
	flag.IntVar(&c.Publishers, "publishers", 1000, "concurrent publishers (one goroutine and client ID each)")
	flag.IntVar(&c.Window, "window", 4, "ingest: also store through StoreAsync with this many messages in flight per publisher (an MQTT Receive Maximum); 0: no such row")
	flag.IntVar(&c.Payload, "payload", 1024, "payload bytes")
	flag.IntVar(&c.Shards, "shards", 16, "NShards")
	flag.StringVar(&durability, "durability", "sync", "sync or nosync")
	flag.StringVar(&storage, "storage", "shared", "shared (one Pebble, shard-prefixed keys), per-shard (one Pebble per shard), or both")
	flag.StringVar(&lay, "layout", "lts", "lts or reference")
	flag.StringVar(&c.Dir, "dir", "", "directory for the DB (default: a temporary directory, removed afterwards)")
	flag.BoolVar(&c.Raw, "raw", true, "also write the same bytes to raw Pebble")
	flag.BoolVar(&c.Progress, "progress", true, "print a progress line on stderr")
	flag.BoolVar(&c.Metrics, "metrics", false, "print Strata's and Pebble's metrics after ingest")
	flag.BoolVar(&c.Replay, "replay", true, "run the replay scenarios after ingest")
	flag.IntVar(&c.MemTableBytes, "memtable", 0, "Options.Expert.MemTableBytes (0: the default)")
	recoveryChild := flag.String(bench.RecoveryChildFlag, "", "internal: run as the recovery scenario's writing child over this DB directory")
	recoveryBytes := flag.Int64("recovery-bytes", 2<<30, "recovery: how many bytes the DB holds when the writing child is killed")
	sweep := flag.String("payload-sweep", "128", "ingest: also measure these payload sizes (comma-separated bytes, e.g. 64,128,1024,8192,65536), each next to raw Pebble batched; empty: none")
	flag.DurationVar(&c.Flush, "flush", 0, "Options.FlushInterval (0: the default)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	traceFile := flag.String("trace", "", "write a Go execution trace of the whole run to this file (go tool trace; -pprof=sync|syscall|sched)")
	asJSON := flag.Bool("json", false, "print the results as JSON instead of a table")
	report := flag.String("report", "", "also write an HTML report with charts to this file")
	flag.BoolVar(&c.Quick, "quick", false, "a short run (300k messages, no default-options Pebble baseline), well under a minute")
	scenarios := flag.String("scenarios", "ingest,fanout,retention,raw,replicated,subscribe,subscribe-replicated,sessions",
		"comma-separated: ingest (with the replays), fanout, retention, raw, replicated, subscribe (fan-out at the tail, latency, catch-up), subscribe-replicated (latency on -sites sites), sessions (ingest with -sessions-count durable sessions vs without, resume), recovery (Open after kill -9 of a child writing at full load, at -recovery-bytes; not in the default set)")
	logdbs := flag.String("raft-logdb", "segments", "replicated: Raft LogDB(s) to measure, comma-separated: segments (Strata's own), pebble, tan (tan measured 0.6× of pebble with 16 shards)")
	raftN := flag.Int("raft-n", 200_000, "replicated: messages (the cluster ingests ~20k msgs/s here; capped by -n)")
	raftShards := flag.Int("raft-shards", 16, "replicated: shards (the DB's default; fewer shards, larger Raft entries)")
	raftSites := flag.String("raft-sites", "3,5", "replicated: comma-separated numbers of sites in this process (replication factor 3), one row each")
	sites := flag.Int("sites", 3, "replicated: sites in this process (replication factor 3)")
	flag.IntVar(&c.RaftWindow, "raft-window", 16, "replicated: also store through StoreAsync with this many messages in flight per publisher, a row per site count; 0: no such row")
	flag.IntVar(&c.RaftInFlight, "raft-inflight", 0, "replicated: proposals in flight per shard and site (0: the default)")
	flag.BoolVar(&c.RaftLeaderBatching, "raft-leader-batching", false, "replicated: raftgroup.Config.LeaderBatching (a site sends its Store batches to the shard's leader site instead of proposing them through its replica)")
	flag.Uint64Var(&c.RaftSnapshotEntries, "raft-snapshot-entries", 0, "replicated: raftgroup.Config.SnapshotEntries, entries between a replica's snapshots (log compactions) (0: the default)")
	flag.Uint64Var(&c.RaftCompactionOverhead, "raft-compaction-overhead", 0, "replicated: raftgroup.Config.CompactionOverhead, entries kept in the log after a compaction (0: the default)")
	flag.IntVar(&c.RaftLogShards, "raft-log-shards", 0, "replicated: raftgroup.Config.LogShards, the Raft log writers per site (0: the default, 1)")
	fanReaders := flag.Int("fanout-readers", 100, "fan-out: readers of one stream")
	fanN := flag.Int("fanout-n", 20_000, "fan-out: messages in the stream")
	span := flag.Duration("retention-span", 100*time.Millisecond, "retention: GenerationSpan (Retention is twice it)")
	var sc bench.SubConfig
	flag.IntVar(&sc.FanOutSubs, "sub-fanout-subs", 10_000, "subscribe: subscriptions on one filter, fed at the tail")
	flag.IntVar(&sc.FanOutN, "sub-fanout-n", 500, "subscribe: messages each of the -sub-fanout-subs subscriptions takes")
	flag.IntVar(&sc.DisjointSubs, "sub-disjoint-subs", 1000, "subscribe: subscriptions on disjoint filters fan/<i>/#")
	flag.IntVar(&sc.DisjointN, "sub-disjoint-n", 50_000, "subscribe: messages spread over the -sub-disjoint-subs filters")
	flag.IntVar(&sc.Publishers, "sub-publishers", 100, "subscribe: publishers of the fan-out runs")
	flag.IntVar(&sc.LatencySubs, "sub-latency-subs", 10, "subscribe: subscriptions on t/# during the latency run")
	flag.IntVar(&sc.LatencyN, "sub-latency-n", 100_000, "subscribe: messages of the latency run (first as fast as possible, to measure the maximum, then paced)")
	flag.Float64Var(&sc.LatencyRate, "sub-rate", 0, "subscribe: msgs/s of the latency run (0: half the maximum ingest, measured first)")
	flag.IntVar(&sc.CatchUpN, "sub-catchup-n", 1_000_000, "subscribe: messages stored and read back through one subscription (0: none); when the ingest scenario runs, its DB and messages instead")
	flag.IntVar(&sc.MaxUnacked, "sub-max-unacked", 0, "subscribe: SubscribeOptions.MaxUnacked (0: the default, 1000)")
	subRaftN := flag.Int("sub-raft-n", 30_000, "subscribe-replicated: messages of the latency run")
	subRaftRate := flag.Float64("sub-raft-rate", 0, "subscribe-replicated: msgs/s of the latency run (0: half the maximum through site 0, measured first)")
	subLogDB := flag.String("sub-raft-logdb", "segments", "subscribe-replicated: Raft LogDB (segments, pebble or tan)")
	var ssc bench.SessionConfig
	flag.IntVar(&ssc.Sessions, "sessions-count", 10_000, "sessions: durable sessions connected during the second ingest run, session i on dev/<i>/# (QoS 1)")
	flag.IntVar(&ssc.N, "sessions-n", 200_000, "sessions: messages of each ingest run (without, then with the sessions)")
	flag.IntVar(&ssc.ResumeN, "sessions-resume-n", 100_000, "sessions: unacknowledged QoS 1 messages of the resumed session (0: no resume run)")
	flag.DurationVar(&ssc.CheckpointInterval, "sessions-checkpoint", 0, "sessions: session.Options.CheckpointInterval (0: the default, 1s)")
	flag.Parse()
	if *recoveryChild != "" {
		if err := bench.RecoveryChild(*recoveryChild, c); err != nil {
			fail("recovery child: %v", err)
		}
		return
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		want[strings.TrimSpace(s)] = true
	}
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
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			fail("%v", err)
		}
		if err := trace.Start(f); err != nil {
			fail("%v", err)
		}
		defer trace.Stop()
	}

	if c.Quick {
		nSet := false
		flag.Visit(func(f *flag.Flag) { nSet = nSet || f.Name == "n" })
		if !nSet {
			c.N = 300_000
		}
	}
	switch durability {
	case "sync":
		c.Durability = ds.Sync
	case "nosync":
		c.Durability = ds.NoSync
	default:
		fail("unknown -durability %q", durability)
	}
	switch lay {
	case "lts":
		c.Layout = ds.LayoutLTS
	case "reference":
		c.Layout = ds.LayoutReference
	default:
		fail("unknown -layout %q", lay)
	}
	if c.Quick {
		sc.FanOutSubs, sc.FanOutN = min(sc.FanOutSubs, 1000), min(sc.FanOutN, 300)
		sc.DisjointN = min(sc.DisjointN, 10_000)
		sc.LatencyN, *subRaftN = min(sc.LatencyN, 20_000), min(*subRaftN, 10_000)
		ssc.Sessions, ssc.N, ssc.ResumeN = min(ssc.Sessions, 1000), min(ssc.N, 50_000), min(ssc.ResumeN, 20_000)
	}
	if c.Quick {
		sc.CatchUpN = min(sc.CatchUpN, c.N)
	}
	if want["ingest"] && c.Replay {
		c.SubCatchUp, sc.CatchUpN = want["subscribe"], 0 // on the ingest scenario's DB
	}
	if c.N < c.Publishers || c.Publishers < 1 || c.Payload < 0 {
		fail("need -n >= -publishers >= 1 and -payload >= 0")
	}
	modes := map[string][]bool{"shared": {false}, "per-shard": {true}, "both": {false, true}}[storage]
	if modes == nil {
		fail("unknown -storage %q", storage)
	}

	if !*asJSON {
		fmt.Printf("ds-bench: %d messages × %d B payload from %d publishers, %d shards, %s, layout %s; GOMAXPROCS %d\n\n",
			c.N, c.Payload, c.Publishers, c.Shards, c.Durability, c.Layout, runtime.GOMAXPROCS(0))
	}
	var results []bench.Result
	for _, perShard := range modes {
		c.PerShard = perShard
		if want["ingest"] {
			rs, err := bench.RunStrata(c)
			if err != nil {
				fail("%v", err)
			}
			results = append(results, rs...)
			sc.MaxIngest = rs[0].MsgsPerSec() // the latency run takes half of it
		}
		if want["fanout"] {
			r, err := bench.RunFanOut(c, *fanN, *fanReaders)
			if err != nil {
				fail("fan-out: %v", err)
			}
			results = append(results, r)
		}
		if want["subscribe"] {
			rs, err := bench.RunSubscribe(c, sc)
			if err != nil {
				fail("subscribe: %v", err)
			}
			results = append(results, rs...)
		}
		if want["sessions"] {
			rs, err := bench.RunSessions(c, ssc)
			if err != nil {
				fail("sessions: %v", err)
			}
			results = append(results, rs...)
		}
		if want["retention"] {
			rc := c
			rc.N = c.N / 2
			r, err := bench.RunRetentionUnderLoad(rc, *span)
			if err != nil {
				fail("retention: %v", err)
			}
			results = append(results, r)
		}
	}
	if want["ingest"] && strings.TrimSpace(*sweep) != "" {
		var sizes []int
		for _, f := range strings.Split(*sweep, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 {
				fail("-payload-sweep: %q is not a size in bytes", f)
			}
			sizes = append(sizes, n)
		}
		rs, err := bench.RunPayloadSweep(c, sizes)
		if err != nil {
			fail("%v", err)
		}
		results = append(results, rs...)
	}
	if want["recovery"] {
		self, err := os.Executable()
		if err != nil {
			fail("recovery: %v", err)
		}
		r, err := bench.RunRecovery(c, self, *recoveryBytes)
		if err != nil {
			fail("%v", err)
		}
		results = append(results, r)
	}
	if want["replicated"] {
		for _, l := range strings.Split(*logdbs, ",") {
			for _, ns := range strings.Split(*raftSites, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(ns))
				if err != nil || n < 3 {
					fail("-raft-sites: %q is not a number of sites ≥ 3", ns)
				}
				rc := c
				rc.N, rc.Shards = min(c.N, *raftN), *raftShards
				if c.Quick {
					rc.N = min(rc.N, 60_000)
				}
				windows := []int{0} // Store, one message at a time per publisher
				if c.RaftWindow > 0 {
					windows = append(windows, c.RaftWindow) // and StoreAsync
				}
				for _, w := range windows {
					wc := rc
					wc.RaftWindow = w
					r, err := bench.RunReplicated(wc, n, raftgroup.LogDB(strings.TrimSpace(l)))
					if err != nil {
						fail("replicated: %v", err)
					}
					results = append(results, r)
				}
			}
		}
	}
	if want["subscribe-replicated"] {
		rc := c
		rc.Shards = *raftShards
		rsc := sc
		rsc.LatencyN, rsc.LatencyRate, rsc.MaxIngest = *subRaftN, *subRaftRate, 0 // measured through site 0
		rs, err := bench.RunSubscribeReplicated(rc, rsc, *sites, raftgroup.LogDB(*subLogDB))
		if err != nil {
			fail("subscribe-replicated: %v", err)
		}
		results = append(results, rs...)
	}
	if c.Raw && want["raw"] {
		rs, err := bench.RunRawPebble(c)
		if err != nil {
			fail("raw pebble: %v", err)
		}
		results = append(results, rs...)
	}
	for i := range results {
		results[i].Rate = results[i].MsgsPerSec()
	}
	if *report != "" {
		f, err := os.Create(*report)
		if err != nil {
			fail("%v", err)
		}
		title := fmt.Sprintf("Strata ds-bench: %d × %d B from %d publishers, %d shards, %s, %s",
			c.N, c.Payload, c.Publishers, c.Shards, c.Durability, c.Layout)
		if err := bench.WriteHTML(f, title, results); err != nil {
			fail("%v", err)
		}
		if err := f.Close(); err != nil {
			fail("%v", err)
		}
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

func printResults(rs []bench.Result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tmessages\ttime\tmsgs/s\tMB/s\tp50\tp99\tp99.9\t\tnote")
	for _, r := range rs {
		lat := func(d time.Duration) string {
			if r.P50 == 0 && r.P99 == 0 && r.P999 == 0 {
				return "-" // no latency measured
			}
			return d.Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%.1f\t%s\t%s\t%s\t\t%s\n", r.Name, r.Msgs, r.Elapsed.Round(time.Millisecond),
			bench.Human(r.Rate), float64(r.Bytes)/r.Elapsed.Seconds()/1e6, lat(r.P50), lat(r.P99), lat(r.P999), r.Note)
	}
	w.Flush()
	// Ratios of Strata's ingest to raw Pebble's, when both ran: with the same publishers (one
	// batch per message), and batched (16 writers × 1,000 messages per commit: the floor).
	var raw, batched float64
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "raw pebble, 1 batch/msg") && raw == 0 {
			raw = r.Rate
		}
		if strings.HasPrefix(r.Name, "raw pebble, batched (") && batched == 0 {
			batched = r.Rate
		}
	}
	if raw > 0 || batched > 0 {
		fmt.Println()
		for _, r := range rs {
			if !strings.HasPrefix(r.Name, "ingest") {
				continue
			}
			if raw > 0 {
				fmt.Printf("%s / raw pebble 1 batch/msg (same options, same publishers): %.2f×\n", r.Name, r.Rate/raw)
			}
			if batched > 0 {
				fmt.Printf("%s / raw pebble batched (same options, 16 writers × 1,000 msgs/commit): %.2f×\n", r.Name, r.Rate/batched)
			}
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ds-bench: "+format+"\n", args...)
	os.Exit(2)
}
