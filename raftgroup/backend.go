package raftgroup

import (
	"context"
	"fmt"
	"sync"

	"github.com/strata-mq/strata/ds"
	"github.com/strata-mq/strata/generation"
	"github.com/strata-mq/strata/internal/message"
	"github.com/strata-mq/strata/internal/pebbleopts"
	"github.com/strata-mq/strata/layout"
	"github.com/strata-mq/strata/raftgroup/internal/wire"
	"github.com/strata-mq/strata/shard"
	"github.com/strata-mq/strata/stream"
)

// DB returns the site's DB: the ds API over the replicated shards. Every call returns the same
// DB; closing it closes the site.
func (s *Site) DB() (*ds.DB, error) {
	s.dbOnce.Do(func() {
		shards := make([]ds.ShardBackend, len(s.proposers))
		for i, p := range s.proposers {
			shards[i] = &siteShard{site: s, p: p}
		}
		s.db, s.dbErr = ds.OpenBackend(&siteBackend{site: s, shards: shards}, &ds.Options{
			NShards: s.schema.NShards, MaxMessageBytes: s.cfg.DB.MaxMessageBytes, Logger: s.cfg.DB.Logger,
		})
	})
	return s.db, s.dbErr
}

// dbState is embedded in Site.
type dbState struct {
	dbOnce sync.Once
	db     *ds.DB
	dbErr  error
}

type siteBackend struct {
	site   *Site
	shards []ds.ShardBackend
}

func (b *siteBackend) Shards() []ds.ShardBackend { return b.shards }
func (b *siteBackend) Watch(f func())            { b.site.onChange.Store(&f) }
func (b *siteBackend) Close() error              { return b.site.shutdown() }

func (b *siteBackend) WatchDurable(f func(shard.Durable)) { b.site.onDurable.Store(&f) }

var (
	_ ds.StorageStatser = (*siteBackend)(nil)
	_ ds.StorageKinder  = (*siteBackend)(nil)
)

// StorageKind names the storage in ds-info info.
func (b *siteBackend) StorageKind() string { return "replicated site" }

// StorageStats sums the Pebble stores of the shard replicas this site runs (not the Raft
// log, which dragonboat keeps in its own store under the site's directory).
func (b *siteBackend) StorageStats() ds.StorageStats {
	var st ds.StorageStats
	for _, sh := range b.shards {
		sm := b.site.shardSM(sh.ID())
		if sm == nil {
			continue
		}
		sm.withReplica(func(rs *replicaStore) error {
			disk, written, report := pebbleopts.Usage(rs.db)
			st.DiskBytes += disk
			st.BytesWritten += written
			st.Pebble = append(st.Pebble, report)
			return nil
		})
	}
	return st
}

// siteShard is one shard of the site's DB: writes go through the site's proposer (which
// forwards its batches to the site leading the shard), reads to the local replica; where the
// site holds no replica of the shard, reads are forwarded to a site that does (forward.go).
// Layout and DroppedMessages answer only from a local replica.
type siteShard struct {
	site *Site
	p    *proposer
}

type waiter struct{ r *request }

func (w waiter) Wait() error { return w.r.wait() }

func (s *siteShard) ID() stream.ShardID { return s.p.id }

// local reports whether this site holds a replica of the shard; where it does not, the
// shard's calls are forwarded to a site that does (forward.go).
func (s *siteShard) local() bool { return s.site.servingSM(s.p.id) != nil }

func (s *siteShard) Submit(ctx context.Context, msgs []*message.Message, bytes int) (ds.Waiter, error) {
	if s.site.quotaExceeded() {
		return nil, s.site.quotaError(int(s.p.id))
	}
	r := &request{msgs: msgs, bytes: bytes}
	if err := s.p.submit(ctx, r); err != nil {
		return nil, err
	}
	return waiter{r}, nil
}

func (s *siteShard) SubmitTxns(ctx context.Context, txns []*shard.Txn, bytes int) (ds.Waiter, error) {
	for _, t := range txns {
		if len(t.Messages) > 0 && s.site.quotaExceeded() {
			return nil, s.site.quotaError(int(s.p.id))
		}
	}
	r := &request{txns: txns, bytes: bytes}
	if err := s.p.submit(ctx, r); err != nil {
		return nil, err
	}
	return waiter{r}, nil
}

