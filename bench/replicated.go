package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/internal/loopback"
	"github.com/strata-mq/strata/raftgroup"
)

// RunReplicated measures durable ingest into a replicated cluster: sites sites in this process
// on 127.0.0.1 (each its own NodeHost, Raft log and replicas), bootstrapped with replication
// factor 3 and c.Shards shards; publisher p stores through site p mod sites, so two thirds of
// the proposals are forwarded to a leader elsewhere. A Store returns once a quorum of the
// shard's voters holds the message in its Raft log (fsynced) and the local proposer learned
// the outcome.
func RunReplicated(c Config, sites int, logdb raftgroup.LogDB) (Result, error) {
	dbs, stop, err := startSites(c, sites, logdb, "replicated-"+string(logdb))
	if err != nil {
		return Result{}, err
	}
	defer stop()
	ctx := context.Background()
	pl := payloads(64, c.Payload)
	name := fmt.Sprintf("replicated ingest (%d sites, RF 3, %d shards, %s log)", sites, c.Shards, logdb)
	cpu0 := processCPU()
	mem := startMemory()
	elapsed, lats, series, err := runPublishers(name, c.N, c.Publishers, c.Progress, func(p, i int) error {
		_, err := dbs[p%sites].Store(ctx, ds.Message{ClientID: clientID(p), Topic: topicOf(p, i), QoS: 1, Payload: pl[(p+i)%len(pl)]})
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", name, err)
	}
	heap, rss := mem.finish()
	cpu := processCPU() - cpu0
	var msgs, batches uint64
	for _, db := range dbs {
		m, err := db.Metrics()
		if err != nil {
			return Result{}, err
		}
		t := m.Totals()
		msgs += t.Messages
		batches += t.Batches
	}
	r := Result{Name: name, Msgs: c.N, Bytes: int64(c.N * c.Payload), Elapsed: elapsed,
		MsgsPerCommit: float64(msgs) / float64(max(batches, 1)), PeakHeapBytes: heap, PeakRSSBytes: rss}
	r.setRun(lats, series)
	// The process runs every site: its CPU time per message, divided by the sites.
	cpuPerMsg := cpu.Seconds() * 1e6 / float64(c.N) / float64(sites)
	r.Figures = map[string]float64{"cpu_us_per_msg_per_site": cpuPerMsg}
	r.Note = fmt.Sprintf("%.0f msgs/proposal, %.0f CPU-µs/msg per site, heap %d MiB, RSS %d MiB (all %d sites in one process)",
		r.MsgsPerCommit, cpuPerMsg, heap>>20, rss>>20, sites)
	return r, nil
}

// startSites starts sites sites in this process on 127.0.0.1 (each its own NodeHost, Raft log
// and replicas, under c.Dir/name or a temporary directory), bootstrapped with replication factor
// 3 and c.Shards shards, and waits until every shard has a leader (a first Store per shard, on
// topic "warmup", through site 0). stop closes the sites and removes the temporary directory.
func startSites(c Config, sites int, logdb raftgroup.LogDB, name string) (dbs []*ds.DB, stop func(), err error) {
	root, removeRoot := c.Dir, func() {}
	if root == "" {
		tmp, err := os.MkdirTemp("", "ds-bench-raft-")
		if err != nil {
			return nil, nil, err
		}
		root, removeRoot = tmp, func() { os.RemoveAll(tmp) }
	} else {
		root = filepath.Join(root, name)
	}
	addrs, err := loopback.FreeAddrs(sites)
	if err != nil {
		removeRoot()
		return nil, nil, err
	}
	ss := make([]*raftgroup.Site, sites)
	errs := make([]error, sites)
	var wg sync.WaitGroup
	for i := range ss {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ss[i], errs[i] = raftgroup.Open(ctx, raftgroup.Config{
				Dir: filepath.Join(root, fmt.Sprintf("site-%d", i)), RaftAddress: addrs[i], InitialSites: addrs,
				LogDB: logdb, LogDBMemory: raftgroup.LogDBSmall, MaxInFlight: c.RaftInFlight, LogShards: c.RaftLogShards,
				DB: &ds.Options{NShards: c.Shards, Layout: c.Layout, Retention: ds.RetainForever,
					Expert: ds.ExpertOptions{MemTableBytes: 8 << 20}},
			})
		})
	}
	wg.Wait()
	stop = func() {
		for _, s := range ss {
			if s != nil {
				s.Close()
			}
		}
		removeRoot()
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	dbs = make([]*ds.DB, sites)
	for i, s := range ss {
		if dbs[i], err = s.DB(); err != nil {
			return nil, nil, err
		}
	}
	// Wait for every shard to have a leader: a first Store per shard.
	for sh := range c.Shards {
		for p := 0; ; p++ {
			if int(ds.ShardOf(clientID(p), c.Shards)) != sh {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := dbs[0].Store(ctx, ds.Message{ClientID: clientID(p), Topic: "warmup", Payload: []byte("x")})
			cancel()
			if err != nil {
				return nil, nil, fmt.Errorf("warm-up of shard %d: %w", sh, err)
			}
			break
		}
	}
	return dbs, stop, nil
}
