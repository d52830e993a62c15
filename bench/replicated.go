package bench

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/raftgroup"
	"github.com/strata-mq/strata/raftgroup/clustertest"
)

// RunReplicated measures durable ingest into a replicated cluster: sites sites in this process
// on 127.0.0.1 (each its own NodeHost, Raft log and replicas), bootstrapped with replication
// factor 3 and c.Shards shards; publisher p stores through site p mod sites, so two thirds of
// the proposals are forwarded to a leader elsewhere. A Store returns once a quorum of the
// shard's voters holds the message in its Raft log (fsynced) and the local proposer learned
// the outcome. With c.RaftWindow > 0 the publishers store through StoreAsync instead, each
// keeping that many messages in flight.
func RunReplicated(c Config, sites int, logdb raftgroup.LogDB) (Result, error) {
	dirName := "replicated-" + string(logdb)
	if c.RaftWindow > 0 {
		dirName += fmt.Sprintf("-async%d", c.RaftWindow)
	}
	cl, dbs, err := startSites(c, sites, logdb, dirName)
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	name := fmt.Sprintf("replicated ingest (%d sites, RF 3, %d shards, %s log)", sites, c.Shards, logdb)
	cpu0 := processCPU()
	mem := startMemory()
	logs0 := logStats(cl, sites)
	// A Store that fails with ErrUnavailable (a proposal that timed out on the loaded machine,
	// a leader change) is sent again, as an MQTT client resends an unacknowledged QoS 1
	// PUBLISH; its latency includes the retries, and the row counts them. A third failure, or
	// any other error, ends the run.
	var retried atomic.Int64
	var firstRetry atomic.Pointer[error]
	message := func(p, i int) ds.Message {
		return ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]}
	}
	var elapsed time.Duration
	var lats []time.Duration
	var series []float64
	if c.RaftWindow > 0 {
		// Through StoreAsync, c.RaftWindow messages in flight per publisher; a failure ends
		// the run (no resend).
		name += fmt.Sprintf(", StoreAsync ×%d", c.RaftWindow)
		elapsed, lats, series, err = runWindowed(name, c.N, c.Publishers, c.RaftWindow, c.Progress, func(p, i int, done func(error)) error {
			return dbs[p%sites].StoreAsync(ctx, message(p, i), func(_ ds.Ref, err error) { done(err) })
		})
	} else {
		elapsed, lats, series, err = runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
			m := message(p, i)
			for attempt := 1; ; attempt++ {
				_, err := dbs[p%sites].Store(ctx, m)
				if err == nil || attempt == 3 || !errors.Is(err, ds.ErrUnavailable) {
					return err
				}
				retried.Add(1)
				firstRetry.CompareAndSwap(nil, &err)
			}
		})
	}
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	heap, rss := mem.finish()
	cpu := processCPU() - cpu0
	logs := logStats(cl, sites)
	var all ds.Metrics // every site's proposers: each proposes the Stores made through it
	for _, db := range dbs {
		m, err := db.Metrics()
		if err != nil {
			return Result{}, err
		}
		all.Shards = append(all.Shards, m.Shards...)
	}
	t := all.Totals()
	msgs, batches := t.Messages, t.Batches
	r := Result{Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
		MsgsPerCommit: float64(msgs) / float64(max(batches, 1)), PeakHeapBytes: heap, PeakRSSBytes: rss}
	r.setRun(lats, series)
	// The process runs every site: its CPU time per message, divided by the sites.
	cpuPerMsg := cpu.Seconds() * 1e6 / float64(c.N) / float64(sites)
	r.Figures = map[string]float64{"cpu_us_per_msg_per_site": cpuPerMsg}
	// Where the data went: each site's shard replicas' directories (its Raft log excluded),
	// as a share of one copy of the data (3/sites each when the shards are spread evenly).
	var share []string
	total, most := int64(0), int64(0)
	sizes := make([]int64, sites)
	for i := range sites {
		sizes[i] = dirBytes(filepath.Join(cl.Dir(i), "replicas"))
		total += sizes[i]
		most = max(most, sizes[i])
	}
	// RF 3: all sites hold three copies; a site's share of one copy is 3 × its share of all.
	for _, b := range sizes {
		share = append(share, fmt.Sprintf("%.2f", 3*float64(b)/float64(max(total, 1))))
	}
	r.Figures["max_site_copy_share"] = 3 * float64(most) / float64(max(total, 1))
	r.Note = fmt.Sprintf("%.0f msgs/proposal, %.0f CPU-µs/msg per site, per msg: %s (commit: the Raft round); replica data per site, as a share of one copy: %s (%d MiB in all); heap %d MiB, RSS %d MiB (all %d sites in one process)",
		r.MsgsPerCommit, cpuPerMsg, stageNote(t, r.Figures), strings.Join(share, "/"), total>>20, heap>>20, rss>>20, sites)
	if logs != nil {
		// Raft log fsyncs per site: each site's own log, over the run (LogDBSegments).
		var fsyncs []string
		var most, all float64
		var took time.Duration
		for i := range logs {
			n := float64(logs[i].Fsyncs - logs0[i].Fsyncs)
			most, all, took = max(most, n), all+n, took+logs[i].FsyncTime-logs0[i].FsyncTime
			fsyncs = append(fsyncs, fmt.Sprintf("%.0f", n/elapsed.Seconds()))
		}
		r.Figures["log_fsyncs_per_sec_max_site"] = most / elapsed.Seconds()
		r.Figures["msgs_per_log_fsync"] = float64(c.N) / max(most, 1)
		r.Figures["log_fsync_ms"] = took.Seconds() * 1e3 / max(all, 1)
		r.Note += fmt.Sprintf("; Raft log fsyncs per second per site %s (%.1f messages per fsync on the busiest, %.2f ms each)",
			strings.Join(fsyncs, "/"), r.Figures["msgs_per_log_fsync"], r.Figures["log_fsync_ms"])
	}
	r.Figures["stores_retried"] = float64(retried.Load())
	if t.Forwarded > 0 {
		r.Figures["forwarded_share"] = float64(t.Forwarded) / float64(c.N)
		r.Note += fmt.Sprintf("; %.0f%% of the messages forwarded by a site without the shard's replica (%.0f per call)",
			100*r.Figures["forwarded_share"], float64(t.Forwarded)/float64(max(t.ForwardedBatches, 1)))
	}
	if e := firstRetry.Load(); e != nil {
		r.Note += fmt.Sprintf("; %d Stores failed and were sent again (first: %v)", retried.Load(), *e)
	}
	return r, nil
}