func (s *siteShard) Record(ctx context.Context, key []byte) (value []byte, version uint64, err error) {
	if !s.local() {
		return s.site.fwd.record(ctx, s.p.id, key)
	}
	err = s.replica(func(r *shard.Replica) error {
		var err error
		value, version, err = r.Record(ctx, key)
		return err
	})
	return value, version, err
}

func (s *siteShard) ScanRecords(ctx context.Context, prefix []byte, f func(key, value []byte, version uint64) bool) error {
	if !s.local() {
		return s.site.fwd.scanRecords(ctx, s.p.id, prefix, f)
	}
	return s.replica(func(r *shard.Replica) error { return r.ScanRecords(ctx, prefix, f) })
}

func (s *siteShard) admin(ctx context.Context, cmd *shard.Command) error {
	r := &request{cmd: cmd}
	if err := s.p.submit(ctx, r); err != nil {
		return err
	}
	return r.wait()
}

func (s *siteShard) AddGeneration(ctx context.Context) error {
	if !s.local() {
		return s.site.fwd.admin(ctx, s.p.id, &wire.Admin{Add: true})
	}
	return s.admin(ctx, &shard.Command{AddGeneration: true})
}

func (s *siteShard) DropGeneration(ctx context.Context, gen stream.GenerationID) error {
	if !s.local() {
		return s.site.fwd.admin(ctx, s.p.id, &wire.Admin{Drop: gen})
	}
	return s.admin(ctx, &shard.Command{Drop: []stream.GenerationID{gen}})
}

// replica runs f on the local replica, or fails with ErrUnavailable where this site runs none
// (yet).
func (s *siteShard) replica(f func(*shard.Replica) error) error {
	sm := s.site.servingSM(s.p.id)
	if sm == nil {
		return fmt.Errorf("%w: no replica of shard %d on site %s", shard.ErrUnavailable, s.p.id, s.site.cfg.RaftAddress)
	}
	return sm.withReplica(func(st *replicaStore) error { return f(st.r) })
}

func (s *siteShard) Streams(filter []string, since uint64) ([]stream.Stream, error) {
	if !s.local() {
		return s.site.fwd.streams(s.p.id, filter, since)
	}
	var out []stream.Stream
	err := s.replica(func(r *shard.Replica) error { out = r.Streams(filter, since); return nil })
	return out, err
}

func (s *siteShard) Read(it stream.Iterator, filter []string, max int, out []message.Message) ([]message.Message, uint64, error) {
	if !s.local() {
		return s.site.fwd.read(it, filter, max, out)
	}
	next := it.Next
	err := s.replica(func(r *shard.Replica) error {
		var err error
		out, next, err = r.Read(it, filter, max, out)
		return err
	})
	return out, next, err
}

func (s *siteShard) ReadLimit() (uint64, error) {
	if !s.local() {
		return s.site.fwd.readLimit(s.p.id)
	}
	var limit uint64
	err := s.replica(func(r *shard.Replica) error { limit = r.ReadLimit(); return nil })
	return limit, err
}

func (s *siteShard) DroppedMessages(gen stream.GenerationID) (uint64, bool) {
	var n uint64
	var ok bool
	s.replica(func(r *shard.Replica) error { n, ok = r.DroppedMessages(gen); return nil })
	return n, ok
}

func (s *siteShard) Generations() ([]generation.Info, error) {
	if !s.local() {
		return s.site.fwd.generations(s.p.id)
	}
	var out []generation.Info
	err := s.replica(func(r *shard.Replica) error { out = r.Generations(); return nil })
	return out, err
}

func (s *siteShard) GenerationUsage(gen stream.GenerationID) (shard.GenerationUsage, error) {
	if !s.local() {
		return s.site.fwd.generationUsage(s.p.id, gen)
	}
	var u shard.GenerationUsage
	err := s.replica(func(r *shard.Replica) error {
		var err error
		u, err = r.GenerationUsage(gen)
		return err
	})
	return u, err
}

func (s *siteShard) Layout(gen stream.GenerationID) (layout.Generation, bool) {
	var l layout.Generation
	var ok bool
	s.replica(func(r *shard.Replica) error { l, ok = r.Layout(gen); return nil })
	return l, ok
}

func (s *siteShard) ShardMetrics() *shard.Metrics { return &s.p.metrics }