// logStats returns every site's Raft log counters, or nil if the sites' LogDB keeps none.
func logStats(cl *clustertest.Cluster, sites int) []raftgroup.LogStats {
	var out []raftgroup.LogStats
	for i := range sites {
		st, ok := cl.Site(i).LogStats()
		if !ok {
			return nil
		}
		out = append(out, st)
	}
	return out
}

// dirBytes sums the sizes of the files under dir (0 where it cannot be read).
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// startSites starts sites sites in this process on 127.0.0.1 (raftgroup/clustertest: each its
// own NodeHost, Raft log and replicas, under c.Dir/name or a temporary directory), bootstrapped
// with replication factor 3 and c.Shards shards, and warms up: every shard gets a leader, and a
// first Store per shard (topic "warmup", through site 0) has gone through it, before anything
// is measured. cl.Close closes the sites and removes the temporary directory.
func startSites(c Config, sites int, logdb raftgroup.LogDB, name string) (cl *clustertest.Cluster, dbs []*ds.DB, err error) {
	dir := c.Dir
	if dir != "" {
		dir = filepath.Join(dir, name)
	}
	ctx := context.Background()
	started, err := clustertest.Start(ctx, clustertest.Options{Sites: sites, Shards: c.Shards, Dir: dir,
		Mutate: func(_ int, cfg *raftgroup.Config) {
			cfg.LogDB, cfg.LogDBMemory = logdb, raftgroup.LogDBSmall
			cfg.MaxInFlight, cfg.LogShards, cfg.LeaderBatching = c.RaftInFlight, c.RaftLogShards, c.RaftLeaderBatching
			cfg.SnapshotEntries, cfg.CompactionOverhead = c.RaftSnapshotEntries, c.RaftCompactionOverhead
			cfg.ReconcileInterval = 0 // the default
			cfg.DB = &ds.Options{NShards: c.Shards, Layout: c.Layout, Retention: ds.RetainForever,
				Expert: ds.ExpertOptions{MemTableBytes: 8 << 20}}
		}})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	cl = started
	if dbs, err = cl.DBs(); err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := cl.WaitLeaders(wctx); err != nil {
		return nil, nil, err
	}
	// A first Store per shard: through site 0, forwarded to the shard's leader.
	for sh := range c.Shards {
		for p := 0; ; p++ {
			if int(ds.ShardOf(clientID(p), c.Shards)) != sh {
				continue
			}
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := dbs[0].Store(ctx, ds.Message{ClientID: clientID(p), Topic: "warmup", Payload: []byte("x")})
			cancel()
			if err != nil {
				return nil, nil, fmt.Errorf("warm-up of shard %d: %w", sh, err)
			}
			break
		}
	}
	return cl, dbs, nil
}
